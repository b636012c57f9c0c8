//! Prometheus metrics (`GET /metrics`): transactions, events by type and outcome, processing
//! latency, skipped events, database errors, follow-ups.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub r#type: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub transactions: Family<OutcomeLabel, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub skipped: Family<OutcomeLabel, Counter>,
    pub transaction_seconds: Histogram,
    pub db_errors: Counter,
    pub follow_up_dropped: Counter,
    pub follow_up_failed: Counter,
    pub sessions: Family<StatusLabel, Gauge>,
    /// Trigger rule outcomes: addressed, stale, loop_refused, dropped.
    pub triggers: Family<OutcomeLabel, Counter>,
    pub runs: Family<StatusLabel, Counter>,
    /// From the runtime call to the run's end.
    pub runtime_seconds: Histogram,
    /// From the runtime call to its first token (streaming runtimes).
    pub first_token_seconds: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("daarion_bridge");
        let transactions = Family::<OutcomeLabel, Counter>::default();
        let events = Family::<EventLabels, Counter>::default();
        let skipped = Family::<OutcomeLabel, Counter>::default();
        // 100 µs … ~3 s.
        let transaction_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        let db_errors = Counter::default();
        let follow_up_dropped = Counter::default();
        let follow_up_failed = Counter::default();
        let sessions = Family::<StatusLabel, Gauge>::default();
        let triggers = Family::<OutcomeLabel, Counter>::default();
        let runs = Family::<StatusLabel, Counter>::default();
        let runtime_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14),
        );
        let first_token_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14),
        );
        registry.register(
            "triggers",
            "Trigger rule outcomes (addressed, stale, loop_refused, dropped)",
            triggers.clone(),
        );
        registry.register("agent_runs", "Agent runs by final status", runs.clone());
        registry.register(
            "runtime_duration_seconds",
            "Runtime latency: from calling the runtime to the run's end",
            runtime_seconds.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From calling a streaming runtime to its first token",
            first_token_seconds.clone(),
        );
        registry.register(
            "transactions",
            "Appservice transactions by outcome (committed, replay, error)",
            transactions.clone(),
        );
        registry.register("events", "Room events by type and outcome", events.clone());
        registry.register(
            "events_skipped",
            "Events skipped (malformed, ignored room, unknown type, ...)",
            skipped.clone(),
        );
        registry.register(
            "transaction_duration_seconds",
            "Time from receiving a transaction to answering it",
            transaction_seconds.clone(),
        );
        registry.register(
            "db_errors",
            "Database errors while applying transactions",
            db_errors.clone(),
        );
        registry.register(
            "follow_ups_dropped",
            "Join/reject follow-ups dropped because the queue was full",
            follow_up_dropped.clone(),
        );
        registry.register(
            "follow_ups_failed",
            "Join/reject follow-ups that failed after retries",
            follow_up_failed.clone(),
        );
        registry.register(
            "agent_sessions",
            "Agent sessions by status (refreshed by the idle sweeper)",
            sessions.clone(),
        );
        Self {
            registry,
            transactions,
            events,
            skipped,
            transaction_seconds,
            db_errors,
            follow_up_dropped,
            follow_up_failed,
            sessions,
            triggers,
            runs,
            runtime_seconds,
            first_token_seconds,
        }
    }

    /// Counts one event; outcomes other than `mirrored` also count as skipped.
    pub fn event(&self, r#type: &'static str, outcome: &'static str) {
        self.events
            .get_or_create(&EventLabels { r#type, outcome })
            .inc();
        if outcome != "mirrored" {
            self.skipped.get_or_create(&OutcomeLabel { outcome }).inc();
        }
    }

    pub fn transaction(&self, outcome: &'static str) {
        self.transactions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
