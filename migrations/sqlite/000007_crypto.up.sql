-- End-to-end encryption of agents (bridge-owned tables; the ERD's tables are untouched).
-- One device per agent, created once through MSC4190 and kept for good: a new device id would
-- make every client re-verify the agent and lose the Olm sessions it shares with them.
CREATE TABLE bridge_crypto_devices (
    user_id text PRIMARY KEY,
    device_id text NOT NULL,
    created_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The crypto state of each agent's OlmMachine (account, cross-signing identity, Olm and Megolm
-- sessions, devices, identities, tracked users, message hashes, room settings), one row per
-- item. Values are encrypted with the bridge's pickle key (XChaCha20-Poly1305 through
-- matrix-sdk-store-encryption): nothing secret is ever written in clear.
CREATE TABLE bridge_crypto_items (
    user_id text NOT NULL,
    kind text NOT NULL,
    key text NOT NULL,
    value blob NOT NULL,
    updated_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (user_id, kind, key)
);

-- Encrypted events whose room key has not arrived yet (it comes as a to-device event, often in
-- a later transaction). Kept durably so the event is mirrored, and answered, once it decrypts;
-- bounded in count and age, after which it is mirrored as [encrypted].
CREATE TABLE bridge_crypto_pending (
    event_id text PRIMARY KEY,
    room_id text NOT NULL,
    session_id text NOT NULL,
    event text NOT NULL,
    received_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX bridge_crypto_pending_session_idx ON bridge_crypto_pending (room_id, session_id);
CREATE INDEX bridge_crypto_pending_received_idx ON bridge_crypto_pending (received_at);
