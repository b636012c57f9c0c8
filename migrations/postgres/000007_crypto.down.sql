DROP TABLE bridge_crypto_pending;
DROP TABLE bridge_crypto_items;
DROP TABLE bridge_crypto_devices;
