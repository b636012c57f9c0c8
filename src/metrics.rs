//! Prometheus metrics (`GET /metrics`, OpenMetrics text): transactions, events by type and
//! outcome, media parts, latency, database errors, follow-ups, sessions, triggers, runs, the outbox, HTTP
//! connections, supervised task failures, and the events publisher.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::model::{RunStatus, SessionStatus};

/// An `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome.
    pub outcome: &'static str,
}

/// `type` and `outcome` labels of the events metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The event type (a bounded set).
    pub r#type: &'static str,
    /// What happened to it.
    pub outcome: &'static str,
}

/// A `status` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The status.
    pub status: &'static str,
}

/// A `task` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    /// The background task.
    pub task: &'static str,
}

/// Every metric of the bridge.
pub struct Metrics {
    registry: Registry,
    /// Appservice transactions by outcome (committed, replay, error, rejected).
    pub transactions: Family<OutcomeLabel, Counter>,
    /// Room events by type and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Events not mirrored, by outcome.
    pub skipped: Family<OutcomeLabel, Counter>,
    /// Media parts of mirrored messages, by outcome (plain, encrypted, bad_source, bad_info).
    pub media_parts: Family<OutcomeLabel, Counter>,
    /// End-to-end encryption: encrypted events and to-device events by outcome (decrypted,
    /// pending, late, expired, undecryptable, to_device, to_device_ignored).
    pub crypto: Family<OutcomeLabel, Counter>,
    /// Time from receiving a transaction to answering it.
    pub transaction_seconds: Histogram,
    /// Database errors that failed a transaction (503).
    pub db_errors: Counter,
    /// Follow-ups given up after their attempts.
    pub follow_up_failed: Counter,
    /// Agent sessions by status.
    pub sessions: Family<StatusLabel, Gauge>,
    /// Trigger rule outcomes.
    pub triggers: Family<OutcomeLabel, Counter>,
    /// Runs by final status.
    pub runs: Family<StatusLabel, Counter>,
    /// From calling the runtime to the run's end.
    pub runtime_seconds: Histogram,
    /// From calling a streaming runtime to its first token.
    pub first_token_seconds: Histogram,
    /// Outbox delivery attempts by outcome (sent, retry, failed).
    pub outbox: Family<OutcomeLabel, Counter>,
    /// HTTP connections open now.
    pub connections: Gauge,
    /// HTTP connections closed at once because the limit was reached.
    pub connections_refused: Counter,
    /// HTTP connections closed to make room for a new one at the limit (the oldest not known
    /// to be the homeserver's).
    pub connections_evicted: Counter,
    /// Requests whose headers or body did not arrive within their deadline.
    pub requests_timed_out: Counter,
    /// Failures of supervised background work (a panic or an unexpected end), by task.
    pub task_failures: Family<TaskLabel, Counter>,
    /// Failed agent-key authentications, by outcome (denied, limited).
    pub auth_failures: Family<OutcomeLabel, Counter>,
    /// Attachments a run looked at, by outcome (given, or why not: too_large, not_found,
    /// hash_mismatch, …).
    pub media: Family<OutcomeLabel, Counter>,
    /// Tool calls of runs, by outcome (ok, failed, denied, interrupted).
    pub tool_calls: Family<OutcomeLabel, Counter>,
    /// Outbox events waiting to be published (as of the publisher's last look).
    pub events_pending: Gauge,
    /// Outbox events JetStream acknowledged.
    pub events_published: Counter,
    /// Failed publish attempts.
    pub event_publish_errors: Counter,
    /// Outbox events that became dead letters (JetStream refused them for good).
    pub events_dead_total: Counter,
    /// Dead-lettered outbox events in the table (as of the publisher's last look).
    pub events_dead: Gauge,
    /// From an event's commit to JetStream's acknowledgement.
    pub event_publish_lag: Histogram,
    /// 1 while this replica holds the leader lease, else 0.
    pub leader: Gauge,
    /// The epoch of the lease this replica holds (the last it held; 0 if never).
    pub leader_epoch: Gauge,
    /// Times this replica took the lease, and stepped down, by what happened.
    pub leader_changes: Family<OutcomeLabel, Counter>,
    /// Reply chunks of `nats` runtime workers the bridge read and did not use, by why
    /// (superseded, malformed, unknown_type).
    pub nats_replies_ignored: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `daarion_bridge` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("daarion_bridge");
        let m = Self {
            transactions: Family::default(),
            events: Family::default(),
            skipped: Family::default(),
            media_parts: Family::default(),
            crypto: Family::default(),
            // 100 µs … ~3 s.
            transaction_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            db_errors: Counter::default(),
            follow_up_failed: Counter::default(),
            sessions: Family::default(),
            triggers: Family::default(),
            runs: Family::default(),
            runtime_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            first_token_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            outbox: Family::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            connections_evicted: Counter::default(),
            requests_timed_out: Counter::default(),
            task_failures: Family::default(),
            auth_failures: Family::default(),
            media: Family::default(),
            tool_calls: Family::default(),
            events_pending: Gauge::default(),
            events_published: Counter::default(),
            event_publish_errors: Counter::default(),
            events_dead_total: Counter::default(),
            events_dead: Gauge::default(),
            // 1 ms … ~65 s.
            event_publish_lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            leader: Gauge::default(),
            leader_epoch: Gauge::default(),
            leader_changes: Family::default(),
            nats_replies_ignored: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "transactions",
            "Appservice transactions by outcome (committed, replay, error, rejected)",
            m.transactions.clone(),
        );
        r.register(
            "events",
            "Room events by type and outcome",
            m.events.clone(),
        );
        r.register("crypto_events", "Encrypted and to-device events by outcome (decrypted, pending, late, expired, undecryptable, no_agent, to_device, to_device_ignored, probe)", m.crypto.clone());
        r.register("events_skipped", "Events not mirrored (malformed, invalid_id, rejected, ignored_room, ignored_type, skipped, duplicate)", m.skipped.clone());
        r.register("media_parts", "Media parts of mirrored messages by outcome (plain, encrypted; bad_source: no usable url or file, stored without one; bad_info: a malformed info, stored with what parsed)", m.media_parts.clone());
        r.register(
            "transaction_duration_seconds",
            "Time from receiving a transaction to answering it",
            m.transaction_seconds.clone(),
        );
        r.register(
            "db_errors",
            "Database errors that failed a transaction (503)",
            m.db_errors.clone(),
        );
        r.register(
            "follow_ups_failed",
            "Join/refusal follow-ups given up after their attempts",
            m.follow_up_failed.clone(),
        );
        r.register(
            "agent_sessions",
            "Agent sessions by status (refreshed by the idle sweeper)",
            m.sessions.clone(),
        );
        r.register(
            "triggers",
            "Trigger rule outcomes (addressed, stale, loop_refused)",
            m.triggers.clone(),
        );
        r.register("agent_runs", "Agent runs by final status", m.runs.clone());
        r.register(
            "media",
            "Attachments runs looked at, by outcome (given, named, or refused: too_large, not_found, status, empty, timeout, bad_uri, unreachable, bad_key, hash_mismatch, wrong_type, budget, transcription)",
            m.media.clone(),
        );
        r.register(
            "tool_calls",
            "Tool calls of agent runs, by outcome (ok, failed, denied: not allowed and never called, interrupted: in flight at a restart, never repeated)",
            m.tool_calls.clone(),
        );
        r.register(
            "runtime_duration_seconds",
            "Runtime latency: from calling the runtime to the run's end",
            m.runtime_seconds.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From calling a streaming runtime to its first token",
            m.first_token_seconds.clone(),
        );
        r.register(
            "outbox_deliveries",
            "Puppet send attempts by outcome (sent, retry, failed)",
            m.outbox.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open",
            m.connections.clone(),
        );
        r.register(
            "http_connections_refused",
            "HTTP connections closed at once: the connection limit was reached",
            m.connections_refused.clone(),
        );
        r.register(
            "http_connections_evicted",
            "HTTP connections closed to make room at the limit (the oldest not proven to be the homeserver's)",
            m.connections_evicted.clone(),
        );
        r.register(
            "http_requests_timed_out",
            "Requests closed because their headers or body did not arrive within the deadline",
            m.requests_timed_out.clone(),
        );
        r.register(
            "task_failures",
            "Supervised background work that panicked or ended unexpectedly (restarted)",
            m.task_failures.clone(),
        );
        r.register(
            "auth_failures",
            "Failed agent-key authentications (denied, limited)",
            m.auth_failures.clone(),
        );
        r.register(
            "events_pending",
            "Outbox events waiting to be published to NATS JetStream",
            m.events_pending.clone(),
        );
        r.register(
            "events_published",
            "Outbox events JetStream acknowledged",
            m.events_published.clone(),
        );
        r.register(
            "event_publish_errors",
            "Failed attempts to publish an outbox event",
            m.event_publish_errors.clone(),
        );
        r.register(
            "events_dead",
            "Outbox events JetStream refused for good, stepped past and kept as dead letters",
            m.events_dead_total.clone(),
        );
        r.register(
            "events_dead_letters",
            "Dead-lettered outbox events in the table, waiting for a retry",
            m.events_dead.clone(),
        );
        r.register(
            "event_publish_lag_seconds",
            "From an event's commit to JetStream's acknowledgement",
            m.event_publish_lag.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease (it takes the homeserver's transactions), else 0",
            m.leader.clone(),
        );
        r.register(
            "leader_epoch",
            "The epoch of the leader lease this replica holds or last held (its fencing token)",
            m.leader_epoch.clone(),
        );
        r.register(
            "leader_changes",
            "This replica's leadership changes (acquired, lost, released)",
            m.leader_changes.clone(),
        );
        r.register(
            "nats_replies_ignored",
            "Reply chunks of nats runtime workers read and not used: superseded (an earlier attempt's, after a redelivery), malformed, unknown_type",
            m.nats_replies_ignored.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one event; outcomes other than `mirrored` also count as skipped.
    pub fn event(&self, r#type: &'static str, outcome: &'static str) {
        self.events_n(r#type, outcome, 1);
    }

    /// Counts `n` events of one type and outcome (a transaction's counts are summed first, so
    /// the labelled families are looked up once per kind, not once per event).
    pub fn events_n(&self, r#type: &'static str, outcome: &'static str, n: u64) {
        self.events
            .get_or_create(&EventLabels { r#type, outcome })
            .inc_by(n);
        if outcome != "mirrored" {
            self.skipped
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
    }

    /// Counts one media part of a committed message by outcome.
    pub fn media_part(&self, outcome: &'static str) {
        self.media_parts
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one encrypted or to-device event by outcome.
    pub fn crypto(&self, outcome: &'static str) {
        self.crypto.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one attachment a run looked at, by outcome.
    pub fn media(&self, outcome: &'static str) {
        self.media.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one tool call by how it ended.
    pub fn tool_call(&self, outcome: &'static str) {
        self.tool_calls
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one transaction.
    pub fn transaction(&self, outcome: &'static str) {
        self.transactions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a trigger rule outcome.
    pub fn trigger(&self, outcome: &'static str) {
        self.triggers.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a run's end.
    pub fn run(&self, status: RunStatus) {
        self.runs
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .inc();
    }

    /// Sets the number of sessions with a status.
    pub fn sessions(&self, status: SessionStatus, n: i64) {
        self.sessions
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .set(n);
    }

    /// Counts an outbox delivery attempt.
    pub fn outbox(&self, outcome: &'static str) {
        self.outbox.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a failure of supervised background work.
    pub fn task_failed(&self, task: &'static str) {
        self.task_failures.get_or_create(&TaskLabel { task }).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
