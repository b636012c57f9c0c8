//! End-to-end tests against a real Synapse on loopback (started by `scripts/synapse.sh` with the
//! registration generated from `tests/e2e/config.toml`): a person creates a room, invites the
//! bridge bot, chats; the DAARION rows are asserted, on SQLite and on PostgreSQL.

mod agents;
mod conversation;
mod e2ee;
mod encryption;
mod harness;
mod media;
mod mirror;
#[path = "../common/model.rs"]
mod model;
mod platform;
mod replicas;
mod replicas_harness;
mod rooms;
mod tools;
