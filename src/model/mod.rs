//! The bottom floor: what every layer shares and nothing below it. Ids of the DAARION rows,
//! timestamps, the closed sets stored as text (statuses, roles, kinds), the bridge's Matrix
//! namespace, an agent and its behaviour, its runtime settings, and the events the bridge
//! publishes (topics and payloads). Nothing here does I/O; nothing here imports another module
//! of the crate.

pub mod agent;
pub mod duration;
pub mod enums;
pub mod ids;
pub mod namespace;
pub mod runtime;
pub mod time;
pub mod tools;
pub mod topics;

pub use self::{
    agent::{Agent, Behaviour, RuntimeSpec},
    enums::*,
    namespace::Namespace,
    time::Ts,
};

/// Top-level marker the crypto layer puts on a decrypted event whose text must not be stored as
/// a preview (`encryption.store_previews = false`); the mirror reads it.
pub const HIDE_PREVIEW: &str = "io.daarion.hide_preview";
