//! Executing one run: typing while the context is read, calling the runtime, and streaming its
//! answer into **one** message edited as it grows (no more often than the edit interval), with a
//! final edit holding the whole text. The answer is queued under the run's own idempotency key,
//! so a run resumed after a crash edits the answer it already posted instead of posting twice.

use std::time::{Duration, Instant};

use ruma::{OwnedEventId, RoomId};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Runner, context,
    converse::Piece,
    media,
    runtime::RunOutput,
    select::runtime_for,
    tools::{RunPlace, RunTools},
};
use crate::{
    config::MessageKind,
    db::{outbox::Enqueued, runs::RunEnd, triggers::TriggerRow},
    model::{
        OutboxStatus, RunStatus,
        ids::{ChannelId, RunId},
    },
    puppet::{
        PuppetIntent, RUN_KEY_PREFIX, Send,
        content::{self, Content, Outgoing},
    },
};

/// How a run's execution ended.
pub(super) enum Ended {
    /// Completed or failed.
    End(RunEnd),
    /// The runtime answers later through the agent API.
    Deferred,
}

/// Appended to an answer stopped while it streamed.
const STOPPED_MARK: &str = " … _(stopped)_";

/// What streaming an answer did.
#[derive(Default)]
struct Streamed {
    event_id: Option<OwnedEventId>,
    first_token: Option<Instant>,
    error: Option<String>,
}

impl Runner {
    /// Calls the runtime and turns its answer into one message (edited as it streams).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute(
        &self,
        id: RunId,
        intent: &PuppetIntent,
        room: &RoomId,
        channel: ChannelId,
        session: Option<String>,
        triggers: &[TriggerRow],
        stop: &CancellationToken,
    ) -> Ended {
        // Typing shows while the context is read: both are homeserver round trips.
        let typing = intent.typing(room, Some(Duration::from_secs(30)));
        // Without the mark a forgotten conversation would reach the runtime again: no mark read,
        // no run.
        let forget_mark = match self.store.channels().forget_mark(channel).await {
            Ok(mark) => mark,
            Err(error) => {
                let error = format!("cannot read the channel's forget mark: {error}");
                return Ended::End(self.failed(id, intent, room, error).await);
            }
        };
        let namespace = self.registry.namespace();
        let is_agent = |user: &ruma::UserId| namespace.is_puppet(user);
        let place = context::Place {
            room,
            channel,
            session_id: session,
            forget_mark: forget_mark.clone(),
            is_agent: &is_agent,
            media: media::Media {
                config: &self.settings.media,
                openai: match &intent.agent().behaviour.runtime {
                    crate::model::RuntimeSpec::OpenAi(config) => Some(config),
                    _ => None,
                },
                http: &self.http,
                metrics: &self.metrics,
                store: &self.store,
                keep_encrypted_text: self.settings.keep_encrypted_text,
            },
            links: matches!(
                intent.agent().behaviour.runtime,
                crate::model::RuntimeSpec::Webhook(_) | crate::model::RuntimeSpec::Nats(_)
            )
            .then_some(&self.settings.links),
        };
        let request = context::request(id, intent, place, triggers);
        let tool_place = RunPlace {
            run: id,
            agent: intent.agent(),
            intent,
            room,
            channel,
            forget_mark: forget_mark.as_deref(),
            store: &self.store,
        };
        let prepare = RunTools::prepare(&self.tools, tool_place);
        let (typed, request, (mut tools, defs)) = tokio::join!(typing, request, prepare);
        if let Err(error) = typed {
            tracing::warn!(run_id = %id, %error, "cannot show typing");
        }
        let mut request = match request {
            Ok(r) => r,
            Err(error) => {
                return Ended::End(
                    self.failed(
                        id,
                        intent,
                        room,
                        format!("cannot read the room's context: {error}"),
                    )
                    .await,
                );
            }
        };
        if request.context_cut > 0 {
            let cut = i32::try_from(request.context_cut).unwrap_or(i32::MAX);
            if let Err(error) = self.store.runs().set_context_cut(id, cut).await {
                tracing::warn!(run_id = %id, %error, "cannot record the context's cut");
            }
        }
        if !intent.agent().behaviour.tools.is_empty() {
            // A resumed run continues from the calls it made: none is executed twice.
            match tools.resume().await {
                Ok(rounds) => request.tool_rounds = rounds,
                Err(error) => {
                    let error = format!("cannot read the run's tool calls: {error}");
                    return Ended::End(self.failed(id, intent, room, error).await);
                }
            }
        }
        request.tools = defs;
        request.stop = stop.clone();
        let runtime = runtime_for(
            &intent.agent().behaviour.runtime,
            &self.http,
            self.nats.as_ref(),
        );
        let (tx, rx) = mpsc::channel::<Piece>(256);
        let Some(last) = triggers.last() else {
            return Ended::End(RunEnd::failed("a run without triggers"));
        };
        let stream = self.stream(id, intent, room, last, rx, stop);
        let called = Instant::now();
        // A stop drops the runtime call (and with it the stream's sender, which ends the
        // stream: what was streamed gets its final edit, marked).
        let call = async {
            tokio::select! {
                result = self.converse(&*runtime, &mut request, &mut tools, tx, intent, room) => Some(result),
                _ = stop.cancelled() => None,
            }
        };
        let (result, streamed) = tokio::join!(call, stream);
        let Some(result) = result else {
            // A tool call cut off by the stop stays recorded as interrupted.
            if let Err(error) = self.store.steps().interrupt(id).await {
                tracing::warn!(run_id = %id, %error, "cannot mark the run's tool calls interrupted");
            }
            let mut end = RunEnd::cancelled("stopped by a person in the room");
            end.reply_event_id = streamed.event_id;
            return Ended::End(end);
        };
        match result {
            Ok(RunOutput { deferred: true, .. }) => Ended::Deferred,
            Ok(out) => {
                if let Some(ttft) = streamed.first_token {
                    self.metrics
                        .first_token_seconds
                        .observe(ttft.duration_since(called).as_secs_f64());
                }
                // Files after the text (a resumed run finds those it queued already).
                let files = self.post_files(id, intent, room, last, &out.files).await;
                match streamed.event_id.or_else(|| files.first().cloned()) {
                    Some(event_id) => Ended::End(RunEnd {
                        status: RunStatus::Completed,
                        output: Some({
                            let mut output = json!({ "text": out.text });
                            if !files.is_empty() {
                                output["files"] = json!(files);
                            }
                            if !tools.notes.is_empty() {
                                output["tool_calls"] = json!(tools.notes);
                            }
                            output
                        }),
                        reply_event_id: Some(event_id),
                        prompt_tokens: out.prompt_tokens,
                        completion_tokens: out.completion_tokens,
                        error: None,
                    }),
                    None => {
                        let error = streamed
                            .error
                            .unwrap_or_else(|| "the answer could not be posted".into());
                        Ended::End(self.failed(id, intent, room, error).await)
                    }
                }
            }
            Err(error) => {
                // Whatever was already posted stays; the run is failed, never retried.
                let mut end = self.failed(id, intent, room, error.to_string()).await;
                end.reply_event_id = streamed.event_id;
                Ended::End(end)
            }
        }
    }

    /// Posts the answer as it streams: typing until the first piece, then one message edited
    /// no more often than the edit interval and no more than `max_stream_edits` times in all,
    /// the final edit (always sent) holding the whole text.
    async fn stream(
        &self,
        id: RunId,
        intent: &PuppetIntent,
        room: &RoomId,
        last: &TriggerRow,
        mut rx: mpsc::Receiver<Piece>,
        stop: &CancellationToken,
    ) -> Streamed {
        let kind = intent.agent().behaviour.message_kind;
        let interval = self.settings.stream_edit_interval;
        // The final edit is always sent; the ones before it share what is left of the bound.
        let mut growing_edits_left = self.settings.max_stream_edits.saturating_sub(1);
        // What was said, what goes on now (tools running), and what goes under the end.
        let mut said = String::new();
        let mut status: Option<String> = None;
        let mut footer = String::new();
        let mut notes = Vec::new();
        let mut text = String::new();
        let mut posted_text = String::new();
        let mut out = Streamed::default();
        let mut last_edit = Instant::now();
        let mut target: Option<OwnedEventId> = None;
        loop {
            let waiting = target.as_ref().filter(|_| {
                posted_text != text && !text.trim().is_empty() && growing_edits_left > 0
            });
            let piece = if let Some(posted) = waiting {
                // Something is waiting to be shown: wake up when the edit interval allows it.
                let wait = interval.saturating_sub(last_edit.elapsed());
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(p) => p,
                    Err(_) => {
                        self.edit(intent, room, posted, &text, kind, false).await;
                        posted_text = text.clone();
                        last_edit = Instant::now();
                        growing_edits_left -= 1;
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            let Some(piece) = piece else { break };
            match piece {
                Piece::Text(piece) => {
                    if out.first_token.is_none() {
                        out.first_token = Some(Instant::now());
                    }
                    said.push_str(&piece);
                }
                Piece::Unsay(n) => {
                    let keep = said.len().saturating_sub(n);
                    if said.is_char_boundary(keep) {
                        said.truncate(keep);
                    }
                }
                Piece::Status(now) => status = now,
                Piece::End {
                    footer: f,
                    notes: n,
                } => {
                    footer = f;
                    notes = n;
                }
            }
            text = match &status {
                Some(s) if said.trim().is_empty() => s.clone(),
                Some(s) => format!("{said}\n\n{s}"),
                None => said.clone(),
            };
            if target.is_none() && !text.trim().is_empty() {
                let trigger = &last.payload.0;
                let content = content::message(&Outgoing {
                    body: text.clone(),
                    markdown: true,
                    kind,
                    reply_to: Some(last.event_id.clone()),
                    thread_root: trigger.thread_root.clone(),
                    // A reply mentions whom it answers (an agent too: the chain limit bounds that).
                    mentions: vec![trigger.sender.clone()],
                });
                match self.post_answer(id, intent, room, content).await {
                    Ok((event_id, resumed)) => {
                        out.event_id = Some(event_id.clone());
                        target = Some(event_id);
                        // A resumed run's answer holds the earlier attempt's text: edit it.
                        posted_text = if resumed { String::new() } else { text.clone() };
                        last_edit = Instant::now();
                    }
                    Err(error) => {
                        out.error = Some(error);
                        // Drain so the runtime is not blocked; the run will be failed.
                        while rx.recv().await.is_some() {}
                        return out;
                    }
                }
            }
        }
        // The final text: what was said (never a status), then what goes under it.
        text = said;
        if stop.is_cancelled() {
            // What was streamed stays, marked as cut short.
            text.push_str(STOPPED_MARK);
        }
        text.push_str(&footer);
        if let Some(target) = &target
            && (posted_text != text || !notes.is_empty())
        {
            let content = content::edit_with_tools(target.clone(), &text, kind, notes);
            self.queue_edit(intent, room, content, true).await;
        }
        out
    }

    /// Queues the run's answer under its idempotency key (or finds the one a previous attempt
    /// queued) and waits for its event id. Returns whether it was queued before.
    async fn post_answer(
        &self,
        id: RunId,
        intent: &PuppetIntent,
        room: &RoomId,
        content: Content,
    ) -> Result<(OwnedEventId, bool), String> {
        let key = format!("{RUN_KEY_PREFIX}{id}");
        let earlier = intent.queued(&key).await.map_err(|e| e.to_string())?;
        let resumed = earlier.is_some();
        let item = match earlier {
            Some(item) => item,
            None => match intent
                .send(
                    room,
                    Send {
                        content,
                        key: Some(key),
                        request_hash: None,
                    },
                )
                .await
                .map_err(|e| e.to_string())?
            {
                Enqueued::New(item) | Enqueued::Existing(item) | Enqueued::KeyReused(item) => item,
            },
        };
        let item = intent
            .wait(
                item.id,
                self.settings.send_wait.max(Duration::from_secs(30)),
            )
            .await
            .map_err(|e| e.to_string())?;
        match (item.status, item.event_id) {
            (OutboxStatus::Sent, Some(e)) => Ok((e, resumed)),
            _ => Err(item
                .error
                .unwrap_or_else(|| "the homeserver has not accepted the answer yet".into())),
        }
    }

    async fn edit(
        &self,
        intent: &PuppetIntent,
        room: &RoomId,
        target: &OwnedEventId,
        text: &str,
        kind: MessageKind,
        wait: bool,
    ) {
        let content = content::edit(target.clone(), text, true, kind, vec![]);
        self.queue_edit(intent, room, content, wait).await;
    }

    /// Queues an edit; with `wait`, until the homeserver has it.
    async fn queue_edit(&self, intent: &PuppetIntent, room: &RoomId, content: Content, wait: bool) {
        let send = Send {
            content,
            key: None,
            request_hash: None,
        };
        match intent.send(room, send).await {
            Ok(Enqueued::New(item)) if wait => {
                let _ = intent.wait(item.id, self.settings.send_wait).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot queue a streaming edit"),
        }
    }

    /// A failed run: recorded with its error; one short notice in the room when configured.
    pub(super) async fn failed(
        &self,
        id: RunId,
        intent: &PuppetIntent,
        room: &RoomId,
        error: String,
    ) -> RunEnd {
        let agent = intent.agent();
        tracing::warn!(run_id = %id, agent = %agent.user_id, room_id = %room, %error, "run failed");
        let _ = intent.typing(room, None).await;
        if agent.behaviour.failure_notice {
            let content = content::message(&Outgoing {
                body: format!(
                    "{} could not answer this time (run {id} failed).",
                    agent.name
                ),
                markdown: false,
                kind: MessageKind::Notice,
                ..Default::default()
            });
            let send = Send {
                content,
                key: Some(format!("run-failed:{id}")),
                request_hash: None,
            };
            if let Err(e) = intent.send(room, send).await {
                tracing::warn!(error = %e, "cannot post the failure notice");
            }
        }
        RunEnd::failed(error)
    }
}
