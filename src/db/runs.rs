//! `agent_runs` (from queued to its end, with the triggers it took) and
//! `agent_channel_settings` (when an agent answers in a channel).

use ruma::OwnedEventId;
use serde::Serialize;
use sqlx::types::Json;

use crate::model::{
    ids::{AgentId, ChannelId, RunId, SessionId},
    topics::{RunChanged, Topic},
};
use crate::{
    db::{
        Store, StoreError, both,
        decode::decode_good,
        events::AppendEvents,
        triggers::{RawTriggerRow, TriggerRow},
    },
    model::{Respond, RunStatus, Ts},
};

/// A run's columns as its events carry them.
const RUN_EVENT: &str = "id AS run_id, agent_id, channel_id, status, runtime, trigger_event_id, reply_event_id, \
     error, queued_at, started_at, finished_at, prompt_tokens, completion_tokens";

/// The drafts of run changes (`None` where nothing is published: a cancelled run that never
/// started was never announced).
fn run_drafts(rows: Vec<RunChanged>) -> Vec<crate::model::topics::Draft> {
    rows.into_iter()
        .filter_map(|r| {
            let topic = match r.status {
                RunStatus::Running => Topic::RunStarted,
                RunStatus::Cancelled if r.started_at.is_none() => return None,
                status => Topic::of_run_end(status)?,
            };
            r.draft(topic)
        })
        .collect()
}

/// A run as the agent API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    /// The run.
    pub id: RunId,
    /// The agent's external id.
    pub agent: String,
    /// The agent's row id.
    #[serde(skip)]
    pub agent_id: AgentId,
    /// The channel it answers in.
    pub channel_id: Option<ChannelId>,
    /// Where it stands.
    pub status: RunStatus,
    /// echo | openai | webhook.
    pub runtime: Option<String>,
    /// The (first) event that addressed the agent.
    pub trigger_event_id: Option<String>,
    /// The answer's event.
    pub reply_event_id: Option<String>,
    /// Agent→agent turns before this run.
    pub chain_depth: i32,
    /// What the runtime was given.
    pub input: Json<serde_json::Value>,
    /// What it answered.
    pub output: Option<Json<serde_json::Value>>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was queued.
    pub queued_at: Ts,
    /// When the runtime was called.
    pub started_at: Option<Ts>,
    /// When it ended.
    pub finished_at: Option<Ts>,
    /// Prompt tokens, when reported.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens, when reported.
    pub completion_tokens: Option<i32>,
    /// Times the runtime was called.
    pub attempts: i32,
    /// When the runtime said it answers later.
    pub deferred_at: Option<Ts>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// Completed, failed or cancelled.
    pub status: RunStatus,
    /// What the runtime answered.
    pub output: Option<serde_json::Value>,
    /// The answer's event.
    pub reply_event_id: Option<OwnedEventId>,
    /// Why it failed.
    pub error: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens.
    pub completion_tokens: Option<i32>,
}

impl RunEnd {
    /// A completion with the runtime's output and the answer's event.
    pub fn completed(output: serde_json::Value, reply_event_id: Option<OwnedEventId>) -> Self {
        Self {
            status: RunStatus::Completed,
            output: Some(output),
            reply_event_id,
            error: None,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }

    /// A cancellation with its reason.
    pub fn cancelled(reason: impl Into<String>) -> Self {
        Self {
            status: RunStatus::Cancelled,
            ..Self::failed(reason)
        }
    }

    /// A failure with its reason.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            status: RunStatus::Failed,
            output: None,
            reply_event_id: None,
            error: Some(error.into()),
            prompt_tokens: None,
            completion_tokens: None,
        }
    }
}

/// A run to queue.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// The agent.
    pub agent_id: AgentId,
    /// The channel.
    pub channel_id: ChannelId,
    /// The runtime that will answer.
    pub runtime: &'a str,
    /// Agent→agent turns before it.
    pub chain_depth: i32,
}

pub(crate) const RUN_COLS: &str = "SELECT r.id, a.external_id AS agent, r.agent_id, r.channel_id, r.status, r.runtime, \
     r.trigger_event_id, r.reply_event_id, r.chain_depth, r.input, r.output, r.error, r.queued_at, r.started_at, \
     r.finished_at, r.prompt_tokens, r.completion_tokens, r.attempts, r.deferred_at \
     FROM agent_runs r JOIN agents a ON a.id = r.agent_id";

const TAKEN: &str = "SELECT id, agent_id, channel_id, room_id, event_id, status, payload, at, created_at \
     FROM bridge_triggers WHERE run_id = $1 AND status = 'taken' ORDER BY at, created_at";

/// Triggers of an (agent, channel) (pending, or taken by run $1) whose message was redacted
/// meanwhile are cancelled: a redaction that committed while its candidate was being evaluated
/// cannot have seen the trigger the evaluation wrote, so the run checks again.
const CANCEL_REDACTED: &str = "UPDATE bridge_triggers SET status = 'cancelled' WHERE agent_id = $2 \
     AND channel_id = $3 AND (status = 'pending' OR (status = 'taken' AND run_id = $1)) \
     AND EXISTS (SELECT 1 FROM messages m WHERE m.matrix_event_id = bridge_triggers.event_id \
     AND m.redacted_at IS NOT NULL)";

/// The runtime's input: the events that addressed the agent, in order.
fn input(triggers: &[TriggerRow]) -> Json<serde_json::Value> {
    let events: Vec<&serde_json::value::RawValue> = triggers
        .iter()
        .map(|t| t.payload.0.event.as_ref())
        .collect();
    let mut value = serde_json::json!({ "triggers": events });
    super::text::clean_json(&mut value);
    Json(value)
}

/// The store's view of agent runs (`agent_runs`) and each agent's respond settings. A component
/// given this handle, not the whole store, can touch nothing else.
#[derive(Clone, Debug)]
pub struct RunStore {
    store: Store,
}

impl Store {
    /// The queries of agent runs (`agent_runs`) and each agent's respond settings.
    pub fn runs(&self) -> RunStore {
        RunStore {
            store: self.clone(),
        }
    }
}

impl RunStore {
    /// Queues a run taking the (agent, channel)'s pending triggers, atomically; `None` when none
    /// was left to take (they were cancelled meanwhile).
    pub async fn queue(
        &self,
        run: &NewRun<'_>,
    ) -> Result<Option<(RunId, Vec<TriggerRow>)>, StoreError> {
        let id = RunId::new();
        let now = Ts::now();
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO agent_runs (id, agent_id, input, status, channel_id, session_id, runtime, chain_depth, \
                 created_at, queued_at) SELECT $1, $2, $3, 'queued', $4, \
                 (SELECT s.id FROM agent_sessions s WHERE s.agent_id = $2 AND s.channel_id = $4 AND s.status <> 'closed'), \
                 $5, $6, $7, $7",
            )
            .bind(id)
            .bind(run.agent_id)
            .bind(Json(serde_json::json!({ "triggers": [] })))
            .bind(run.channel_id)
            .bind(run.runtime)
            .bind(run.chain_depth)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(CANCEL_REDACTED)
                .bind(id)
                .bind(run.agent_id)
                .bind(run.channel_id)
                .execute(&mut *tx)
                .await?;
            let taken = sqlx::query(
                "UPDATE bridge_triggers SET status = 'taken', run_id = $1 WHERE agent_id = $2 AND channel_id = $3 \
                 AND status = 'pending'",
            )
            .bind(id)
            .bind(run.agent_id)
            .bind(run.channel_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let raws: Vec<RawTriggerRow> = sqlx::query_as(TAKEN).bind(id).fetch_all(&mut *tx).await?;
            let triggers = decode_good(raws);
            sqlx::query("UPDATE agent_runs SET input = $2, trigger_event_id = $3 WHERE id = $1")
                .bind(id)
                .bind(input(&triggers))
                .bind(triggers.first().map(|t| t.event_id.as_str()))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some((id, triggers)))
        })
    }

    /// Starts a queued run (or resumes a running one after a restart, when `resume`): counts the
    /// attempt, takes the triggers that arrived while it waited, and returns all its live
    /// triggers with the agent's session. `None` when the run was cancelled (or already ended).
    pub async fn start(
        &self,
        id: RunId,
        resume: bool,
    ) -> Result<Option<(Vec<TriggerRow>, Option<SessionId>)>, StoreError> {
        let now = Ts::now();
        let from = if resume { "running" } else { "queued" };
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(AgentId, Option<ChannelId>, Option<SessionId>)> = sqlx::query_as(
                "UPDATE agent_runs SET status = 'running', started_at = COALESCE(started_at, $2), \
                 attempts = attempts + 1 WHERE id = $1 AND status = $3 RETURNING agent_id, channel_id, session_id",
            )
            .bind(id)
            .bind(now)
            .bind(from)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((agent, Some(channel), session)) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            sqlx::query(CANCEL_REDACTED)
                .bind(id)
                .bind(agent)
                .bind(channel)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE bridge_triggers SET status = 'taken', run_id = $1 WHERE agent_id = $2 AND channel_id = $3 \
                 AND status = 'pending'",
            )
            .bind(id)
            .bind(agent)
            .bind(channel)
            .execute(&mut *tx)
            .await?;
            let raws: Vec<RawTriggerRow> = sqlx::query_as(TAKEN).bind(id).fetch_all(&mut *tx).await?;
            let triggers = decode_good(raws);
            sqlx::query("UPDATE agent_runs SET input = $2 WHERE id = $1")
                .bind(id)
                .bind(input(&triggers))
                .execute(&mut *tx)
                .await?;
            // A resumed run was announced when it first started.
            if self.store.events_enabled() && !resume {
                let row: Vec<RunChanged> =
                    sqlx::query_as(&format!("SELECT {RUN_EVENT} FROM agent_runs WHERE id = $1"))
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                tx.append_events(&run_drafts(row)).await?;
            }
            tx.commit().await?;
            Ok(Some((triggers, session)))
        })
    }

    /// Runs a previous process left queued or running (not deferred): the scheduler resumes
    /// them at start-up.
    pub async fn open(&self) -> Result<Vec<RunRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(&format!(
            "{RUN_COLS} WHERE r.status IN ('queued', 'running') AND r.deferred_at IS NULL ORDER BY r.queued_at"
        ))
        .fetch_all(pool)
        .await?))
    }

    /// Records how many turns of the run's context its character budget dropped.
    pub async fn set_context_cut(&self, id: RunId, cut: i32) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query("UPDATE agent_runs SET context_cut = $2 WHERE id = $1")
            .bind(id)
            .bind(cut)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Records the answer's event as soon as it exists (the agent→agent chain looks it up).
    pub async fn set_reply(&self, id: RunId, event_id: &str) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query("UPDATE agent_runs SET reply_event_id = $2 WHERE id = $1")
            .bind(id)
            .bind(event_id)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The runtime answers later (webhook 202): the run stays running, not resumed at restart.
    pub async fn defer(&self, id: RunId) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query("UPDATE agent_runs SET deferred_at = $2 WHERE id = $1")
            .bind(id)
            .bind(Ts::now())
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Ends a run that has not ended yet; returns whether it did.
    pub async fn finish(&self, id: RunId, end: &RunEnd) -> Result<bool, StoreError> {
        let output = end.output.clone().map(|mut v| {
            super::text::clean_json(&mut v);
            Json(v)
        });
        let ended = both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let rows: Vec<RunChanged> = sqlx::query_as(&format!(
                "UPDATE agent_runs SET status = $2, output = $3, reply_event_id = COALESCE($4, reply_event_id), \
                 error = $5, prompt_tokens = $6, completion_tokens = $7, finished_at = $8 \
                 WHERE id = $1 AND status IN ('queued', 'running') RETURNING {RUN_EVENT}"
            ))
            .bind(id)
            .bind(end.status)
            .bind(output)
            .bind(end.reply_event_id.as_ref().map(|e| e.as_str()))
            .bind(end.error.as_deref().map(super::text::clean))
            .bind(end.prompt_tokens)
            .bind(end.completion_tokens)
            .bind(Ts::now())
            .fetch_all(&mut *tx)
            .await?;
            let ended = rows.len() == 1;
            if self.store.events_enabled() {
                tx.append_events(&run_drafts(rows)).await?;
            }
            tx.commit().await?;
            ended
        });
        if ended {
            self.store.wake_publisher();
        }
        Ok(ended)
    }

    /// One run.
    pub async fn get(&self, id: RunId) -> Result<Option<RunRow>, StoreError> {
        Ok(
            both!(self.store, pool => sqlx::query_as(&format!("{RUN_COLS} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// The agent's runs, newest first.
    pub async fn list(
        &self,
        agent: AgentId,
        channel: Option<ChannelId>,
        status: Option<RunStatus>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(&format!(
            "{RUN_COLS} WHERE r.agent_id = $1 AND ($2 IS NULL OR r.channel_id = $2) AND ($3 = '' OR r.status = $3) \
             ORDER BY r.queued_at DESC, r.id DESC LIMIT $4"
        ))
        .bind(agent)
        .bind(channel)
        .bind(status.map(RunStatus::as_str).unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?))
    }

    /// The chain depth of the run that posted `event_id`, if a run queued since `since` did.
    pub async fn chain_depth_of(
        &self,
        event_id: &str,
        since: Ts,
    ) -> Result<Option<i32>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_scalar(
            "SELECT chain_depth FROM agent_runs WHERE reply_event_id = $1 AND queued_at >= $2",
        )
        .bind(event_id)
        .bind(since)
        .fetch_optional(pool)
        .await?))
    }

    /// Deferred runs whose runtime never answered since `cutoff` are failed.
    pub async fn fail_abandoned(&self, cutoff: Ts) -> Result<u64, StoreError> {
        Ok(both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            let rows: Vec<RunChanged> = sqlx::query_as(&format!(
                "UPDATE agent_runs SET status = 'failed', error = 'the runtime never answered', finished_at = $2 \
                 WHERE status = 'running' AND deferred_at IS NOT NULL AND deferred_at < $1 RETURNING {RUN_EVENT}"
            ))
            .bind(cutoff)
            .bind(Ts::now())
            .fetch_all(&mut *tx)
            .await?;
            let n = rows.len() as u64;
            if self.store.events_enabled() {
                tx.append_events(&run_drafts(rows)).await?;
            }
            tx.commit().await?;
            n
        }))
    }

    /// Sets when an agent answers in a channel (audited as `by`).
    pub async fn set_respond(
        &self,
        agent: AgentId,
        channel: ChannelId,
        respond: Respond,
        by: &super::audit::Actor,
    ) -> Result<(), StoreError> {
        use crate::db::audit::AppendAudit;
        let entry = by
            .did(
                "agent.respond_set",
                Some(&channel.to_string()),
                crate::model::AuditOutcome::Allowed,
            )
            .details(serde_json::json!({ "agent_id": agent, "respond": respond }));
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO agent_channel_settings (agent_id, channel_id, respond, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (agent_id, channel_id) DO UPDATE SET respond = excluded.respond, updated_at = excluded.updated_at",
            )
            .bind(agent)
            .bind(channel)
            .bind(respond)
            .bind(Ts::now())
            .execute(&mut *tx)
            .await?;
            tx.append_audit(&[entry]).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The explicit response settings of a channel's agents.
    pub async fn respond_settings(
        &self,
        channel: ChannelId,
    ) -> Result<Vec<(AgentId, Respond)>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT agent_id, respond FROM agent_channel_settings WHERE channel_id = $1",
        )
        .bind(channel)
        .fetch_all(pool)
        .await?))
    }
}
