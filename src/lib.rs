//! daarion-bridge: a Matrix application service that mirrors rooms into the DAARION schema and
//! lets AI agents live in Matrix as virtual users.
//!
//! Crate map, by layer (each layer uses only the ones below it):
//! - Entry: [`cli`] (the command line), [`app`] (building and running the bridge),
//!   [`server`] (the HTTP listener and its limits), [`supervise`] (restarting and draining
//!   background tasks).
//! - HTTP surfaces: [`appservice`] (the Application Service API the homeserver calls, health,
//!   metrics) and [`api`] (the agent API runtimes use, and the admin API operators use).
//! - Agents answering: [`runs`] (the run scheduler, execution, runtimes).
//! - Events out: [`events`] (topics, payloads, the NATS JetStream publisher of the transactional
//!   outbox) and [`export`] (a channel's conversation as JSON lines or CSV).
//! - Bridge core: [`bridge`] (the agent registry and the reconciler that follows the agent rows
//!   others write, the mirror and its pure planner, trigger rules, follow-up jobs, bot commands,
//!   operator operations shared by the admin API and the commands, upkeep).
//! - Encryption: [`crypto`] (each agent's device and `OlmMachine`, its store in the database,
//!   decrypting transactions, encrypting sends).
//! - Acting as agents: [`puppet`] (`PuppetIntent`, profiles, content, the durable outbox).
//! - Matrix edge: [`matrix`] (namespace, client-server client, Matrix errors).
//! - Storage: [`db`] (PostgreSQL and SQLite: migrations, batched writes with their events and
//!   audit records, reads per table group, the admin API's catalog and listings).
//! - Foundations: [`config`], [`registration`], [`keys`], [`ratelimit`], [`metrics`],
//!   [`telemetry`], [`ids`].

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
pub mod ids;
pub mod keys;
pub mod matrix;
pub mod metrics;
pub mod puppet;
pub mod ratelimit;
pub mod registration;
pub mod runs;
pub mod server;
pub mod supervise;
pub mod telemetry;

pub use app::{Bridge, run};
