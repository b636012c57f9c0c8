//! `[encryption]`: end-to-end encryption of the agents (their own devices, keys and crypto
//! state; see `docs/encryption.md`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// `[encryption]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Whether agents get devices and read and write in encrypted rooms.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether decrypted text is stored as `messages.content_preview` (otherwise encrypted
    /// events are mirrored with the preview `[encrypted]`; triggers still see the text).
    #[serde(default = "yes")]
    pub store_previews: bool,
    /// The passphrase the crypto store's key is sealed with (env
    /// `DAARION_BRIDGE__ENCRYPTION__PICKLE_KEY`). At least 32 characters. Losing or changing it
    /// makes the stored crypto state unreadable. Without one, encryption stays off (the bridge
    /// says so at start-up).
    #[serde(default)]
    pub pickle_key: Option<String>,
    /// How long an event waits for its room key before it is mirrored as `[encrypted]`.
    #[serde(default = "default_pending_max_age", with = "duration")]
    pub pending_max_age: Duration,
    /// How many events may wait for their room keys at most; past it the oldest are mirrored
    /// as `[encrypted]` (a flood of undecryptable events cannot grow the table without bound).
    #[serde(default = "default_pending_max")]
    pub pending_max: u32,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store_previews: true,
            pickle_key: None,
            pending_max_age: default_pending_max_age(),
            pending_max: default_pending_max(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_pending_max() -> u32 {
    10_000
}

fn default_pending_max_age() -> Duration {
    Duration::from_secs(600)
}

impl EncryptionConfig {
    /// The pickle key when encryption is on and has one.
    pub fn active_key(&self) -> Option<&str> {
        self.pickle_key.as_deref().filter(|_| self.enabled)
    }

    /// Checks the section; the error names the offending key.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        match &self.pickle_key {
            Some(key) if key.chars().count() < 32 => {
                Err(("encryption.pickle_key", "must be at least 32 characters"))
            }
            _ if self.pending_max_age.is_zero() => {
                Err(("encryption.pending_max_age", "must be more than 0"))
            }
            _ if self.pending_max == 0 => Err(("encryption.pending_max", "must be at least 1")),
            _ => Ok(()),
        }
    }
}
