//! Delivers `outbox_events` to NATS JetStream: connects (retrying with backoff), creates or
//! updates the stream, then publishes pending rows in rounds.
//!
//! Ordering: within a partition (a channel) rows are published strictly one after another, each
//! only after JetStream acknowledged the one before; a failure stops the partition for the round,
//! so no row ever overtakes an earlier one. Partitions are published concurrently.
//!
//! At least once, never doubled: a row is marked published only after its acknowledgement, and
//! every publish carries `Nats-Msg-Id` = the row's id, so the re-publish of a row whose mark was
//! lost (a crash between ack and mark) is dropped by JetStream within the stream's duplicate
//! window.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    config::EventsConfig,
    db::{
        Store,
        events::{Backlog, PendingEvent},
    },
    metrics::Metrics,
    model::Ts,
};

/// Rows of one partition published per round: bounds a round's length when one channel has a
/// long backlog, so the others are not kept waiting behind it.
const PER_PARTITION: i64 = 256;
/// The longest pause between attempts while NATS is unreachable or refusing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a publish may wait for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/health/ready` reports about the publisher.
#[derive(Debug, Default)]
pub struct PublisherStatus {
    configured: AtomicBool,
    connected: AtomicBool,
    backlog: Mutex<Backlog>,
}

impl PublisherStatus {
    /// `off` (no broker configured), `connected` or `disconnected`.
    pub fn state(&self) -> &'static str {
        if !self.configured.load(Ordering::Relaxed) {
            "off"
        } else if self.connected.load(Ordering::Relaxed) {
            "connected"
        } else {
            "disconnected"
        }
    }

    /// The backlog as of the publisher's last look.
    pub fn backlog(&self) -> Backlog {
        *self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_backlog(&self, b: Backlog) {
        *self.backlog.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }
}

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    /// The database failed; the round is retried.
    #[error("database: {0}")]
    Store(#[from] crate::db::StoreError),
    /// NATS refused or did not acknowledge; the rows wait.
    #[error("publish: {0}")]
    Nats(String),
}

/// The publisher task.
#[derive(Clone)]
pub struct Publisher {
    store: Store,
    config: EventsConfig,
    metrics: Arc<Metrics>,
    status: Arc<PublisherStatus>,
    wake: Arc<Notify>,
}

impl Publisher {
    /// A publisher of `store`'s outbox per `config`.
    pub fn new(
        store: Store,
        config: EventsConfig,
        metrics: Arc<Metrics>,
        status: Arc<PublisherStatus>,
    ) -> Self {
        status
            .configured
            .store(config.nats_url.is_some(), Ordering::Relaxed);
        let wake = store.events_written();
        Self {
            store,
            config,
            metrics,
            status,
            wake,
        }
    }

    /// The stream as configured: subjects `<prefix>.>`, file storage, the duplicate window.
    pub fn stream_config(config: &EventsConfig) -> stream::Config {
        stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: config.duplicate_window,
            max_age: config.stream_max_age.unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Runs until `cancel`: with no broker configured it only keeps the backlog figure fresh.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(url) = self.config.nats_url.clone() else {
            return self.watch_backlog(cancel).await;
        };
        let mut backoff = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            match self.connect(&url).await {
                Ok(js) => {
                    self.status.connected.store(true, Ordering::Relaxed);
                    tracing::info!(%url, stream = %self.config.stream, "publishing events to NATS JetStream");
                    backoff = Duration::from_millis(100);
                    self.publish_until_failure(&js, &cancel, &mut backoff).await;
                }
                Err(error) => {
                    tracing::warn!(%url, %error, retry_in = ?backoff, "NATS unreachable; events wait in the outbox");
                }
            }
            self.status.connected.store(false, Ordering::Relaxed);
            self.refresh_backlog().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self, url: &str) -> Result<jetstream::Context, String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let mut js = jetstream::new(client);
        js.set_timeout(ACK_TIMEOUT);
        js.create_or_update_stream(Self::stream_config(&self.config))
            .await
            .map_err(|e| format!("stream {}: {e}", self.config.stream))?;
        Ok(js)
    }

    /// Publishes rounds until a publish fails (the caller reconnects after a backoff) or
    /// `cancel`. Database errors are retried here with the same backoff.
    async fn publish_until_failure(
        &self,
        js: &jetstream::Context,
        cancel: &CancellationToken,
        backoff: &mut Duration,
    ) {
        let mut last_refresh = Instant::now() - Duration::from_secs(60);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            match self.round(js).await {
                Ok(0) => {
                    if last_refresh.elapsed() > Duration::from_secs(5) {
                        self.refresh_backlog().await;
                        last_refresh = Instant::now();
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                Ok(_) => {
                    *backoff = Duration::from_millis(100);
                    if last_refresh.elapsed() > Duration::from_secs(5) {
                        self.refresh_backlog().await;
                        last_refresh = Instant::now();
                    }
                }
                Err(PublishError::Nats(error)) => {
                    tracing::warn!(%error, "publishing events failed; retrying with backoff");
                    return;
                }
                Err(PublishError::Store(error)) => {
                    tracing::warn!(%error, "reading the outbox failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(*backoff) => {}
                    }
                    *backoff = (*backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One round: the pending heads of every partition, published per partition in order and
    /// partitions concurrently, then marked. Returns how many were published.
    async fn round(&self, js: &jetstream::Context) -> Result<usize, PublishError> {
        let rows = self
            .store
            .pending_events(PER_PARTITION, i64::from(self.config.publish_batch))
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut partitions: BTreeMap<String, Vec<PendingEvent>> = BTreeMap::new();
        for row in rows {
            partitions
                .entry(row.partition_key.clone())
                .or_default()
                .push(row);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, mut rows) in partitions {
            rows.sort_by_key(|r| r.seq);
            let js = js.clone();
            let prefix = self.config.subject_prefix.clone();
            tasks.spawn(async move { publish_partition(&js, &prefix, rows).await });
        }
        let mut acked = Vec::new();
        let mut failure = None;
        while let Some(done) = tasks.join_next().await {
            let (ok, failed) =
                done.map_err(|e| PublishError::Nats(format!("publish task: {e}")))?;
            acked.extend(ok);
            if let Some(f) = failed {
                failure.get_or_insert(f);
            }
        }
        // Mark what was acknowledged even when something else failed: those rows are in the
        // stream, and the next round must start after them.
        let ids: Vec<uuid::Uuid> = acked.iter().map(|(id, _)| *id).collect();
        self.store.mark_published(&ids).await?;
        let now = Ts::now().millis();
        for (_, created) in &acked {
            self.metrics
                .event_publish_lag
                .observe((now - created.millis()).max(0) as f64 / 1000.0);
        }
        self.metrics.events_published.inc_by(acked.len() as u64);
        if let Some((id, error)) = failure {
            self.metrics.event_publish_errors.inc();
            self.store.event_failed(id, &error).await?;
            return Err(PublishError::Nats(error));
        }
        Ok(acked.len())
    }

    async fn refresh_backlog(&self) {
        match self.store.event_backlog().await {
            Ok(b) => {
                self.metrics.events_pending.set(b.pending);
                self.status.set_backlog(b);
            }
            Err(error) => tracing::debug!(%error, "could not read the event backlog"),
        }
    }

    /// Without a broker: keep the pending figure fresh for `/metrics` and `/health/ready`.
    async fn watch_backlog(self, cancel: CancellationToken) {
        loop {
            self.refresh_backlog().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }
}

/// Acknowledged rows (id, commit time), and the first failure (row id, error).
type PartitionResult = (Vec<(uuid::Uuid, Ts)>, Option<(uuid::Uuid, String)>);

/// Publishes one partition's rows in order, each after the previous one's acknowledgement.
async fn publish_partition(
    js: &jetstream::Context,
    prefix: &str,
    rows: Vec<PendingEvent>,
) -> PartitionResult {
    let mut acked = Vec::with_capacity(rows.len());
    for row in rows {
        let subject = format!("{prefix}.{}", row.topic);
        let publish = PublishMessage::build()
            .payload(row.payload.into_bytes().into())
            .message_id(row.id.hyphenated().to_string());
        let result = match js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => acked.push((row.id, row.created_at)),
            Err(error) => return (acked, Some((row.id, error))),
        }
    }
    (acked, None)
}
