DROP FUNCTION bridge_leader_check(bigint, text);
DROP TABLE bridge_leader_lease;
