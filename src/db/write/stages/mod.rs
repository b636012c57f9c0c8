//! The stages of the write path, one file each. A stage holds what it takes from the batch
//! (written once), its PostgreSQL CTEs and its SQLite statements side by side, and exports a
//! `STAGE` that the pipeline (`super::PIPELINE`) lists in order. The transaction record
//! (`txn`) is not in that list: it gates the others.

pub(super) mod audit;
pub(super) mod channels;
pub(super) mod events;
pub(super) mod members;
pub(super) mod messages;
pub(super) mod parts;
pub(super) mod rooms;
pub(super) mod sessions;
pub(super) mod txn;
pub(super) mod users;
pub(super) mod work;
