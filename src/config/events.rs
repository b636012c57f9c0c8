//! `[events]` (the outbox and its delivery to NATS JetStream) and `[audit]` (the audit log's
//! retention).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// `[events]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Whether the bridge writes `outbox_events` rows at all (with every change it makes).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The NATS server to publish to (`nats://127.0.0.1:4222`); none: the table fills and is
    /// read by SQL only.
    #[serde(default)]
    pub nats_url: Option<String>,
    /// The JetStream stream, created or updated at start-up with the subjects of one to three
    /// tokens after `<subject_prefix>` (the `nats` runtime's streams, `<stream>_AGENT_RUNS` and
    /// `<stream>_AGENT_REPLIES`, take the four-token ones).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// The first token of every subject: `daarion.chat.message.created`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// JetStream's duplicate window: a re-publish of an event within it is dropped.
    #[serde(default = "default_duplicate_window", with = "duration")]
    pub duplicate_window: Duration,
    /// How long the stream keeps messages (none: JetStream's default, unlimited).
    #[serde(default, with = "duration::opt")]
    pub stream_max_age: Option<Duration>,
    /// Published rows (`processed`: JetStream acknowledged them, or an SQL consumer marked
    /// them read) older than this are pruned.
    #[serde(default = "default_retention", with = "duration")]
    pub retention: Duration,
    /// Rows never published nor marked read (dead letters included) older than this are
    /// pruned too; `"never"` keeps them until they are. Unset: `retention` without a broker
    /// (nobody may ever mark them), never with one (they wait for the bus). See
    /// [`EventsConfig::unpublished_cutoff`].
    #[serde(default)]
    pub unpublished_retention: Option<Keep>,
    /// An event JetStream refuses for good (too large for the server or the stream) this many
    /// times in a row becomes a dead letter: its partition moves past it.
    #[serde(default = "default_dead_letter_after")]
    pub dead_letter_after: u32,
    /// Events read per round of publishing.
    #[serde(default = "default_batch")]
    pub publish_batch: u32,
    /// How often the publisher looks for events when nothing pokes it (commits do).
    #[serde(default = "default_poll", with = "duration")]
    pub poll_interval: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nats_url: None,
            stream: default_stream(),
            subject_prefix: default_prefix(),
            duplicate_window: default_duplicate_window(),
            stream_max_age: None,
            retention: default_retention(),
            unpublished_retention: None,
            dead_letter_after: default_dead_letter_after(),
            publish_batch: default_batch(),
            poll_interval: default_poll(),
        }
    }
}

/// How long something is kept: a duration, or `"never"` pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Pruned once older than this.
    For(Duration),
    /// Never pruned.
    Forever,
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Keep::For(Duration::from_secs(n))),
            Raw::Text(t) if t.trim() == "never" => Ok(Keep::Forever),
            Raw::Text(t) => duration::parse(&t).map(Keep::For).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{t}` is neither \"never\" nor a duration like 30s, 15m, 1h, 7d"
                ))
            }),
        }
    }
}

impl Serialize for Keep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Keep::For(d) => duration::serialize(d, s),
            Keep::Forever => s.serialize_str("never"),
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit rows older than this are pruned; none (the default): kept forever.
    #[serde(default, with = "duration::opt")]
    pub retention: Option<Duration>,
}

fn yes() -> bool {
    true
}
fn default_stream() -> String {
    "DAARION".into()
}
fn default_prefix() -> String {
    "daarion".into()
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_dead_letter_after() -> u32 {
    5
}
fn default_batch() -> u32 {
    1000
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}

/// A NATS subject token (or dotted tokens): no whitespace, no wildcards, no empty tokens.
fn subject_ok(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| !c.is_whitespace() && !matches!(c, '*' | '>' | '\0'))
        })
}

/// A stream name: no whitespace, `.`, `*`, `>`, path separators.
fn stream_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '.' | '*' | '>' | '/' | '\\' | '\0'))
}

impl EventsConfig {
    /// How long unpublished rows are kept (none: until published or marked read), with
    /// `unpublished_retention`'s default filled in: `retention` without a broker, where no
    /// publisher will ever mark them, and forever with one, where they wait for the bus.
    pub fn unpublished_cutoff(&self) -> Option<Duration> {
        match self.unpublished_retention {
            Some(Keep::For(d)) => Some(d),
            Some(Keep::Forever) => None,
            None if self.nats_url.is_none() => Some(self.retention),
            None => None,
        }
    }

    /// Checks the section; the error names the offending key.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if let Some(url) = &self.nats_url
            && !(url.starts_with("nats://")
                || url.starts_with("tls://")
                || url.starts_with("localhost")
                || url.chars().next().is_some_and(|c| c.is_ascii_digit()))
        {
            return Err(("events.nats_url", "must be nats://host:port"));
        }
        if !stream_ok(&self.stream) {
            return Err((
                "events.stream",
                "must be a JetStream stream name (no spaces, '.', '*', '>')",
            ));
        }
        if !subject_ok(&self.subject_prefix) {
            return Err((
                "events.subject_prefix",
                "must be NATS subject tokens (no spaces, wildcards or empty tokens)",
            ));
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return Err(("events.duplicate_window", "must be at least 1s"));
        }
        if self.retention < Duration::from_secs(60) {
            return Err(("events.retention", "must be at least 1m"));
        }
        if matches!(self.unpublished_retention, Some(Keep::For(d)) if d < Duration::from_secs(60)) {
            return Err((
                "events.unpublished_retention",
                "must be at least 1m, or \"never\"",
            ));
        }
        if self.dead_letter_after == 0 {
            return Err(("events.dead_letter_after", "must be at least 1"));
        }
        if self.publish_batch == 0 {
            return Err(("events.publish_batch", "must be at least 1"));
        }
        if self.poll_interval.is_zero() {
            return Err(("events.poll_interval", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_offending_key() {
        let ok = EventsConfig::default();
        assert!(ok.check().is_ok());
        let bad = |f: fn(&mut EventsConfig)| {
            let mut c = EventsConfig::default();
            f(&mut c);
            c.check().unwrap_err().0
        };
        assert_eq!(
            bad(|c| c.nats_url = Some("http://x".into())),
            "events.nats_url"
        );
        assert_eq!(bad(|c| c.stream = "A.B".into()), "events.stream");
        assert_eq!(
            bad(|c| c.subject_prefix = "a..b".into()),
            "events.subject_prefix"
        );
        assert_eq!(
            bad(|c| c.subject_prefix = "a.>".into()),
            "events.subject_prefix"
        );
        assert_eq!(bad(|c| c.publish_batch = 0), "events.publish_batch");
        assert_eq!(
            bad(|c| c.retention = Duration::from_secs(5)),
            "events.retention"
        );
        assert_eq!(
            bad(|c| c.unpublished_retention = Some(Keep::For(Duration::from_secs(5)))),
            "events.unpublished_retention"
        );
        assert_eq!(bad(|c| c.dead_letter_after = 0), "events.dead_letter_after");
    }

    #[test]
    fn unpublished_retention_defaults_by_broker() {
        let mut c = EventsConfig::default();
        // No broker: nobody marks the rows, so they go with `retention` unless kept explicitly.
        assert_eq!(c.unpublished_cutoff(), Some(c.retention));
        c.nats_url = Some("nats://127.0.0.1:4222".into());
        assert_eq!(
            c.unpublished_cutoff(),
            None,
            "with a broker they wait for it"
        );
        c.unpublished_retention = Some(Keep::For(Duration::from_secs(3600)));
        assert_eq!(c.unpublished_cutoff(), Some(Duration::from_secs(3600)));
        c.nats_url = None;
        c.unpublished_retention = Some(Keep::Forever);
        assert_eq!(c.unpublished_cutoff(), None);
    }
}
