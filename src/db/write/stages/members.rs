//! `channel_members`: memberships that start, end, or both within the batch, and role changes
//! of members the batch does not otherwise write. Publishes `member.joined` / `member.left` for
//! the membership periods that actually started or ended, and `member.role_changed` for the
//! roles that actually changed.

use crate::{
    db::{
        Batch, MemberWrite, Party, RoleChange, StoreError,
        write::{
            pg::{Key, Statement, Witness},
            sqlite::Write,
        },
    },
    model::{
        Ts,
        ids::ChannelId,
        topics::{Draft, MemberChanged, PAYLOAD_VERSION, Topic, channel_partition},
    },
};

/// Where members of one kind (people, agents) are written, and on PostgreSQL which CTE
/// confirms each of their events.
struct Kind {
    /// The column that holds the member.
    col: &'static str,
    /// A join started a membership period at the draft's time (the join upsert, whose CTE this
    /// names, returned that `joined_at`).
    joined: Witness,
    /// A join followed by a leave in the batch stored that `left_at`.
    joined_then_left: Witness,
    /// A leave ended a membership (the leave update, whose CTE this names, returned the row).
    left: Witness,
}

/// People.
const PEOPLE: Kind = Kind {
    col: "member_user_id",
    joined: Witness::new("ju", "mju", Key::Member(Some("joined_at"))),
    joined_then_left: Witness::new("jlu", "mju", Key::Member(Some("left_at"))),
    left: Witness::new("lu", "mjul", Key::Member(None)),
};

/// Agents.
const AGENTS: Kind = Kind {
    col: "member_agent_id",
    joined: Witness::new("ja", "mja", Key::Member(Some("joined_at"))),
    joined_then_left: Witness::new("jla", "mja", Key::Member(Some("left_at"))),
    left: Witness::new("la", "mjal", Key::Member(None)),
};

/// A role change of a person the batch does not otherwise write (the role update, whose CTE
/// this names, returned the row: the role really changed).
const ROLE_CHANGED: Witness = Witness::new("rc", "ro", Key::Member(None));

/// The kind of a member.
fn kind(party: Party) -> &'static Kind {
    if party.agent().is_some() {
        &AGENTS
    } else {
        &PEOPLE
    }
}

/// The id of a person or an agent, as `channel_members` stores either.
fn party_uuid(party: Party) -> uuid::Uuid {
    match party {
        Party::User(u) => u.0,
        Party::Agent(a) => a.0,
    }
}

/// How PostgreSQL's event rows name a membership: `channel:member`.
fn key(channel: ChannelId, party: Party) -> String {
    format!(
        "{}:{}",
        channel.0.hyphenated(),
        party_uuid(party).hyphenated()
    )
}

/// The event of a member who joined or left at `at`.
fn changed(m: &MemberWrite, topic: Topic, at: Ts) -> Draft {
    Draft::new(
        topic,
        channel_partition(m.channel_id),
        &MemberChanged {
            v: PAYLOAD_VERSION,
            channel_id: m.channel_id,
            member_type: match m.party {
                Party::User(_) => "user",
                Party::Agent(_) => "agent",
            },
            user_id: m.party.user(),
            agent_id: m.party.agent(),
            role: m.role,
            at,
        },
    )
}

/// The event of a person whose role changed.
fn role_changed(r: &RoleChange, at: Ts) -> Draft {
    Draft::new(
        Topic::MemberRoleChanged,
        channel_partition(r.channel_id),
        &MemberChanged {
            v: PAYLOAD_VERSION,
            channel_id: r.channel_id,
            member_type: "user",
            user_id: Some(r.user_id),
            agent_id: None,
            role: r.role,
            at,
        },
    )
}

/// A join, both dialects: `INSERT INTO channel_members (…)` and, after the rows, the conflict
/// clause. A rejoin starts a new membership period; an active member keeps its join time.
fn join(col: &str) -> (String, String) {
    (
        format!("INSERT INTO channel_members (id, channel_id, {col}, role, joined_at, left_at)"),
        format!(
            "ON CONFLICT (channel_id, {col}) DO UPDATE SET role = excluded.role, \
             joined_at = CASE WHEN channel_members.left_at IS NULL THEN channel_members.joined_at \
             ELSE excluded.joined_at END, left_at = excluded.left_at"
        ),
    )
}

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    for (agents, k) in [(false, &PEOPLE), (true, &AGENTS)] {
        let col = k.col;
        // A join (perhaps followed by a leave) upserts the row; a leave only ends a period.
        let (joins, leaves): (Vec<&MemberWrite>, Vec<&MemberWrite>) = b
            .members
            .iter()
            .filter(|m| m.party.agent().is_some() == agents)
            .partition(|m| m.joined_at.is_some());
        if !joins.is_empty() {
            let ids = s.arrays(joins.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
            let chans = s.arrays(joins.iter().map(|m| m.channel_id).collect())?;
            let who = s.arrays(joins.iter().map(|m| party_uuid(m.party)).collect())?;
            let roles = s.arrays(joins.iter().map(|m| m.role).collect())?;
            let joined = s.arrays(joins.iter().map(|m| m.joined_at).collect())?;
            let left = s.arrays(joins.iter().map(|m| m.left_at).collect())?;
            let (insert, conflict) = join(col);
            s.cte(
                k.joined.cte,
                &format!(
                    "{insert} \
                     SELECT * FROM unnest({ids}::uuid[], {chans}::uuid[], {who}::uuid[], {roles}::text[], \
                     {joined}::timestamptz[], {left}::timestamptz[]) AS x WHERE true{gate} {conflict}{ret}",
                    ret = s.returning(&format!("RETURNING channel_id, {col} AS who, joined_at, left_at"))
                ),
            );
        }
        if !leaves.is_empty() {
            let chans = s.arrays(leaves.iter().map(|m| m.channel_id).collect())?;
            let who = s.arrays(leaves.iter().map(|m| party_uuid(m.party)).collect())?;
            let at = s.arrays(leaves.iter().map(|m| m.left_at).collect())?;
            s.cte(
                k.left.cte,
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
                 WHERE cm.member_user_id = ANY(ARRAY[x.u]) AND cm.channel_id = x.ch AND cm.role <> x.role{gate}{ret}",
                ret = s.returning("RETURNING cm.channel_id, cm.member_user_id AS who")
            ),
        );
        if s.events {
            for r in &b.roles {
                let key = key(r.channel_id, Party::User(r.user_id));
                let draft = role_changed(r, s.now);
                s.draft(ROLE_CHANGED, key, None, draft);
            }
        }
    }
    if s.events {
        // In the batch's order, whatever CTE writes the member.
        for m in &b.members {
            let (k, key) = (kind(m.party), key(m.channel_id, m.party));
            match (m.joined_at, m.left_at) {
                (Some(joined), left) => {
                    let draft = changed(m, Topic::MemberJoined, joined);
                    s.draft(k.joined, key.clone(), Some(joined), draft);
                    if let Some(left) = left {
                        let draft = changed(m, Topic::MemberLeft, left);
                        s.draft(k.joined_then_left, key, Some(left), draft);
                    }
                }
                (None, left) => {
                    let draft = changed(m, Topic::MemberLeft, left.unwrap_or(s.now));
                    s.draft(k.left, key, None, draft);
                }
            }
        }
    }
    Ok(())
}

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    for m in &b.members {
        let col = kind(m.party).col;
        // Both id kinds are stored as hyphenated UUID text.
        let who = party_uuid(m.party).hyphenated().to_string();
        if m.joined_at.is_some() {
            let (insert, conflict) = join(col);
            let row = sqlx::query(&format!(
                "{insert} VALUES ($1, $2, $3, $4, $5, $6) {conflict} RETURNING joined_at, left_at"
            ))
            .bind(uuid::Uuid::now_v7().hyphenated().to_string())
            .bind(m.channel_id)
            .bind(&who)
            .bind(m.role)
            .bind(m.joined_at)
            .bind(m.left_at)
            .fetch_one(w.conn())
            .await?;
            if let Some(ev) = &mut w.events {
                let (joined, left): (Ts, Option<Ts>) =
                    (sqlx::Row::try_get(&row, 0)?, sqlx::Row::try_get(&row, 1)?);
                // A new membership period starts at this join; an active member's join time
                // is kept, and then nothing happened.
                if Some(joined) == m.joined_at {
                    ev.push(changed(m, Topic::MemberJoined, joined));
                }
                if let Some(left) = left.filter(|l| Some(*l) == m.left_at) {
                    ev.push(changed(m, Topic::MemberLeft, left));
                }
            }
        } else {
            let left = sqlx::query(&format!(
                "UPDATE channel_members SET left_at = $3 WHERE channel_id = $1 AND {col} = $2 AND left_at IS NULL"
            ))
            .bind(m.channel_id)
            .bind(&who)
            .bind(m.left_at)
            .execute(w.conn())
            .await?
            .rows_affected();
            if let Some(ev) = &mut w.events
                && left > 0
            {
                ev.push(changed(
                    m,
                    Topic::MemberLeft,
                    m.left_at.unwrap_or_else(Ts::now),
                ));
            }
        }
    }
    for r in &b.roles {
        let changed = sqlx::query(
            "UPDATE channel_members SET role = $3 WHERE channel_id = $1 AND member_user_id = $2 AND role <> $3",
        )
        .bind(r.channel_id)
        .bind(r.user_id)
        .bind(r.role)
        .execute(w.conn())
        .await?
        .rows_affected();
        if let Some(ev) = &mut w.events
            && changed > 0
        {
            ev.push(role_changed(r, w.now));
        }
    }
    Ok(())
}
