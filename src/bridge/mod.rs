//! The bridge core, between the Matrix edge and the store: the agent registry, the mirror
//! (transactions → DAARION rows) with its pure planner, the trigger rules, the follow-up worker
//! (joins, refusals, bot commands), operator operations (`control`; channels created, archived and moved in `rooms`) and the bot commands, the reconciler that follows agent rows others write, and
//! background upkeep, encrypted events that wait for their key (`pending`), and wake-ups
//! forwarded from standbys to the leader (`wakes`).

pub mod agents;
pub mod commands;
pub mod control;
pub mod followup;
pub mod mirror;
pub mod pending;
pub mod ping;
pub mod planner;
pub mod reconcile;
pub mod rooms;
pub mod stops;
pub mod triggers;
pub mod upkeep;
pub mod wakes;
