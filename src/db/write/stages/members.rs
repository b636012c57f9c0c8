//! `channel_members`: memberships that start, end, or both within the batch, and role changes
//! of members the batch does not otherwise write. Publishes `member.joined` / `member.left` for
//! the membership periods that actually started or ended.

use crate::{
    db::{
        Batch, MemberWrite, StoreError,
        write::{Stage, drafts, pg::Statement, sqlite::Write},
    },
    model::{Ts, topics::Topic},
};

/// The stage.
pub(in crate::db::write) const STAGE: Stage = Stage {
    pg,
    sqlite: |w, b| Box::pin(sqlite(w, b)),
};

/// The column that holds a member of this kind.
fn column(agent: bool) -> &'static str {
    if agent {
        "member_agent_id"
    } else {
        "member_user_id"
    }
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

fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    for (agents, name, leave) in [(false, "mju", "mjul"), (true, "mja", "mjal")] {
        let col = column(agents);
        let of_kind = |m: &&MemberWrite| m.party.agent().is_some() == agents;
        let joins: Vec<&MemberWrite> = b
            .members
            .iter()
            .filter(|m| m.joined_at.is_some())
            .filter(of_kind)
            .collect();
        if !joins.is_empty() {
            let ids = s.arrays(joins.iter().map(|_| uuid::Uuid::now_v7()).collect())?;
            let chans = s.arrays(joins.iter().map(|m| m.channel_id).collect())?;
            let who = s.arrays(joins.iter().map(|m| drafts::party_uuid(m.party)).collect())?;
            let roles = s.arrays(joins.iter().map(|m| m.role).collect())?;
            let joined = s.arrays(joins.iter().map(|m| m.joined_at).collect())?;
            let left = s.arrays(joins.iter().map(|m| m.left_at).collect())?;
            let (insert, conflict) = join(col);
            s.cte(
                name,
                &format!(
                    "{insert} \
                     SELECT * FROM unnest({ids}::uuid[], {chans}::uuid[], {who}::uuid[], {roles}::text[], \
                     {joined}::timestamptz[], {left}::timestamptz[]) AS x WHERE true{gate} {conflict}{ret}",
                    ret = s.returning(&format!("RETURNING channel_id, {col} AS who, joined_at, left_at"))
                ),
            );
        }
        let leaves: Vec<&MemberWrite> = b
            .members
            .iter()
            .filter(|m| m.joined_at.is_none())
            .filter(of_kind)
            .collect();
        if !leaves.is_empty() {
            let chans = s.arrays(leaves.iter().map(|m| m.channel_id).collect())?;
            let who = s.arrays(leaves.iter().map(|m| drafts::party_uuid(m.party)).collect())?;
            let at = s.arrays(leaves.iter().map(|m| m.left_at).collect())?;
            s.cte(
                leave,
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

async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    for m in &b.members {
        let col = column(m.party.agent().is_some());
        // Both id kinds are stored as hyphenated UUID text.
        let who = drafts::party_uuid(m.party).hyphenated().to_string();
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
                    ev.push(drafts::member_changed(m, Topic::MemberJoined, joined));
                }
                if let Some(left) = left.filter(|l| Some(*l) == m.left_at) {
                    ev.push(drafts::member_changed(m, Topic::MemberLeft, left));
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
                ev.push(drafts::member_changed(
                    m,
                    Topic::MemberLeft,
                    m.left_at.unwrap_or_else(Ts::now),
                ));
            }
        }
    }
    for r in &b.roles {
        sqlx::query(
            "UPDATE channel_members SET role = $3 WHERE channel_id = $1 AND member_user_id = $2 AND role <> $3",
        )
        .bind(r.channel_id)
        .bind(r.user_id)
        .bind(r.role)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}
