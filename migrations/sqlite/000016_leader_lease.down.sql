DROP TABLE bridge_leader_lease;
