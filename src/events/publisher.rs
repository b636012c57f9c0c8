//! Delivers `outbox_events` to NATS JetStream: keeps one client connected, creates or updates
//! the stream, then publishes pending rows in rounds.
//!
//! Ordering: within a partition (a channel) rows are published strictly one after another, each
//! only after JetStream acknowledged the one before; a failure stops the partition for the round,
//! so no row ever overtakes an earlier one. Partitions are published concurrently.
//!
//! At least once, never doubled: a row is marked published only after its acknowledgement, and
//! every publish carries `Nats-Msg-Id` = the row's id, so the re-publish of a row whose mark was
//! lost (a crash between ack and mark) is dropped by JetStream within the stream's duplicate
//! window.
//!
//! Recovery: nothing is published into a JetStream that has not just answered. After the
//! connection drops or a publish fails, the publisher probes JetStream (a stream info request
//! with a short timeout, every `PROBE_EVERY`) and resumes once it answers. While NATS is
//! down, the client reconnects every `PROBE_EVERY` too, so publishing resumes within a probe
//! or two of JetStream being ready, however long the outage and however large the stream it
//! recovers. A broker that answers probes but refuses publishes (a full stream, a wrong
//! subject) is retried with exponential backoff. The backlog figure is refreshed by a task of
//! its own, off the publishing path.
//!
//! Dead letters: an event JetStream refuses for good (larger than the server's `max_payload`
//! or the stream's maximum message size) would stop its partition forever. After
//! `events.dead_letter_after` such refusals in a row (spaced by the backoff, in case the limit
//! is being raised) it is marked dead (`dead_at`), counted, and the partition goes on with
//! the next event. Transient failures (a dropped connection, a timeout, no stream yet) never
//! kill an event: they are what the waiting is for.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    self, ErrorCode,
    context::{GetStreamError, GetStreamErrorKind, PublishError as NatsPublishError},
    message::PublishMessage,
    stream,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    link::{Link, PROBE_EVERY, PROBE_TIMEOUT},
    refusal::{describe, refused_for_good},
};
use crate::{
    config::EventsConfig,
    db::{
        Store,
        events::{Backlog, EventStore, PendingEvent},
    },
    metrics::Metrics,
    model::Ts,
};

/// Rows of one partition published per round: bounds a round's length when one channel has a
/// long backlog, so the others are not kept waiting behind it.
const PER_PARTITION: i64 = 256;
/// The longest pause between attempts while JetStream answers but refuses.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long creating or updating the stream may take (it may write to disk).
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the backlog figure is refreshed with a broker.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// How often the backlog figure is refreshed without a broker.
const IDLE_BACKLOG_EVERY: Duration = Duration::from_secs(30);

/// What `/health/ready` reports about the publisher.
#[derive(Debug, Default)]
pub struct PublisherStatus {
    configured: AtomicBool,
    connected: AtomicBool,
    backlog: Mutex<Backlog>,
    dead: AtomicI64,
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

    /// Dead-lettered events as of the publisher's last look.
    pub fn dead(&self) -> i64 {
        self.dead.load(Ordering::Relaxed)
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
    events: EventStore,
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
            events: store.events(),
            config,
            metrics,
            status,
            wake,
        }
    }

    /// The stream as configured: subjects of one to three tokens after the prefix
    /// (`<prefix>.*`, `<prefix>.*.*`, `<prefix>.*.*.*`: every topic is one of those), file
    /// storage, the duplicate window. Not `<prefix>.>`: the `nats` runtime's streams own the
    /// four-token subjects `<prefix>.agent.run.requested.<agent>` and
    /// `<prefix>.agent.run.reply.<run>`, and JetStream refuses streams whose subjects overlap.
    pub fn stream_config(config: &EventsConfig) -> stream::Config {
        let p = &config.subject_prefix;
        stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{p}.*"), format!("{p}.*.*"), format!("{p}.*.*.*")],
            storage: stream::StorageType::File,
            duplicate_window: config.duplicate_window,
            max_age: config.stream_max_age.unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Runs until `cancel`: with no broker configured it only keeps the backlog figure fresh.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(url) = self.config.nats_url.clone() else {
            return self.watch_backlog(cancel, IDLE_BACKLOG_EVERY).await;
        };
        tokio::spawn(self.clone().watch_backlog(cancel.clone(), BACKLOG_EVERY));
        let link = loop {
            match Link::connect(&url).await {
                Ok(link) => break link,
                // Only a URL that cannot be used at all fails here: an unreachable server is
                // retried by the client itself.
                Err(error) => {
                    tracing::error!(%url, %error, "NATS client not created; events wait in the outbox");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(MAX_BACKOFF) => {}
                    }
                }
            }
        };
        let mut ensured = false;
        let mut backoff = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            let Some(epoch) = self.until_ready(&link, &mut ensured, &cancel).await else {
                return;
            };
            self.status.connected.store(true, Ordering::Relaxed);
            tracing::info!(%url, stream = %self.config.stream, "publishing events to NATS JetStream");
            let outcome = self
                .publish_until_failure(&link, epoch, &cancel, &mut backoff)
                .await;
            self.status.connected.store(false, Ordering::Relaxed);
            match outcome {
                Stopped::Cancelled => return,
                Stopped::Lost => {
                    tracing::warn!(%url, "NATS connection lost; events wait in the outbox");
                }
                Stopped::Failed(error) => {
                    // Probe at once: a JetStream that does not answer is away or recovering
                    // (probe again until it answers, no backoff); one that answers refused or
                    // dropped the publish, and is given time before the next.
                    if self.probe(&link, &mut ensured).await.is_ok() {
                        tracing::warn!(%error, retry_in = ?backoff, "JetStream refused a publish; retrying with backoff");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    } else {
                        tracing::warn!(%error, "publishing events failed; waiting for JetStream");
                    }
                }
            }
        }
    }

    /// Probes every [`PROBE_EVERY`] until JetStream answers; returns the connection epoch the
    /// answer came on (None when cancelled).
    async fn until_ready(
        &self,
        link: &Link,
        ensured: &mut bool,
        cancel: &CancellationToken,
    ) -> Option<u64> {
        let mut warned = false;
        loop {
            let started = tokio::time::Instant::now();
            let epoch = link.epoch();
            match self.probe(link, ensured).await {
                Ok(()) => return Some(epoch),
                // Said once per outage: the probe runs ten times a second.
                Err(error) if !warned => {
                    tracing::warn!(%error, "JetStream not ready; events wait in the outbox");
                    warned = true;
                }
                Err(error) => tracing::debug!(%error, "JetStream not ready"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep_until(started + PROBE_EVERY) => {}
            }
        }
    }

    /// One cheap question to JetStream: the stream's info (creating or updating the stream
    /// first if that was not done yet, or the stream is gone).
    async fn probe(&self, link: &Link, ensured: &mut bool) -> Result<(), String> {
        if link.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected".into());
        }
        let name = &self.config.stream;
        if *ensured {
            let info = tokio::time::timeout(PROBE_TIMEOUT, link.probe.get_stream(name))
                .await
                .map_err(|_| format!("stream {name}: no answer within {PROBE_TIMEOUT:?}"))?;
            match info {
                Ok(_) => return Ok(()),
                Err(e) if stream_missing(&e) => *ensured = false,
                Err(e) => return Err(format!("stream {name}: {e}")),
            }
        }
        let config = Self::stream_config(&self.config);
        tokio::time::timeout(STREAM_TIMEOUT, link.js.create_or_update_stream(config))
            .await
            .map_err(|_| format!("stream {name}: no answer within {STREAM_TIMEOUT:?}"))?
            .map_err(|e| format!("stream {name}: {e}"))?;
        *ensured = true;
        Ok(())
    }

    /// Publishes rounds until a publish fails, the connection of `epoch` drops, or `cancel`.
    /// Database errors are retried here with `backoff`.
    async fn publish_until_failure(
        &self,
        link: &Link,
        epoch: u64,
        cancel: &CancellationToken,
        backoff: &mut Duration,
    ) -> Stopped {
        let mut drops = link.drops.clone();
        loop {
            if cancel.is_cancelled() {
                return Stopped::Cancelled;
            }
            if link.epoch() != epoch {
                return Stopped::Lost;
            }
            match self.round(link, epoch).await {
                Ok(0) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Stopped::Cancelled,
                        _ = drops.wait_for(|e| *e != epoch) => return Stopped::Lost,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                Ok(_) => *backoff = Duration::from_millis(100),
                Err(PublishError::Nats(error)) => return Stopped::Failed(error),
                Err(PublishError::Store(error)) => {
                    tracing::warn!(%error, "reading the outbox failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Stopped::Cancelled,
                        _ = tokio::time::sleep(*backoff) => {}
                    }
                    *backoff = (*backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One round: the pending heads of every partition, published per partition in order and
    /// partitions concurrently, then marked. Returns how many were published.
    async fn round(&self, link: &Link, epoch: u64) -> Result<usize, PublishError> {
        let rows = self
            .events
            .pending(PER_PARTITION, i64::from(self.config.publish_batch))
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
            let js = link.js.clone();
            let drops = link.drops.clone();
            let prefix = self.config.subject_prefix.clone();
            tasks.spawn(async move { publish_partition(&js, drops, epoch, &prefix, rows).await });
        }
        let mut acked = Vec::new();
        let mut transient = None;
        let mut refused = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (ok, failed) =
                done.map_err(|e| PublishError::Nats(format!("publish task: {e}")))?;
            acked.extend(ok);
            match failed {
                Some(f) if f.permanent => refused.push(f),
                Some(f) => {
                    transient.get_or_insert(f);
                }
                None => {}
            }
        }
        // Mark what was acknowledged even when something else failed: those rows are in the
        // stream, and the next round must start after them.
        let ids: Vec<uuid::Uuid> = acked.iter().map(|(id, _)| *id).collect();
        self.events.mark_published(&ids).await?;
        let now = Ts::now().millis();
        for (_, created) in &acked {
            self.metrics
                .event_publish_lag
                .observe((now - created.millis()).max(0) as f64 / 1000.0);
        }
        self.metrics.events_published.inc_by(acked.len() as u64);
        // Refused for good: counted towards the dead letter. A dead one no longer holds its
        // partition, so the round counts it as progress; one not dead yet is retried after
        // the backoff, like any refusal.
        let mut dead = 0;
        let mut waiting = None;
        for f in refused {
            self.metrics.event_publish_errors.inc();
            let after = self.config.dead_letter_after;
            if self.events.failed(f.id, &f.error, true, after).await? {
                dead += 1;
                self.metrics.events_dead_total.inc();
                tracing::error!(event_id = %f.id, error = %f.error, attempts = after, "JetStream refuses this event for good; it is dead-lettered and its partition moves on (GET /api/v1/admin/events/dead)");
            } else {
                waiting.get_or_insert(f.error);
            }
        }
        if let Some(f) = transient {
            self.metrics.event_publish_errors.inc();
            let after = self.config.dead_letter_after;
            self.events.failed(f.id, &f.error, false, after).await?;
            return Err(PublishError::Nats(f.error));
        }
        if let Some(error) = waiting {
            return Err(PublishError::Nats(error));
        }
        Ok(acked.len() + dead)
    }

    async fn refresh_backlog(&self) {
        match self.events.backlog().await {
            Ok(b) => {
                self.metrics.events_pending.set(b.pending);
                self.status.set_backlog(b);
            }
            Err(error) => tracing::debug!(%error, "could not read the event backlog"),
        }
        match self.events.dead_count().await {
            Ok(n) => {
                self.metrics.events_dead.set(n);
                self.status.dead.store(n, Ordering::Relaxed);
            }
            Err(error) => tracing::debug!(%error, "could not count dead events"),
        }
    }

    /// Keeps the pending figure fresh for `/metrics` and `/health/ready`, every `every`, in a
    /// task of its own so a slow count never delays publishing.
    async fn watch_backlog(self, cancel: CancellationToken, every: Duration) {
        loop {
            self.refresh_backlog().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// Why [`Publisher::publish_until_failure`] stopped.
enum Stopped {
    /// Shutting down.
    Cancelled,
    /// The connection dropped (the client is reconnecting).
    Lost,
    /// A publish failed or was not acknowledged.
    Failed(String),
}

/// Whether JetStream said the stream does not exist.
fn stream_missing(e: &GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// A publish that failed.
struct Failure {
    /// The row.
    id: uuid::Uuid,
    /// Why.
    error: String,
    /// JetStream will never take the event as it is (see [`refused_for_good`]).
    permanent: bool,
}

/// Acknowledged rows (id, commit time), and the first failure.
type PartitionResult = (Vec<(uuid::Uuid, Ts)>, Option<Failure>);

/// Publishes one partition's rows in order, each after the previous one's acknowledgement.
/// The connection of `epoch` dropping fails the row in flight at once.
async fn publish_partition(
    js: &jetstream::Context,
    mut drops: watch::Receiver<u64>,
    epoch: u64,
    prefix: &str,
    rows: Vec<PendingEvent>,
) -> PartitionResult {
    let mut acked = Vec::with_capacity(rows.len());
    for row in rows {
        let subject = format!("{prefix}.{}", row.topic);
        let publish = PublishMessage::build()
            .payload(row.payload.into_bytes().into())
            .message_id(row.id.hyphenated().to_string());
        let send = async {
            let described = |e: NatsPublishError| (refused_for_good(&e), describe(&e));
            match js.send_publish(subject, publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(described),
                Err(e) => Err(described(e)),
            }
        };
        let result = tokio::select! {
            r = send => r,
            _ = drops.wait_for(|e| *e != epoch) => Err((false, "connection lost".to_owned())),
        };
        match result {
            Ok(()) => acked.push((row.id, row.created_at)),
            Err((permanent, error)) => {
                let failure = Failure {
                    id: row.id,
                    error,
                    permanent,
                };
                return (acked, Some(failure));
            }
        }
    }
    (acked, None)
}
