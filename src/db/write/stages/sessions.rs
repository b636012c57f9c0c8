//! `agent_sessions`: an agent's activity opens or revives its session in a channel, its leave
//! closes it, a tombstone closes every session of the channel. Publishes `session.changed` when
//! a status changed; on PostgreSQL those events are built in SQL from the CTEs' rows, since
//! only the statement knows the status a row had before.

use crate::{
    db::{
        Batch, SessionChange, SessionOp, StoreError,
        sessions::{SessionEventRow, session_draft},
        write::{pg::Statement, sqlite::Write},
    },
    model::{
        SessionStatus, Ts,
        ids::{AgentId, SessionId},
        topics::{PAYLOAD_VERSION, Topic},
    },
};

/// What a session op writes.
#[derive(Clone, Copy)]
enum Op {
    /// Open the agent's session, or mark the open one active.
    Activate(AgentId),
    /// Close the agent's open session.
    Close(AgentId),
    /// Close every open session of the channel.
    CloseAll,
}

/// `None`: activating no agent changes nothing.
fn op(o: &SessionOp) -> Option<Op> {
    match (o.change, o.agent) {
        (SessionChange::Activate, Some(agent)) => Some(Op::Activate(agent)),
        (SessionChange::Activate, None) => None,
        (SessionChange::Close, Some(agent)) => Some(Op::Close(agent)),
        (SessionChange::Close, None) => Some(Op::CloseAll),
    }
}

/// What the session statements return for their events.
const ROW: &str = "RETURNING id, agent_id, channel_id, status, last_activity_at, closed_at";
const ROW_S: &str =
    "RETURNING s.id, s.agent_id, s.channel_id, s.status, s.last_activity_at, s.closed_at";

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    // One CTE per op kind, each with its ops' agents.
    let (mut activate, mut close, mut close_all) = (Vec::new(), Vec::new(), Vec::new());
    for o in &b.sessions {
        match op(o) {
            Some(Op::Activate(agent)) => activate.push((o, agent)),
            Some(Op::Close(agent)) => close.push((o, agent)),
            Some(Op::CloseAll) => close_all.push(o),
            None => {}
        }
    }
    if !activate.is_empty() {
        let ids = s.arrays(activate.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
        let agents = s.arrays(activate.iter().map(|o| o.1).collect())?;
        let chans = s.arrays(activate.iter().map(|o| o.0.channel_id).collect())?;
        let at = s.arrays(activate.iter().map(|o| o.0.at).collect::<Vec<Ts>>())?;
        // At most one open session per (agent, channel): the partial unique index is the
        // conflict target, so activity revives an idle session instead of opening a second one.
        s.cte(
            "sa",
            &format!(
                "INSERT INTO agent_sessions (id, agent_id, channel_id, started_at, last_activity_at, status) \
                 SELECT x.id, x.a, x.ch, x.at, x.at, 'active' \
                 FROM unnest({ids}::uuid[], {agents}::uuid[], {chans}::uuid[], {at}::timestamptz[]) AS x(id, a, ch, at) \
                 WHERE true{gate} \
                 ON CONFLICT (agent_id, channel_id) WHERE status <> 'closed' DO UPDATE SET status = 'active', \
                 last_activity_at = GREATEST(agent_sessions.last_activity_at, excluded.last_activity_at){ret}",
                ret = s.returning(ROW)
            ),
        );
        // A session turned active when the upsert inserted it or it was not active in the
        // statement's snapshot (which every CTE reads: `agent_sessions` here is the state
        // before this statement).
        pg_events(
            s,
            "1000000",
            "sa r LEFT JOIN agent_sessions o ON o.id = r.id WHERE o.id IS NULL OR o.status <> 'active'",
        );
    }
    if !close.is_empty() {
        let agents = s.arrays(close.iter().map(|o| o.1).collect())?;
        let chans = s.arrays(close.iter().map(|o| o.0.channel_id).collect())?;
        let at = s.arrays(close.iter().map(|o| o.0.at).collect::<Vec<Ts>>())?;
        s.cte(
            "sc",
            &format!(
                "UPDATE agent_sessions s SET status = 'closed', closed_at = x.at \
                 FROM unnest({agents}::uuid[], {chans}::uuid[], {at}::timestamptz[]) AS x(a, ch, at) \
                 WHERE s.agent_id = ANY(ARRAY[x.a]) AND s.channel_id = x.ch AND s.status <> 'closed'{gate}{ret}",
                ret = s.returning(ROW_S)
            ),
        );
        // Closes always change the status.
        pg_events(s, "2000000", "sc r");
    }
    if !close_all.is_empty() {
        let chans = s.arrays(close_all.iter().map(|o| o.channel_id).collect())?;
        let at = s.arrays(close_all.iter().map(|o| o.at).collect::<Vec<Ts>>())?;
        s.cte(
            "sx",
            &format!(
                "UPDATE agent_sessions s SET status = 'closed', closed_at = x.at \
                 FROM unnest({chans}::uuid[], {at}::timestamptz[]) AS x(ch, at) \
                 WHERE s.channel_id = ANY(ARRAY[x.ch]) AND s.status <> 'closed'{gate}{ret}",
                ret = s.returning(ROW_S)
            ),
        );
        pg_events(s, "2000000", "sx r");
    }
    Ok(())
}

/// When events are on: the `session.changed` events of the rows `from` selects (as `r`),
/// ordered after the drafts of the batch (`ord` from `base` up).
fn pg_events(s: &mut Statement, base: &str, from: &str) {
    if !s.events {
        return;
    }
    // RFC 3339 UTC with milliseconds, as the Rust payloads write timestamps.
    let ts = |col: &str| {
        format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
    s.event_rows.push(format!(
        "SELECT {base} + row_number() OVER () AS ord, gen_random_uuid() AS id, '{t}' AS t, \
         r.channel_id::text AS pk, jsonb_build_object('v', {PAYLOAD_VERSION}, 'session_id', r.id, \
         'agent_id', r.agent_id, 'channel_id', r.channel_id, 'status', r.status, \
         'last_activity_at', {la}, 'closed_at', {ca}) AS p FROM {from}",
        t = Topic::SessionChanged.as_str(),
        la = ts("r.last_activity_at"),
        ca = ts("r.closed_at"),
    ));
}

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    for o in &b.sessions {
        let Some(op) = op(o) else {
            continue;
        };
        let rows: Vec<SessionEventRow> = match op {
            Op::Activate(agent) => {
                // Whether the status changes is known only from the state before the upsert.
                let before: Option<SessionStatus> = match w.events {
                    Some(_) => sqlx::query_scalar(
                        "SELECT status FROM agent_sessions WHERE agent_id = $1 AND channel_id = $2 \
                             AND status <> 'closed'",
                    )
                    .bind(agent)
                    .bind(o.channel_id)
                    .fetch_optional(w.conn())
                    .await?,
                    None => None,
                };
                let row: SessionEventRow = sqlx::query_as(&format!(
                    "INSERT INTO agent_sessions (id, agent_id, channel_id, started_at, last_activity_at, status) \
                     VALUES ($1, $2, $3, $4, $4, 'active') \
                     ON CONFLICT (agent_id, channel_id) WHERE status <> 'closed' DO UPDATE SET status = 'active', \
                     last_activity_at = MAX(agent_sessions.last_activity_at, excluded.last_activity_at) {ROW}"
                ))
                .bind(SessionId::new())
                .bind(agent)
                .bind(o.channel_id)
                .bind(o.at)
                .fetch_one(w.conn())
                .await?;
                Vec::from_iter((before != Some(SessionStatus::Active)).then_some(row))
            }
            Op::Close(agent) => {
                sqlx::query_as(&format!(
                    "UPDATE agent_sessions SET status = 'closed', closed_at = $1 \
                     WHERE agent_id = $2 AND channel_id = $3 AND status <> 'closed' {ROW}"
                ))
                .bind(o.at)
                .bind(agent)
                .bind(o.channel_id)
                .fetch_all(w.conn())
                .await?
            }
            Op::CloseAll => {
                sqlx::query_as(&format!(
                    "UPDATE agent_sessions SET status = 'closed', closed_at = $1 \
                     WHERE channel_id = $2 AND status <> 'closed' {ROW}"
                ))
                .bind(o.at)
                .bind(o.channel_id)
                .fetch_all(w.conn())
                .await?
            }
        };
        if let Some(ev) = &mut w.events {
            ev.extend(rows.iter().map(session_draft));
        }
    }
    Ok(())
}
