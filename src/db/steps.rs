//! `agent_run_steps`: every tool call of a run. A round's calls are recorded (with their audit
//! rows) in one transaction **before** any of them is executed, so a bridge that dies mid-call
//! finds the call still `running` at the next start and reports it to the model as interrupted
//! instead of executing it a second time.

use serde::Serialize;

use crate::{
    db::{Store, StoreError, audit::NewAudit, both, text::DbText},
    model::{
        StepStatus, Ts,
        ids::{RunId, StepId},
    },
};

/// Bytes of a call's arguments kept (the rest is cut; the model got them whole).
pub const ARGUMENTS_BYTES: usize = 16 * 1024;

/// A call to record.
#[derive(Debug, Clone)]
pub struct NewStep {
    /// Its id.
    pub id: StepId,
    /// Place in its round.
    pub position: i32,
    /// The model's id for the call.
    pub call_id: DbText,
    /// The tool's full name as asked for.
    pub tool: DbText,
    /// The arguments as given.
    pub arguments: DbText,
    /// `running` (to execute) or `denied` (never executed).
    pub status: StepStatus,
    /// Why it is denied.
    pub error: Option<DbText>,
}

/// A recorded call.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StepRow {
    /// Its id.
    pub id: StepId,
    /// The round, from 0.
    pub round: i32,
    /// Place in its round.
    pub position: i32,
    /// The model's id for the call.
    pub call_id: String,
    /// The tool's full name.
    pub tool: String,
    /// The arguments (cut at [`ARGUMENTS_BYTES`]).
    pub arguments: String,
    /// How it ended, or `running`.
    pub status: StepStatus,
    /// What went back to the model.
    pub result: Option<String>,
    /// Why it failed, was denied or interrupted.
    pub error: Option<String>,
    /// When it was recorded.
    pub started_at: Ts,
    /// How long it ran.
    pub duration_ms: Option<i64>,
}

/// The store's view of the tool calls of runs.
#[derive(Clone, Debug)]
pub struct StepStore {
    store: Store,
}

impl Store {
    /// The queries of tool calls (`agent_run_steps`).
    pub fn steps(&self) -> StepStore {
        StepStore {
            store: self.clone(),
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl StepStore {
    /// Records one round's calls and their audit rows, atomically, before any is executed.
    pub async fn begin(
        &self,
        run: RunId,
        round: i32,
        steps: &[NewStep],
        audit: &[NewAudit],
    ) -> Result<(), StoreError> {
        let now = Ts::now();
        both!(self.store, pool => {
            let mut tx = pool.begin().await?;
            for s in steps {
                sqlx::query(
                    "INSERT INTO agent_run_steps (id, run_id, round, position, call_id, tool, arguments, status, error, \
                     started_at, finished_at, duration_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (run_id, round, position) DO NOTHING",
                )
                .bind(s.id)
                .bind(run)
                .bind(round)
                .bind(s.position)
                .bind(&s.call_id)
                .bind(cut(s.tool.as_str(), 200))
                .bind(cut(s.arguments.as_str(), ARGUMENTS_BYTES))
                .bind(s.status)
                .bind(&s.error)
                .bind(now)
                .bind((s.status != StepStatus::Running).then_some(now))
                .bind((s.status != StepStatus::Running).then_some(0_i64))
                .execute(&mut *tx)
                .await?;
            }
            use crate::db::audit::AppendAudit;
            tx.append_audit(audit).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records how a call ended (only a call still `running`: an interrupted one stays so).
    pub async fn finish(
        &self,
        id: StepId,
        status: StepStatus,
        result: Option<&DbText>,
        error: Option<&DbText>,
        duration_ms: i64,
    ) -> Result<(), StoreError> {
        both!(self.store, pool => sqlx::query(
            "UPDATE agent_run_steps SET status = $2, result = $3, error = $4, finished_at = $5, duration_ms = $6 \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(status)
        .bind(result)
        .bind(error)
        .bind(Ts::now())
        .bind(duration_ms.max(0))
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Marks the run's calls still `running` as `interrupted`: whoever ran them is gone (a
    /// crash, before the run resumes) or was dropped (a `stop`). Returns how many.
    pub async fn interrupt(&self, run: RunId) -> Result<u64, StoreError> {
        Ok(both!(self.store, pool => sqlx::query(
            "UPDATE agent_run_steps SET status = 'interrupted', finished_at = $2, \
             error = 'interrupted: the bridge stopped while this call ran; it was not repeated' \
             WHERE run_id = $1 AND status = 'running'",
        )
        .bind(run)
        .bind(Ts::now())
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// The calls a run made so far, in order, those still `running` [interrupted](Self::interrupt)
    /// first (this is called when a run starts: the process that ran them is gone).
    pub async fn resume(&self, run: RunId) -> Result<Vec<StepRow>, StoreError> {
        self.interrupt(run).await?;
        self.of_run(run).await
    }

    /// The calls of a run, in order (the agent and admin APIs).
    pub async fn of_run(&self, run: RunId) -> Result<Vec<StepRow>, StoreError> {
        Ok(both!(self.store, pool => sqlx::query_as(
            "SELECT id, round, position, call_id, tool, arguments, status, result, error, started_at, duration_ms \
             FROM agent_run_steps WHERE run_id = $1 ORDER BY round, position",
        )
        .bind(run)
        .fetch_all(pool)
        .await?))
    }
}
