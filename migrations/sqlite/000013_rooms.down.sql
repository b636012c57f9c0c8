DROP TABLE IF EXISTS bridge_channel_creations;
DROP TABLE IF EXISTS bridge_room_aliases;
DROP TABLE IF EXISTS bridge_channel_archives;
