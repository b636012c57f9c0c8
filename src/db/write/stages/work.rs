//! Durable work the batch hands on, written in its commit so nothing accepted lives only in
//! memory: follow-up jobs (`bridge_jobs`), trigger candidates (`bridge_triggers`), and the
//! outbox item a delivered puppet send mirrors (`agent_outbox`, with its run's reply).

use crate::{
    db::{
        Batch, NewJob, StoreError,
        write::{payload_json, pg::Statement, sqlite::Write},
    },
    model::{
        JobKind, Ts,
        ids::{JobId, TriggerId},
    },
};

/// One job per command event: a replayed or duplicated event adds none.
const COMMAND_CONFLICT: &str = "ON CONFLICT (event_id) WHERE kind = 'command' DO NOTHING";
/// One pending job of a kind per room and user.
const JOB_CONFLICT: &str = "ON CONFLICT (kind, room_id, user_id) WHERE status = 'pending' AND kind <> 'command' DO NOTHING";
/// One candidate per event.
const CANDIDATE_CONFLICT: &str = "ON CONFLICT (event_id) WHERE agent_id IS NULL DO NOTHING";

/// Commands carry their event and text; other jobs their reason.
fn is_command(j: &NewJob) -> bool {
    j.kind == JobKind::Command
}

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    let (commands, jobs): (Vec<&NewJob>, Vec<&NewJob>) = b.jobs.iter().partition(|j| is_command(j));
    if !commands.is_empty() {
        let j = &commands;
        let ids = s.arrays(j.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
        let rooms = s.arrays(j.iter().map(|j| j.room_id.as_str()).collect())?;
        let users = s.arrays(j.iter().map(|j| j.user_id.as_str()).collect())?;
        let events = s.arrays(
            j.iter()
                .map(|j| j.event_id.as_ref().map(|e| e.as_str()))
                .collect(),
        )?;
        let bodies = s.arrays(j.iter().map(|j| j.body.clone()).collect())?;
        s.cte(
            "jc",
            &format!(
                "INSERT INTO bridge_jobs (id, kind, room_id, user_id, event_id, body, status) \
                 SELECT x.id, 'command', x.r, x.u, x.ev, x.b, 'pending' \
                 FROM unnest({ids}::uuid[], {rooms}::text[], {users}::text[], {events}::text[], {bodies}::text[]) \
                 AS x(id, r, u, ev, b) WHERE true{gate} {COMMAND_CONFLICT}"
            ),
        );
    }
    if !jobs.is_empty() {
        let j = &jobs;
        let ids = s.arrays(j.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
        let kinds = s.arrays(j.iter().map(|j| j.kind).collect())?;
        let rooms = s.arrays(j.iter().map(|j| j.room_id.as_str()).collect())?;
        let users = s.arrays(j.iter().map(|j| j.user_id.as_str()).collect())?;
        let reasons = s.arrays(j.iter().map(|j| j.reason.clone()).collect())?;
        s.cte(
            "jb",
            &format!(
                "INSERT INTO bridge_jobs (id, kind, room_id, user_id, reason, status) \
                 SELECT x.id, x.k, x.r, x.u, x.why, 'pending' \
                 FROM unnest({ids}::uuid[], {kinds}::text[], {rooms}::text[], {users}::text[], {reasons}::text[]) \
                 AS x(id, k, r, u, why) WHERE true{gate} {JOB_CONFLICT}"
            ),
        );
    }
    if !b.candidates.is_empty() {
        let c = &b.candidates;
        let ids = s.arrays(c.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
        let chans = s.arrays(c.iter().map(|c| c.channel_id).collect())?;
        let rooms = s.arrays(c.iter().map(|c| c.room_id.as_str()).collect())?;
        let events = s.arrays(c.iter().map(|c| c.event_id.as_str()).collect())?;
        let payloads = s.arrays(c.iter().map(|c| payload_json(&c.payload)).collect())?;
        let at = s.arrays(c.iter().map(|c| c.at).collect::<Vec<Ts>>())?;
        s.cte(
            "cd",
            &format!(
                "INSERT INTO bridge_triggers (id, channel_id, room_id, event_id, status, payload, at) \
                 SELECT x.id, x.ch, x.r, x.ev, 'candidate', x.p::jsonb, x.at \
                 FROM unnest({ids}::uuid[], {chans}::uuid[], {rooms}::text[], {events}::text[], {payloads}::text[], \
                 {at}::timestamptz[]) AS x(id, ch, r, ev, p, at) WHERE true{gate} {CANDIDATE_CONFLICT}"
            ),
        );
    }
    if let Some(sent) = &b.sent {
        let id = s.bind(sent.outbox_id)?;
        let event = s.bind(sent.event_id.as_str())?;
        s.cte(
            "os",
            &format!(
                "UPDATE agent_outbox SET status = 'sent', event_id = {event}, error = NULL, sent_at = now(), \
                 attempts = attempts + 1, not_before = NULL WHERE id = {id}{gate}"
            ),
        );
        if let Some(run) = sent.run {
            let run = s.bind(run)?;
            s.cte(
                "rr",
                &format!(
                    "UPDATE agent_runs SET reply_event_id = {event} WHERE id = {run} AND reply_event_id IS NULL{gate}"
                ),
            );
        }
    }
    Ok(())
}

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    let now = w.now;
    for j in &b.jobs {
        if is_command(j) {
            sqlx::query(&format!(
                "INSERT INTO bridge_jobs (id, kind, room_id, user_id, event_id, body, status, not_before, created_at) \
                 VALUES ($1, 'command', $2, $3, $4, $5, 'pending', $6, $6) {COMMAND_CONFLICT}"
            ))
            .bind(JobId::new())
            .bind(j.room_id.as_str())
            .bind(j.user_id.as_str())
            .bind(j.event_id.as_ref().map(|e| e.as_str()))
            .bind(&j.body)
            .bind(now)
            .execute(w.conn())
            .await?;
            continue;
        }
        sqlx::query(&format!(
            "INSERT INTO bridge_jobs (id, kind, room_id, user_id, reason, status, not_before, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) {JOB_CONFLICT}"
        ))
        .bind(JobId::new())
        .bind(j.kind)
        .bind(j.room_id.as_str())
        .bind(j.user_id.as_str())
        .bind(&j.reason)
        .bind(now)
        .execute(w.conn())
        .await?;
    }
    for c in &b.candidates {
        sqlx::query(&format!(
            "INSERT INTO bridge_triggers (id, channel_id, room_id, event_id, status, payload, at, created_at) \
             VALUES ($1, $2, $3, $4, 'candidate', $5, $6, $7) {CANDIDATE_CONFLICT}"
        ))
        .bind(TriggerId::new())
        .bind(c.channel_id)
        .bind(c.room_id.as_str())
        .bind(c.event_id.as_str())
        .bind(payload_json(&c.payload))
        .bind(c.at)
        .bind(now)
        .execute(w.conn())
        .await?;
    }
    if let Some(sent) = &b.sent {
        sqlx::query(
            "UPDATE agent_outbox SET status = 'sent', event_id = $2, error = NULL, sent_at = $3, \
             attempts = attempts + 1, not_before = NULL WHERE id = $1",
        )
        .bind(sent.outbox_id)
        .bind(sent.event_id.as_str())
        .bind(now)
        .execute(w.conn())
        .await?;
        if let Some(run) = sent.run {
            sqlx::query("UPDATE agent_runs SET reply_event_id = $2 WHERE id = $1 AND reply_event_id IS NULL")
                .bind(run)
                .bind(sent.event_id.as_str())
                .execute(w.conn())
                .await?;
        }
    }
    Ok(())
}
