//! `[media]`: what agents are given of the files people send: size caps per kind, the download
//! timeout, how much text a text file gives, and the media budget of one run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

const MIB: u64 = 1 << 20;

/// `[media]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest image downloaded for a run, in bytes (10 MiB).
    #[serde(default = "default_image")]
    pub image_max_bytes: u64,
    /// Largest audio file or voice message (20 MiB).
    #[serde(default = "default_audio")]
    pub audio_max_bytes: u64,
    /// Largest other file (20 MiB).
    #[serde(default = "default_file")]
    pub file_max_bytes: u64,
    /// Largest video (50 MiB).
    #[serde(default = "default_video")]
    pub video_max_bytes: u64,
    /// One download, connect to last byte.
    #[serde(default = "default_timeout", with = "duration")]
    pub download_timeout: Duration,
    /// A text file up to this size goes to the runtime as its text (64 KiB); a larger one as a
    /// named placeholder.
    #[serde(default = "default_text")]
    pub text_max_bytes: u64,
    /// Bytes of media one run downloads at most, newest first (the trigger's first): past it,
    /// older attachments are named, not fetched (25 MiB).
    #[serde(default = "default_budget")]
    pub run_budget_bytes: u64,
    /// How long the media links a webhook runtime gets stay valid.
    #[serde(default = "default_link_ttl", with = "duration")]
    pub link_ttl: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            image_max_bytes: default_image(),
            audio_max_bytes: default_audio(),
            file_max_bytes: default_file(),
            video_max_bytes: default_video(),
            download_timeout: default_timeout(),
            text_max_bytes: default_text(),
            run_budget_bytes: default_budget(),
            link_ttl: default_link_ttl(),
        }
    }
}

impl MediaConfig {
    /// The size cap of an attachment of `kind` (`image`, `audio`, `video`, anything else a
    /// file).
    pub fn cap(&self, kind: &str) -> u64 {
        match kind {
            "image" => self.image_max_bytes,
            "audio" => self.audio_max_bytes,
            "video" => self.video_max_bytes,
            _ => self.file_max_bytes,
        }
    }
}

fn default_link_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_image() -> u64 {
    10 * MIB
}

fn default_audio() -> u64 {
    20 * MIB
}

fn default_file() -> u64 {
    20 * MIB
}

fn default_video() -> u64 {
    50 * MIB
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_text() -> u64 {
    64 << 10
}

fn default_budget() -> u64 {
    25 * MIB
}
