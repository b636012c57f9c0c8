//! Storage of agent runs and per-(agent, channel) response settings.

use serde::Serialize;
use sqlx::{Row, types::Json};

use super::{Store, StoreError, both, types::Ts};
use crate::ids::{AgentId, ChannelId, RunId};

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: RunId,
    pub agent: String,
    pub channel_id: Option<ChannelId>,
    pub status: String,
    pub runtime: Option<String>,
    pub trigger_event_id: Option<String>,
    pub reply_event_id: Option<String>,
    pub chain_depth: i32,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    #[serde(with = "super::agents::ts_rfc3339")]
    pub queued_at: Ts,
    #[serde(with = "super::agents::ts_rfc3339_opt")]
    pub started_at: Option<Ts>,
    #[serde(with = "super::agents::ts_rfc3339_opt")]
    pub finished_at: Option<Ts>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    pub status: &'static str,
    pub output: Option<serde_json::Value>,
    pub reply_event_id: Option<String>,
    pub error: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
}

const RUN_COLS: &str = "r.id, a.external_id, r.channel_id, r.status, r.runtime, r.trigger_event_id, r.reply_event_id, \
     r.chain_depth, r.input, r.output, r.error, r.queued_at, r.started_at, r.finished_at, r.prompt_tokens, r.completion_tokens \
     FROM agent_runs r JOIN agents a ON a.id = r.agent_id";

macro_rules! run_row {
    ($r:expr) => {
        RunRow {
            id: $r.try_get(0)?,
            agent: $r.try_get(1)?,
            channel_id: $r.try_get(2)?,
            status: $r.try_get(3)?,
            runtime: $r.try_get(4)?,
            trigger_event_id: $r.try_get(5)?,
            reply_event_id: $r.try_get(6)?,
            chain_depth: $r.try_get(7)?,
            input: $r.try_get::<Json<serde_json::Value>, _>(8)?.0,
            output: $r
                .try_get::<Option<Json<serde_json::Value>>, _>(9)?
                .map(|j| j.0),
            error: $r.try_get(10)?,
            queued_at: $r.try_get(11)?,
            started_at: $r.try_get(12)?,
            finished_at: $r.try_get(13)?,
            prompt_tokens: $r.try_get(14)?,
            completion_tokens: $r.try_get(15)?,
        }
    };
}

impl Store {
    /// Records a queued run of `agent` (Matrix id) in the room's channel, tied to the agent's
    /// open session there.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_run(
        &self,
        id: RunId,
        agent: &str,
        room_id: &str,
        trigger_event_id: &str,
        input: &serde_json::Value,
        runtime: &str,
        chain_depth: i32,
    ) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "INSERT INTO agent_runs (id, agent_id, input, status, channel_id, session_id, trigger_event_id, runtime, chain_depth, created_at, queued_at) \
             SELECT $1, a.id, $2, 'queued', c.id, \
             (SELECT s.id FROM agent_sessions s WHERE s.agent_id = a.id AND s.channel_id = c.id AND s.status <> 'closed'), \
             $3, $4, $5, $6, $6 FROM agents a, channels c WHERE a.matrix_id = $7 AND c.matrix_room_id = $8",
        )
        .bind(id)
        .bind(Json(input))
        .bind(trigger_event_id)
        .bind(runtime)
        .bind(chain_depth)
        .bind(Ts::now())
        .bind(agent)
        .bind(room_id)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Marks a queued run running, with its final input (triggers merged while it waited).
    pub async fn start_run(&self, id: RunId, input: &serde_json::Value) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "UPDATE agent_runs SET status = 'running', input = $2, started_at = $3 WHERE id = $1 AND status = 'queued'",
        )
        .bind(id)
        .bind(Json(input))
        .bind(Ts::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Records the answer's event as soon as it exists (the agent→agent chain looks it up).
    pub async fn set_run_reply(&self, id: RunId, event_id: &str) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query("UPDATE agent_runs SET reply_event_id = $2 WHERE id = $1")
            .bind(id)
            .bind(event_id)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Ends a run that has not ended yet; returns whether it did.
    pub async fn finish_run(&self, id: RunId, end: &RunEnd) -> Result<bool, StoreError> {
        Ok(both!(self, pool => sqlx::query(
            "UPDATE agent_runs SET status = $2, output = $3, reply_event_id = COALESCE($4, reply_event_id), error = $5, \
             prompt_tokens = $6, completion_tokens = $7, finished_at = $8 \
             WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .bind(end.status)
        .bind(end.output.as_ref().map(Json))
        .bind(&end.reply_event_id)
        .bind(&end.error)
        .bind(end.prompt_tokens)
        .bind(end.completion_tokens)
        .bind(Ts::now())
        .execute(pool)
        .await?
        .rows_affected()
            == 1))
    }

    pub async fn get_run(&self, id: RunId) -> Result<Option<RunRow>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query(&format!("SELECT {RUN_COLS} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|r| Ok::<_, sqlx::Error>(run_row!(r)))
            .transpose()?),
        )
    }

    pub async fn list_runs(
        &self,
        agent: AgentId,
        channel: Option<ChannelId>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        Ok(both!(self, pool => sqlx::query(&format!(
            "SELECT {RUN_COLS} WHERE r.agent_id = $1 AND ($2 IS NULL OR r.channel_id = $2) AND ($3 = '' OR r.status = $3) \
             ORDER BY r.queued_at DESC, r.id DESC LIMIT $4"
        ))
        .bind(agent)
        .bind(channel)
        .bind(status.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok::<_, sqlx::Error>(run_row!(r)))
        .collect::<Result<Vec<_>, _>>()?))
    }

    /// The chain depth of the run that posted `event_id`, if a run did within `window`.
    pub async fn chain_depth_of(
        &self,
        event_id: &str,
        since: Ts,
    ) -> Result<Option<i32>, StoreError> {
        Ok(both!(self, pool => sqlx::query_scalar::<_, i32>(
            "SELECT chain_depth FROM agent_runs WHERE reply_event_id = $1 AND queued_at >= $2",
        )
        .bind(event_id)
        .bind(since)
        .fetch_optional(pool)
        .await?))
    }

    /// At start-up: runs a previous process left queued or running (other than webhook runs
    /// waiting for their deferred answer) can never finish; they are failed, not retried.
    pub async fn fail_interrupted_runs(&self) -> Result<u64, StoreError> {
        Ok(both!(self, pool => sqlx::query(
            "UPDATE agent_runs SET status = 'failed', error = 'interrupted by a bridge restart', finished_at = $1 \
             WHERE status = 'queued' OR (status = 'running' AND (runtime IS NULL OR runtime <> 'webhook' OR output IS NOT NULL))",
        )
        .bind(Ts::now())
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Deferred runs whose runtime never answered within `older_than` are failed.
    pub async fn fail_abandoned_runs(&self, cutoff: Ts) -> Result<u64, StoreError> {
        Ok(both!(self, pool => sqlx::query(
            "UPDATE agent_runs SET status = 'failed', error = 'the runtime never answered', finished_at = $2 \
             WHERE status = 'running' AND started_at < $1",
        )
        .bind(cutoff)
        .bind(Ts::now())
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Sets when an agent answers in a channel.
    pub async fn set_respond(
        &self,
        agent: AgentId,
        channel: ChannelId,
        respond: &str,
    ) -> Result<(), StoreError> {
        both!(self, pool => sqlx::query(
            "INSERT INTO agent_channel_settings (agent_id, channel_id, respond, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id, channel_id) DO UPDATE SET respond = excluded.respond, updated_at = excluded.updated_at",
        )
        .bind(agent)
        .bind(channel)
        .bind(respond)
        .bind(Ts::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// The channel of a Matrix room.
    pub async fn channel_for_room(&self, room_id: &str) -> Result<Option<ChannelId>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query_scalar("SELECT id FROM channels WHERE matrix_room_id = $1")
            .bind(room_id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// Response settings of the agents of a room: (agent matrix id, respond).
    pub async fn respond_settings(
        &self,
        room_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(both!(self, pool => sqlx::query_as::<_, (String, String)>(
            "SELECT a.matrix_id, s.respond FROM agent_channel_settings s JOIN agents a ON a.id = s.agent_id \
             JOIN channels c ON c.id = s.channel_id WHERE c.matrix_room_id = $1 AND a.matrix_id IS NOT NULL",
        )
        .bind(room_id)
        .fetch_all(pool)
        .await?))
    }

    pub async fn agent_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<AgentId>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query_scalar("SELECT id FROM agents WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(pool)
            .await?),
        )
    }

    /// A channel's Matrix room id.
    pub async fn channel_room(&self, channel: ChannelId) -> Result<Option<String>, StoreError> {
        Ok(
            both!(self, pool => sqlx::query_scalar("SELECT matrix_room_id FROM channels WHERE id = $1")
            .bind(channel)
            .fetch_optional(pool)
            .await?),
        )
    }
}
