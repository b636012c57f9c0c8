DROP TABLE message_parts;
