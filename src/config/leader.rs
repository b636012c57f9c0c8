//! `[leader]`: replicas. On PostgreSQL any number of bridge processes share one database and the
//! one holding the leader lease leads; these are the lease's timings and this replica's name.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// `[leader]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    /// How long the lease holds without renewal: a standby takes over this long after the
    /// leader stopped renewing it (it died, paused, or lost the database), and a leader that
    /// could not renew for this long stops leading by itself.
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
    /// How often the leader renews the lease and a standby tries to take it (less than a
    /// third of `ttl`, so a renewal or two can fail without a fail-over).
    #[serde(default = "default_renew", with = "duration")]
    pub renew_interval: Duration,
    /// This replica's name in status, metrics and logs (`<hostname>-<pid>` when unset).
    #[serde(default)]
    pub replica: Option<String>,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            renew_interval: default_renew(),
            replica: None,
        }
    }
}

impl LeaderConfig {
    /// The replica's name: `replica`, else `<hostname>-<pid>`.
    pub fn replica_name(&self) -> String {
        if let Some(name) = self.replica.as_deref().filter(|n| !n.trim().is_empty()) {
            return name.to_owned();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "bridge".into());
        format!("{host}-{}", std::process::id())
    }

    /// `Err(problem)` when the timings cannot work.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.ttl < Duration::from_secs(1) {
            return Err(("leader.ttl", "must be at least 1s"));
        }
        if self.renew_interval < Duration::from_millis(100) {
            return Err(("leader.renew_interval", "must be at least 100ms"));
        }
        if self.renew_interval * 3 > self.ttl {
            return Err((
                "leader.renew_interval",
                "must be at most a third of leader.ttl (renewals must be able to fail before the lease does)",
            ));
        }
        Ok(())
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_renew() -> Duration {
    Duration::from_secs(2)
}
