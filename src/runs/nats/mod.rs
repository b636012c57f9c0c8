//! The `nats` runtime: a run is published to NATS JetStream as
//! `<prefix>.agent.run.requested.<agent>` (the webhook runtime's JSON body, with `reply_to` and
//! `deadline_ms`) into a work-queue stream, where any number of workers take runs with a pull
//! consumer; they answer with chunks on `<prefix>.agent.run.reply.<run id>` (`delta`, `final`,
//! `error`, `deferred`), kept by a stream of their own so that a bridge that restarts mid-run
//! finds them.
//!
//! Durability: the run is recorded in `agent_runs` before it is published, and the publish
//! carries `Nats-Msg-Id` = the run id, so publishing again (NATS was away, the bridge restarted
//! and resumed the run) is deduplicated by JetStream. The publish is retried until JetStream
//! acknowledges it or the run's time is up.
//!
//! Exactly one answer: each chunk names its `attempt` (the request's JetStream delivery count);
//! the chunks of an attempt supersede those of earlier ones (a redelivered run restarts the
//! streamed text), the first `final` (or `error`) ends the run, and nothing is read after it.
//! Replies to a run that has ended, or to no run at all, are never read.
//!
//! Replies are read per run by an ephemeral ordered consumer filtered on the run's subject,
//! from the start of the stream: no routing table, no shared durable state, and a resumed run
//! sees what its worker said while the bridge was away. After a lost connection the consumer is
//! made again, from the last reply it saw.

mod replies;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    consumer::{DeliverPolicy, pull::OrderedConfig},
    message::PublishMessage,
    publish::PublishAck,
    stream,
};
use futures_core::future::BoxFuture;
use futures_util::StreamExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use self::replies::{Replies, Step};
use super::runtime::{Delta, RunOutput, RunRequest, Runtime, RuntimeError};
use crate::{
    config::{EventsConfig, NatsConfig},
    events::link::{Link, PROBE_EVERY},
    metrics::{Metrics, OutcomeLabel},
};

/// How long the reply stream keeps replies: far longer than any run waits for them.
const REPLY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The longest pause between publish attempts while NATS is away or refuses.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long creating or updating a stream, or deleting a request, may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The bridge's side of the `nats` runtime: one NATS client (connected in the background) and
/// the two streams, shared by every run.
pub struct Broker {
    url: String,
    prefix: String,
    /// The work-queue stream of requests (`<events.stream>_AGENT_RUNS`).
    requests: String,
    /// The stream of replies (`<events.stream>_AGENT_REPLIES`).
    replies: String,
    duplicate_window: Duration,
    link: tokio::sync::OnceCell<Link>,
    /// The streams were created (or found) on this connection's server.
    ensured: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Broker {
    /// The broker of `[events]`'s NATS server; none without one.
    pub fn new(events: &EventsConfig, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        let url = events.nats_url.clone()?;
        Some(Arc::new(Self {
            url,
            prefix: events.subject_prefix.clone(),
            requests: format!("{}_AGENT_RUNS", events.stream),
            replies: format!("{}_AGENT_REPLIES", events.stream),
            duplicate_window: events.duplicate_window,
            link: tokio::sync::OnceCell::new(),
            ensured: AtomicBool::new(false),
            metrics,
        }))
    }

    /// `<prefix>.agent.run.requested.<agent>`: the agent's external id as one subject token
    /// (`.`, `*`, `>` and whitespace become `_`).
    pub fn request_subject(&self, external_id: &str) -> String {
        format!("{}.agent.run.requested.{}", self.prefix, token(external_id))
    }

    /// `<prefix>.agent.run.reply.<run id>`.
    pub fn reply_subject(&self, run_id: &str) -> String {
        format!("{}.agent.run.reply.{}", self.prefix, token(run_id))
    }

    /// The requests stream: work-queue retention (a request is gone once a worker acks it),
    /// file storage, deduplicated on the run id within `events.duplicate_window`.
    pub fn requests_config(&self) -> stream::Config {
        stream::Config {
            name: self.requests.clone(),
            subjects: vec![format!("{}.agent.run.requested.>", self.prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        }
    }

    /// The replies stream: limits retention, kept a day, file storage.
    pub fn replies_config(&self) -> stream::Config {
        stream::Config {
            name: self.replies.clone(),
            subjects: vec![format!("{}.agent.run.reply.>", self.prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: REPLY_MAX_AGE,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    async fn link(&self) -> Result<&Link, String> {
        self.link.get_or_try_init(|| Link::connect(&self.url)).await
    }

    /// Creates or updates both streams (idempotent).
    pub async fn ensure(&self) -> Result<(), String> {
        let link = self.link().await?;
        if link.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected".into());
        }
        for config in [self.requests_config(), self.replies_config()] {
            let name = config.name.clone();
            tokio::time::timeout(ADMIN_TIMEOUT, link.js.create_or_update_stream(config))
                .await
                .map_err(|_| format!("stream {name}: no answer within {ADMIN_TIMEOUT:?}"))?
                .map_err(|e| format!("stream {name}: {e}"))?;
        }
        self.ensured.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// At start-up: creates the streams as soon as NATS answers (runs that come first create
    /// them themselves).
    pub async fn prepare(self: Arc<Self>, cancel: CancellationToken) {
        let mut warned = false;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.ensure().await {
                Ok(()) => {
                    tracing::info!(requests = %self.requests, replies = %self.replies, "nats runtime streams ready");
                    return;
                }
                Err(error) if !warned => {
                    tracing::warn!(%error, "nats runtime streams not created yet; retrying");
                    warned = true;
                }
                Err(error) => tracing::debug!(%error, "nats runtime streams not created yet"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Publishes once: the streams first if not done on this server yet; a dropped connection
    /// fails the publish at once.
    async fn try_publish(
        &self,
        subject: &str,
        id: &str,
        payload: &bytes::Bytes,
    ) -> Result<PublishAck, String> {
        let link = self.link().await?;
        if link.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected".into());
        }
        if !self.ensured.load(Ordering::Relaxed) {
            self.ensure().await?;
        }
        let epoch = link.epoch();
        let mut drops = link.drops.clone();
        let message = PublishMessage::build()
            .payload(payload.clone())
            .message_id(id);
        let send = async {
            let ack = link
                .js
                .send_publish(subject.to_owned(), message)
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        };
        let result = tokio::select! {
            r = send => r,
            _ = drops.wait_for(|e| *e != epoch) => Err("connection lost".to_owned()),
        };
        if result.is_err() {
            // The server may be a new one without the streams: make sure of them next time.
            self.ensured.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Publishes until JetStream acknowledges, or `until`; the error is the last failure.
    async fn publish(
        &self,
        subject: &str,
        id: &str,
        payload: bytes::Bytes,
        until: Instant,
    ) -> Result<PublishAck, String> {
        let mut backoff = PROBE_EVERY;
        let mut warned = false;
        loop {
            let error = match self.try_publish(subject, id, &payload).await {
                Ok(ack) => return Ok(ack),
                Err(error) => error,
            };
            if Instant::now() + backoff >= until {
                return Err(error);
            }
            if !warned {
                tracing::warn!(run_id = id, %error, "cannot publish the run to NATS yet; retrying");
                warned = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Removes a request no worker should take any more (its run timed out or was stopped).
    /// Best effort.
    async fn delete_request(&self, sequence: u64) {
        let Ok(link) = self.link().await else { return };
        let delete = async {
            let stream = link.js.get_stream(&self.requests).await.ok()?;
            stream.delete_message(sequence).await.ok()
        };
        match tokio::time::timeout(ADMIN_TIMEOUT, delete).await {
            Ok(Some(_)) => tracing::debug!(sequence, "the ended run's request was withdrawn"),
            // Already taken and acknowledged (gone), or NATS away: a worker that takes it finds
            // its deadline passed, or answers a run nobody reads any more.
            _ => tracing::debug!(sequence, "the ended run's request was not withdrawn"),
        }
    }

    /// Reads the run's replies, streaming what they say into `deltas`, until one ends the run.
    async fn answer(
        &self,
        run_id: &str,
        deltas: &mpsc::Sender<Delta>,
    ) -> Result<RunOutput, RuntimeError> {
        let subject = self.reply_subject(run_id);
        let mut replies = Replies::default();
        let mut after = 0u64;
        loop {
            let link = match self.link().await {
                Ok(link) => link,
                Err(error) => return Err(RuntimeError::Config(error)),
            };
            let epoch = link.epoch();
            let mut drops = link.drops.clone();
            let config = OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: if after == 0 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    }
                },
                ..Default::default()
            };
            let consumer = link.js.create_consumer_on_stream(config, &self.replies);
            let messages = match tokio::time::timeout(ADMIN_TIMEOUT, consumer).await {
                Ok(Ok(consumer)) => consumer.messages().await.map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer".into()),
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(error) => {
                    tracing::debug!(run_id, %error, "cannot read the run's replies yet; retrying");
                    tokio::time::sleep(PROBE_EVERY).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = drops.wait_for(|e| *e != epoch) => None,
                };
                let message = match next {
                    Some(Ok(m)) => m,
                    Some(Err(error)) => {
                        tracing::debug!(run_id, %error, "reading the run's replies failed; again");
                        break;
                    }
                    None => break,
                };
                if let Ok(info) = message.info() {
                    after = info.stream_sequence;
                }
                let (say, end) = replies.take(&message.payload);
                for delta in say {
                    let _ = deltas.send(delta).await;
                }
                match end {
                    Step::Go => {}
                    Step::Ignored(ignored) => {
                        self.metrics
                            .nats_replies_ignored
                            .get_or_create(&OutcomeLabel {
                                outcome: ignored.label(),
                            })
                            .inc();
                        tracing::info!(
                            run_id,
                            why = ignored.why(),
                            "a reply to the run was ignored"
                        )
                    }
                    Step::End(result) => {
                        if replies.ignored > 0 {
                            tracing::info!(
                                run_id,
                                ignored = replies.ignored,
                                "replies of superseded attempts were ignored"
                            );
                        }
                        return result;
                    }
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// A subject token: `.`, `*`, `>` and whitespace (which would split or widen a subject)
/// become `_`.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

/// The runtime of a `nats` blueprint.
pub struct NatsRuntime {
    broker: Arc<Broker>,
    config: NatsConfig,
}

impl NatsRuntime {
    /// The runtime for `config`, over the shared broker.
    pub fn new(config: NatsConfig, broker: Arc<Broker>) -> Self {
        Self { broker, config }
    }

    /// The request as published: the webhook body without tools (workers call their own),
    /// with the reply subject and the deadline.
    fn payload(&self, request: &RunRequest, deadline_ms: i64) -> Result<Vec<u8>, RuntimeError> {
        let mut body =
            serde_json::to_value(request).map_err(|e| RuntimeError::Malformed(e.to_string()))?;
        if let Some(o) = body.as_object_mut() {
            for key in ["tools", "tool_rounds", "answer_now"] {
                o.remove(key);
            }
            o.insert(
                "reply_to".into(),
                self.broker.reply_subject(&request.run_id).into(),
            );
            o.insert("deadline_ms".into(), deadline_ms.into());
        }
        serde_json::to_vec(&body).map_err(|e| RuntimeError::Malformed(e.to_string()))
    }

    async fn call_inner(
        &self,
        request: &RunRequest,
        deltas: mpsc::Sender<Delta>,
    ) -> Result<RunOutput, RuntimeError> {
        let timeout = self.config.timeout;
        let until = Instant::now() + timeout;
        let deadline_ms = chrono::Utc::now().timestamp_millis()
            + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2);
        let payload = self.payload(request, deadline_ms)?;
        let subject = self.broker.request_subject(&request.agent.external_id);
        let ack = self
            .broker
            .publish(&subject, &request.run_id, payload.into(), until)
            .await
            .map_err(|e| {
                RuntimeError::Network(format!("NATS did not take the run within {timeout:?}: {e}"))
            })?;
        if ack.duplicate {
            tracing::info!(run_id = %request.run_id, "the run was published before (a resumed run): waiting for its replies");
        }
        let mut withdraw = Withdraw {
            broker: self.broker.clone(),
            sequence: ack.sequence,
            stop: request.stop.clone(),
            armed: true,
        };
        let answered =
            tokio::time::timeout_at(until, self.broker.answer(&request.run_id, &deltas)).await;
        withdraw.armed = false;
        match answered {
            Ok(result) => result,
            Err(_) => {
                self.broker.delete_request(ack.sequence).await;
                Err(RuntimeError::Timeout(timeout))
            }
        }
    }
}

/// Withdraws a stopped run's request when its call is dropped, so that no worker starts a run
/// a person stopped. A call dropped for any other reason (a shutdown, a lost lease) leaves the
/// request queued: the run resumes on the next start and waits for the same request (a
/// re-publish is deduplicated on the run id, so a withdrawn request could not come back).
struct Withdraw {
    broker: Arc<Broker>,
    sequence: u64,
    stop: CancellationToken,
    /// Disarmed once the call ends by itself (answered: the worker acknowledged the request).
    armed: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed || !self.stop.is_cancelled() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (broker, sequence) = (self.broker.clone(), self.sequence);
            handle.spawn(async move { broker.delete_request(sequence).await });
        }
    }
}

impl Runtime for NatsRuntime {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn call<'a>(
        &'a self,
        request: &'a RunRequest,
        deltas: mpsc::Sender<Delta>,
    ) -> BoxFuture<'a, Result<RunOutput, RuntimeError>> {
        Box::pin(self.call_inner(request, deltas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_token_per_name() {
        let events = EventsConfig {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            ..Default::default()
        };
        let broker = Broker::new(&events, Arc::new(Metrics::new())).unwrap();
        assert_eq!(
            broker.request_subject("agent:sofia"),
            "daarion.agent.run.requested.agent:sofia"
        );
        assert_eq!(
            broker.request_subject("agent:a.b *c>"),
            "daarion.agent.run.requested.agent:a_b__c_"
        );
        assert_eq!(broker.reply_subject("r1"), "daarion.agent.run.reply.r1");
        assert_eq!(broker.requests_config().name, "DAARION_AGENT_RUNS");
        assert_eq!(broker.replies_config().name, "DAARION_AGENT_REPLIES");
        assert!(Broker::new(&EventsConfig::default(), Arc::new(Metrics::new())).is_none());
    }
}
