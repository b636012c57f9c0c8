//! PostgreSQL: the whole batch is **one statement**, autocommitted, so a transaction costs one
//! round trip (no `BEGIN`/`COMMIT`). Each row kind is a data-modifying CTE over `unnest` of
//! bound arrays; every CTE is gated on the transaction record's insert, so a replay (the record
//! exists) changes nothing. CTEs cannot see each other's rows, which the planner accounts for:
//! ids are bound (not looked up), and no row is written twice.
//!
//! Lookups by Matrix event id are written `col = ANY(ARRAY[x.col])`: not hashable, so even a
//! generic plan cached while `messages` was small stays a nested loop over the unique index and
//! never turns into a hash join over a sequential scan as the table grows.

use sqlx::{Arguments, PgPool, postgres::PgArguments};

use crate::{
    db::{Batch, NewJob, SessionChange, StoreError},
    model::{JobKind, Ts},
};

use super::statement::Statement;

pub(in crate::db) async fn apply(
    pool: &PgPool,
    b: &Batch,
    events: bool,
) -> Result<bool, StoreError> {
    let s = statement(b, events)?;
    Ok(sqlx::query_scalar_with::<_, bool, _>(&s.sql, s.args)
        .fetch_one(pool)
        .await?)
}

/// The plan PostgreSQL chooses for the batch's statement (on the writer connections: a generic
/// plan), as `EXPLAIN` prints it. For tests that prove lookups use their indexes.
pub(in crate::db) async fn explain(
    pool: &PgPool,
    b: &Batch,
    events: bool,
) -> Result<String, StoreError> {
    let s = statement(b, events)?;
    let lines: Vec<String> = sqlx::query_scalar_with(&format!("EXPLAIN {}", s.sql), s.args)
        .fetch_all(pool)
        .await?;
    Ok(lines.join("\n"))
}

fn statement(b: &Batch, events: bool) -> Result<Statement, StoreError> {
    // Sized up front: a 50-event batch binds tens of KiB (previews, and payloads when events
    // are on), and growing the buffer by doubling copies it over and over.
    let rows = b.messages.len() + b.members.len() + b.edits.len() + b.redactions.len();
    let mut args = PgArguments::default();
    args.reserve(64, 2048 + rows * if events { 1536 } else { 512 });
    let mut s = Statement {
        sql: String::with_capacity(4096),
        args,
        params: 0,
        gate: "",
        events,
        ctes: Vec::new(),
    };
    if let Some(txn) = &b.txn {
        // Recording the transaction inside the same statement as its effects makes replay
        // detection exact: both commit or neither does. A concurrent duplicate blocks on the
        // primary key until the first commits, then sees the conflict.
        let (h, f, n) = (
            s.bind(txn.txn_hash.as_str())?,
            s.bind(txn.fingerprint.as_str())?,
            s.bind(txn.event_count)?,
        );
        s.cte(
            "txn",
            &format!(
                "INSERT INTO bridge_transactions (txn_hash, fingerprint, event_count) \
                 VALUES ({h}, {f}, {n}) ON CONFLICT DO NOTHING RETURNING 1"
            ),
        );
        s.gate = " AND EXISTS (SELECT 1 FROM txn)";
    }
    users(&mut s, b)?;
    channels(&mut s, b)?;
    members(&mut s, b)?;
    messages(&mut s, b)?;
    sessions(&mut s, b)?;
    work(&mut s, b)?;
    if events {
        super::pg_events::events(&mut s, b)?;
    }
    let main = if b.txn.is_some() {
        " SELECT EXISTS (SELECT 1 FROM txn)"
    } else {
        " SELECT true"
    };
    s.sql.push_str(main);
    Ok(s)
}

fn users(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    if b.users.is_empty() {
        return Ok(());
    }
    let ids = s.arrays(b.users.iter().map(|u| u.id).collect())?;
    let mxids = s.arrays(b.users.iter().map(|u| u.matrix_id.as_str()).collect())?;
    let handles = s.arrays(b.users.iter().map(|u| u.matrix_id.localpart()).collect())?;
    // DO NOTHING on any conflict: a row the platform already wrote for this Matrix id wins.
    let gate = s.gate;
    s.cte(
        "u",
        &format!(
            "INSERT INTO users (id, external_id, matrix_id, handle) \
             SELECT x.id, 'matrix:' || x.mxid, x.mxid, x.handle \
             FROM unnest({ids}::uuid[], {mxids}::text[], {handles}::text[]) AS x(id, mxid, handle) \
             WHERE true{gate} ON CONFLICT DO NOTHING"
        ),
    );
    Ok(())
}

fn channels(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    let created: Vec<_> = b.channels.iter().filter(|c| c.create.is_some()).collect();
    if !created.is_empty() {
        let ids = s.arrays(created.iter().map(|c| c.channel_id).collect())?;
        let slugs = s.arrays(
            created
                .iter()
                .filter_map(|c| c.create.as_ref().map(|n| n.slug.clone()))
                .collect(),
        )?;
        let names = s.arrays(created.iter().map(|c| c.name.clone()).collect())?;
        let daos = s.arrays(
            created
                .iter()
                .filter_map(|c| c.create.as_ref().map(|n| n.microdao_id))
                .collect(),
        )?;
        let rooms = s.arrays(created.iter().map(|c| c.room_id.as_str()).collect())?;
        let vis = s.arrays(created.iter().map(|c| c.visibility).collect())?;
        let topics = s.arrays(created.iter().map(|c| c.topic.clone()).collect())?;
        let by_user = s.arrays(
            created
                .iter()
                .map(|c| c.create.as_ref().and_then(|n| n.created_by?.user()))
                .collect(),
        )?;
        let by_agent = s.arrays(
            created
                .iter()
                .map(|c| c.create.as_ref().and_then(|n| n.created_by?.agent()))
                .collect(),
        )?;
        s.cte(
            "ch",
            &format!(
                "INSERT INTO channels (id, slug, name, microdao_id, matrix_room_id, visibility, topic, \
                 created_by_user_id, created_by_agent_id, created_at, updated_at) \
                 SELECT x.id, x.slug, x.name, x.dao, x.room, x.vis, x.topic, x.bu, x.ba, now(), now() \
                 FROM unnest({ids}::uuid[], {slugs}::text[], {names}::text[], {daos}::uuid[], {rooms}::text[], \
                 {vis}::text[], {topics}::text[], {by_user}::uuid[], {by_agent}::uuid[]) \
                 AS x(id, slug, name, dao, room, vis, topic, bu, ba) \
                 WHERE true{gate} ON CONFLICT (matrix_room_id) DO NOTHING{ret}",
                ret = s.returning("RETURNING id")
            ),
        );
    }
    let updated: Vec<_> = b.channels.iter().filter(|c| c.create.is_none()).collect();
    if !updated.is_empty() {
        let ids = s.arrays(updated.iter().map(|c| c.channel_id).collect())?;
        let names = s.arrays(updated.iter().map(|c| c.name.clone()).collect())?;
        let topics = s.arrays(updated.iter().map(|c| c.topic.clone()).collect())?;
        let vis = s.arrays(updated.iter().map(|c| c.visibility).collect())?;
        s.cte(
            "chu",
            &format!(
                "UPDATE channels c SET name = x.name, topic = x.topic, visibility = x.vis, updated_at = now() \
                 FROM unnest({ids}::uuid[], {names}::text[], {topics}::text[], {vis}::text[]) AS x(id, name, topic, vis) \
                 WHERE c.id = ANY(ARRAY[x.id]) \
                 AND (c.name <> x.name OR c.topic IS DISTINCT FROM x.topic OR c.visibility <> x.vis){gate}{ret}",
                ret = s.returning("RETURNING c.id")
            ),
        );
    }
    if !b.channels.is_empty() {
        let c = &b.channels;
        let ids = s.arrays(c.iter().map(|c| c.channel_id).collect())?;
        let sources = s.arrays(c.iter().map(|c| c.name_source).collect())?;
        let pinned = s.arrays(c.iter().map(|c| c.visibility_pinned).collect())?;
        let power = s.arrays(
            c.iter()
                .map(|c| serde_json::to_string(&c.power_levels).unwrap_or_else(|_| "{}".into()))
                .collect(),
        )?;
        let synced = s.arrays(c.iter().map(|c| c.state_synced).collect())?;
        let direct = s.arrays(c.iter().map(|c| c.is_direct).collect())?;
        let alias = s.arrays(c.iter().map(|c| c.alias.clone()).collect())?;
        s.cte(
            "br",
            &format!(
                "INSERT INTO bridge_rooms (channel_id, name_source, visibility_pinned, power_levels, \
                 state_synced_at, is_direct, canonical_alias) \
                 SELECT x.id, x.src, x.pinned, x.power::jsonb, CASE WHEN x.synced THEN now() END, x.direct, x.alias \
                 FROM unnest({ids}::uuid[], {sources}::text[], {pinned}::bool[], {power}::text[], {synced}::bool[], \
                 {direct}::bool[], {alias}::text[]) AS x(id, src, pinned, power, synced, direct, alias) \
                 WHERE true{gate} \
                 ON CONFLICT (channel_id) DO UPDATE SET name_source = excluded.name_source, \
                 visibility_pinned = excluded.visibility_pinned, power_levels = excluded.power_levels, \
                 state_synced_at = COALESCE(excluded.state_synced_at, bridge_rooms.state_synced_at), \
                 is_direct = excluded.is_direct, canonical_alias = excluded.canonical_alias"
            ),
        );
    }
    Ok(())
}

fn members(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    for (agents, col, name) in [
        (false, "member_user_id", "mju"),
        (true, "member_agent_id", "mja"),
    ] {
        let joins: Vec<_> = b
            .members
            .iter()
            .filter(|m| m.joined_at.is_some() && m.party.agent().is_some() == agents)
            .collect();
        if !joins.is_empty() {
            let ids = s.arrays(joins.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
            let chans = s.arrays(joins.iter().map(|m| m.channel_id).collect())?;
            let who = s.arrays(joins.iter().map(|m| party_uuid(m.party)).collect())?;
            let roles = s.arrays(joins.iter().map(|m| m.role).collect())?;
            let joined = s.arrays(joins.iter().map(|m| m.joined_at).collect())?;
            let left = s.arrays(joins.iter().map(|m| m.left_at).collect())?;
            // A rejoin starts a new membership period; an active member keeps its join time.
            s.cte(
                name,
                &format!(
                    "INSERT INTO channel_members (id, channel_id, {col}, role, joined_at, left_at) \
                     SELECT * FROM unnest({ids}::uuid[], {chans}::uuid[], {who}::uuid[], {roles}::text[], \
                     {joined}::timestamptz[], {left}::timestamptz[]) AS x WHERE true{gate} \
                     ON CONFLICT (channel_id, {col}) DO UPDATE SET role = excluded.role, \
                     joined_at = CASE WHEN channel_members.left_at IS NULL THEN channel_members.joined_at \
                     ELSE excluded.joined_at END, left_at = excluded.left_at{ret}",
                    ret = s.returning(&format!("RETURNING channel_id, {col} AS who, joined_at, left_at"))
                ),
            );
        }
        let leaves: Vec<_> = b
            .members
            .iter()
            .filter(|m| m.joined_at.is_none() && m.party.agent().is_some() == agents)
            .collect();
        if !leaves.is_empty() {
            let chans = s.arrays(leaves.iter().map(|m| m.channel_id).collect())?;
            let who = s.arrays(leaves.iter().map(|m| party_uuid(m.party)).collect())?;
            let at = s.arrays(leaves.iter().map(|m| m.left_at).collect())?;
            s.cte(
                if agents { "mjal" } else { "mjul" },
                &format!(
                    "UPDATE channel_members cm SET left_at = x.at \
                     FROM unnest({chans}::uuid[], {who}::uuid[], {at}::timestamptz[]) AS x(ch, who, at) \
                     WHERE cm.{col} = ANY(ARRAY[x.who]) AND cm.channel_id = x.ch AND cm.left_at IS NULL{gate}{ret}",
                    ret = s.returning(&format!("RETURNING cm.channel_id, cm.{col} AS who"))
                ),
            );
        }
    }
    if !b.roles.is_empty() {
        let chans = s.arrays(b.roles.iter().map(|r| r.channel_id).collect())?;
        let users = s.arrays(b.roles.iter().map(|r| r.user_id).collect())?;
        let roles = s.arrays(b.roles.iter().map(|r| r.role).collect())?;
        s.cte(
            "ro",
            &format!(
                "UPDATE channel_members cm SET role = x.role \
                 FROM unnest({chans}::uuid[], {users}::uuid[], {roles}::text[]) AS x(ch, u, role) \
                 WHERE cm.member_user_id = ANY(ARRAY[x.u]) AND cm.channel_id = x.ch AND cm.role <> x.role{gate}"
            ),
        );
    }
    Ok(())
}

fn messages(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    if !b.messages.is_empty() {
        let m = &b.messages;
        let ids = s.arrays(m.iter().map(|m| m.id).collect())?;
        let chans = s.arrays(m.iter().map(|m| m.channel_id).collect())?;
        let events = s.arrays(m.iter().map(|m| m.event_id.as_str()).collect())?;
        let users = s.arrays(m.iter().map(|m| m.sender.user()).collect())?;
        let agents = s.arrays(m.iter().map(|m| m.sender.agent()).collect())?;
        let previews = s.arrays(m.iter().map(|m| m.preview.as_str()).collect())?;
        let at = s.arrays(m.iter().map(|m| m.at).collect())?;
        let threads = s.arrays(
            m.iter()
                .map(|m| m.thread_root.as_ref().map(|t| t.as_str()))
                .collect(),
        )?;
        let edited = s.arrays(m.iter().map(|m| m.edited_at).collect())?;
        let redacted = s.arrays(m.iter().map(|m| m.redacted_at).collect())?;
        // The event id's unique index makes a duplicate (the same event in another txnId, or
        // the echo of a puppet send mirrored at delivery) a no-op.
        s.cte(
            "mi",
            &format!(
                "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_agent_id, \
                 sender_type, content_preview, created_at, thread_root_event_id, edited_at, redacted_at) \
                 SELECT x.id, x.ch, x.ev, x.u, x.a, CASE WHEN x.a IS NULL THEN 'human' ELSE 'agent' END, \
                 x.p, x.at, x.th, x.ed, x.rd \
                 FROM unnest({ids}::uuid[], {chans}::uuid[], {events}::text[], {users}::uuid[], {agents}::uuid[], \
                 {previews}::text[], {at}::timestamptz[], {threads}::text[], {edited}::timestamptz[], \
                 {redacted}::timestamptz[]) AS x(id, ch, ev, u, a, p, at, th, ed, rd) \
                 WHERE true{gate} ON CONFLICT (matrix_event_id) DO NOTHING{ret}",
                ret = s.returning("RETURNING id")
            ),
        );
    }
    if !b.edits.is_empty() {
        let e = &b.edits;
        let targets = s.arrays(e.iter().map(|e| e.target.as_str()).collect())?;
        let previews = s.arrays(e.iter().map(|e| e.preview.as_str()).collect())?;
        let at = s.arrays(e.iter().map(|e| e.at).collect())?;
        let users = s.arrays(e.iter().map(|e| e.sender.user()).collect())?;
        let agents = s.arrays(e.iter().map(|e| e.sender.agent()).collect())?;
        // Only the original sender may edit, a redacted message stays redacted, and an older
        // edit never overwrites a newer one.
        s.cte(
            "ed",
            &format!(
                "UPDATE messages m SET content_preview = x.p, edited_at = x.at \
                 FROM unnest({targets}::text[], {previews}::text[], {at}::timestamptz[], {users}::uuid[], \
                 {agents}::uuid[]) AS x(t, p, at, u, a) \
                 WHERE m.matrix_event_id = ANY(ARRAY[x.t]) AND m.redacted_at IS NULL \
                 AND (m.edited_at IS NULL OR m.edited_at <= x.at) \
                 AND (m.sender_user_id = x.u OR m.sender_agent_id = x.a){gate}{ret}",
                ret = s.returning("RETURNING m.id, m.channel_id, m.matrix_event_id")
            ),
        );
    }
    if !b.redactions.is_empty() {
        let r = &b.redactions;
        let targets = s.arrays(r.iter().map(|r| r.target.as_str()).collect())?;
        let at = s.arrays(r.iter().map(|r| r.at).collect())?;
        s.cte(
            "rd",
            &format!(
                "UPDATE messages m SET content_preview = '', redacted_at = x.at \
                 FROM unnest({targets}::text[], {at}::timestamptz[]) AS x(t, at) \
                 WHERE m.matrix_event_id = ANY(ARRAY[x.t]) AND m.redacted_at IS NULL{gate}{ret}",
                ret = s.returning("RETURNING m.id, m.channel_id, m.matrix_event_id")
            ),
        );
        // A redacted question is not answered: its candidate and triggers are cancelled, and a
        // run still queued with nothing else to answer is cancelled with them (CTEs share one
        // snapshot, hence the explicit exclusion of the triggers cancelled here).
        s.cte(
            "tc",
            &format!(
                "UPDATE bridge_triggers t SET status = 'cancelled' \
                 WHERE t.event_id = ANY({targets}::text[]) AND t.status IN ('candidate', 'pending', 'taken') \
                 AND (t.run_id IS NULL OR t.run_id IN (SELECT id FROM agent_runs WHERE status = 'queued')){gate} \
                 RETURNING t.run_id"
            ),
        );
        s.cte(
            "rc",
            &format!(
                "UPDATE agent_runs r SET status = 'cancelled', error = 'its trigger was redacted', finished_at = now() \
                 WHERE r.id IN (SELECT run_id FROM tc WHERE run_id IS NOT NULL) AND r.status = 'queued' \
                 AND NOT EXISTS (SELECT 1 FROM bridge_triggers o WHERE o.run_id = r.id \
                 AND o.status <> 'cancelled' AND o.event_id <> ALL({targets}::text[]))"
            ),
        );
    }
    Ok(())
}

/// What the session CTEs return for their events.
const SESSION_ROW: &str = "RETURNING id, agent_id, channel_id, status, last_activity_at, closed_at";
const SESSION_ROW_S: &str =
    "RETURNING s.id, s.agent_id, s.channel_id, s.status, s.last_activity_at, s.closed_at";

fn sessions(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    let activate: Vec<_> = b
        .sessions
        .iter()
        .filter(|o| o.change == SessionChange::Activate && o.agent.is_some())
        .collect();
    if !activate.is_empty() {
        let ids = s.arrays(activate.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
        let agents = s.arrays(activate.iter().filter_map(|o| o.agent).collect())?;
        let chans = s.arrays(activate.iter().map(|o| o.channel_id).collect())?;
        let at = s.arrays(activate.iter().map(|o| o.at).collect::<Vec<Ts>>())?;
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
                ret = s.returning(SESSION_ROW)
            ),
        );
    }
    let close: Vec<_> = b
        .sessions
        .iter()
        .filter(|o| o.change == SessionChange::Close && o.agent.is_some())
        .collect();
    if !close.is_empty() {
        let agents = s.arrays(close.iter().filter_map(|o| o.agent).collect())?;
        let chans = s.arrays(close.iter().map(|o| o.channel_id).collect())?;
        let at = s.arrays(close.iter().map(|o| o.at).collect::<Vec<Ts>>())?;
        s.cte(
            "sc",
            &format!(
                "UPDATE agent_sessions s SET status = 'closed', closed_at = x.at \
                 FROM unnest({agents}::uuid[], {chans}::uuid[], {at}::timestamptz[]) AS x(a, ch, at) \
                 WHERE s.agent_id = ANY(ARRAY[x.a]) AND s.channel_id = x.ch AND s.status <> 'closed'{gate}{ret}",
                ret = s.returning(SESSION_ROW_S)
            ),
        );
    }
    let close_all: Vec<_> = b.sessions.iter().filter(|o| o.agent.is_none()).collect();
    if !close_all.is_empty() {
        let chans = s.arrays(close_all.iter().map(|o| o.channel_id).collect())?;
        let at = s.arrays(close_all.iter().map(|o| o.at).collect::<Vec<Ts>>())?;
        s.cte(
            "sx",
            &format!(
                "UPDATE agent_sessions s SET status = 'closed', closed_at = x.at \
                 FROM unnest({chans}::uuid[], {at}::timestamptz[]) AS x(ch, at) \
                 WHERE s.channel_id = ANY(ARRAY[x.ch]) AND s.status <> 'closed'{gate}{ret}",
                ret = s.returning(SESSION_ROW_S)
            ),
        );
    }
    Ok(())
}

/// Durable work: follow-up jobs, trigger candidates, and the outbox item this batch mirrors.
fn work(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    let (commands, jobs): (Vec<&NewJob>, Vec<&NewJob>) =
        b.jobs.iter().partition(|j| j.kind == JobKind::Command);
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
        // One job per command event: a replayed or duplicated event adds none.
        s.cte(
            "jc",
            &format!(
                "INSERT INTO bridge_jobs (id, kind, room_id, user_id, event_id, body, status) \
                 SELECT x.id, 'command', x.r, x.u, x.ev, x.b, 'pending' \
                 FROM unnest({ids}::uuid[], {rooms}::text[], {users}::text[], {events}::text[], {bodies}::text[]) \
                 AS x(id, r, u, ev, b) WHERE true{gate} \
                 ON CONFLICT (event_id) WHERE kind = 'command' DO NOTHING"
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
                 AS x(id, k, r, u, why) WHERE true{gate} \
                 ON CONFLICT (kind, room_id, user_id) WHERE status = 'pending' AND kind <> 'command' DO NOTHING"
            ),
        );
    }
    if !b.candidates.is_empty() {
        let c = &b.candidates;
        let ids = s.arrays(c.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
        let chans = s.arrays(c.iter().map(|c| c.channel_id).collect())?;
        let rooms = s.arrays(c.iter().map(|c| c.room_id.as_str()).collect())?;
        let events = s.arrays(c.iter().map(|c| c.event_id.as_str()).collect())?;
        let payloads = s.arrays(c.iter().map(|c| super::payload_json(&c.payload)).collect())?;
        let at = s.arrays(c.iter().map(|c| c.at).collect::<Vec<Ts>>())?;
        s.cte(
            "cd",
            &format!(
                "INSERT INTO bridge_triggers (id, channel_id, room_id, event_id, status, payload, at) \
                 SELECT x.id, x.ch, x.r, x.ev, 'candidate', x.p::jsonb, x.at \
                 FROM unnest({ids}::uuid[], {chans}::uuid[], {rooms}::text[], {events}::text[], {payloads}::text[], \
                 {at}::timestamptz[]) AS x(id, ch, r, ev, p, at) WHERE true{gate} \
                 ON CONFLICT (event_id) WHERE agent_id IS NULL DO NOTHING"
            ),
        );
    }
    if !b.audits.is_empty() {
        let a = &b.audits;
        let ids = s.arrays(a.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
        let types = s.arrays(a.iter().map(|a| a.actor_type).collect())?;
        let actors = s.arrays(a.iter().map(|a| a.actor_id.clone()).collect())?;
        let actions = s.arrays(a.iter().map(|a| a.action).collect())?;
        let targets = s.arrays(a.iter().map(|a| a.target.clone()).collect())?;
        let outcomes = s.arrays(a.iter().map(|a| a.outcome).collect())?;
        let details = s.arrays(a.iter().map(|a| a.details.to_string()).collect())?;
        s.cte(
            "au",
            &format!(
                "INSERT INTO audit_log (id, actor_type, actor_id, action, target, outcome, details) \
                 SELECT x.id, x.ty, x.ac, x.act, x.tg, x.oc, x.d::jsonb \
                 FROM unnest({ids}::uuid[], {types}::text[], {actors}::text[], {actions}::text[], {targets}::text[], \
                 {outcomes}::text[], {details}::text[]) AS x(id, ty, ac, act, tg, oc, d) WHERE true{gate}"
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

fn party_uuid(p: crate::db::Party) -> uuid::Uuid {
    match p {
        crate::db::Party::User(u) => u.0,
        crate::db::Party::Agent(a) => a.0,
    }
}
