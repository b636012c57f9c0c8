//! daarion-bridge: a Matrix application service that mirrors rooms into the DAARION schema and
//! lets AI agents live in Matrix as virtual users.
//!
//! Crate map, by floor, lowest first. A module uses only the floors below its own (and modules
//! of its own floor that do not use it back); the list is checked by a test (`layers.rs`), so
//! this picture is the code's.
//! 1. [`model`]: what every floor shares and nothing below it: ids, timestamps, statuses and
//!    other text enums, the Matrix namespace, an agent and its behaviour and runtime settings,
//!    the published events' topics and payloads.
//! 2. Foundations: [`config`] (the TOML and its validation), [`registration`], [`telemetry`],
//!    [`metrics`], [`ratelimit`], [`supervise`] (restarting and draining background tasks).
//! 3. [`matrix`]: the client-server API client (the Matrix edge; knows nothing of the store).
//! 4. [`db`]: PostgreSQL and SQLite: migrations, the batched write of a transaction with its
//!    events and audit records, and one store handle per table group (`store.outbox()`,
//!    `store.runs()`, …) with its reads and writes; rows carry ruma ids, decoded row by row
//!    (`db::decode`).
//! 5. [`keys`] (agent and admin access keys), [`links`] (signed media links for runtimes) and
//!    [`crypto`] (each agent's device and
//!    `OlmMachine`, its store in the database, decrypting transactions, encrypting sends).
//! 6. [`puppet`]: acting as agents: `PuppetIntent`, profiles, content, the durable outbox.
//! 7. [`events`]: the NATS JetStream publisher of the transactional outbox.
//! 8. [`bridge`]: the agent registry and its reconciler, the mirror and its pure planner,
//!    trigger rules, follow-up jobs, bot commands, operator operations, upkeep.
//! 9. [`runs`]: agents answering: the run scheduler, execution, runtimes, tools.
//! 10. [`export`]: a channel's conversation as JSON lines or CSV.
//! 11. [`server`]: the HTTP listener (deadlines, the homeserver's lane, Matrix errors for
//!     malformed HTTP) and the HTTP error type every response uses.
//! 12. HTTP surfaces: [`appservice`] (the Application Service API the homeserver calls, health,
//!     metrics) and [`api`] (the agent API runtimes use, the admin API operators use).
//! 13. [`leadership`] (standing by, taking and holding the leader lease among replicas), then
//!     [`app`] (building and running the bridge: the leader's work while it leads), then
//!     [`cli`] (the command line).

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod appservice;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod events;
pub mod export;
pub mod keys;
#[cfg(test)]
mod layers;
pub mod leadership;
pub mod links;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod puppet;
pub mod ratelimit;
pub mod registration;
pub mod runs;
pub mod server;
pub mod supervise;
pub mod telemetry;

pub use app::{Bridge, run};
