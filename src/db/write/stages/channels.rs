//! `channels` and `bridge_rooms`: a mirrored room's channel, created or changed, and its bridge
//! state (where the name came from, power levels, when the state was last read in full).
//! Publishes `channel.created` / `channel.updated` when the channel row changed.

use crate::{
    db::{
        Batch, ChannelWrite, NewChannel, Party, StoreError,
        write::{
            pg::{Key, Statement, Witness},
            sqlite::Write,
        },
    },
    model::{
        Ts,
        topics::{ChannelChanged, Draft, PAYLOAD_VERSION, Topic, channel_partition},
    },
};

/// The insert of a channel row, both dialects: a room mirrored concurrently is created once.
const INSERT: &str = "INSERT INTO channels (id, slug, name, microdao_id, matrix_room_id, visibility, topic, \
     created_by_user_id, created_by_agent_id, created_at, updated_at)";
const INSERT_CONFLICT: &str = "ON CONFLICT (matrix_room_id) DO NOTHING";

/// The upsert of a `bridge_rooms` row, both dialects: a write that is not a full state read
/// keeps the last `state_synced_at`.
const ROOM: &str = "INSERT INTO bridge_rooms (channel_id, name_source, visibility_pinned, power_levels, \
     state_synced_at, is_direct, canonical_alias)";
const ROOM_CONFLICT: &str = "ON CONFLICT (channel_id) DO UPDATE SET name_source = excluded.name_source, \
     visibility_pinned = excluded.visibility_pinned, power_levels = excluded.power_levels, \
     state_synced_at = COALESCE(excluded.state_synced_at, bridge_rooms.state_synced_at), \
     is_direct = excluded.is_direct, canonical_alias = excluded.canonical_alias";

/// PostgreSQL: a `channel.created` event is kept when the insert (`ch`) returned the channel.
const CREATED: Witness = Witness::new("cc", "ch", Key::Id);
/// PostgreSQL: a `channel.updated` event is kept when the update (`chu`) changed the channel.
const UPDATED: Witness = Witness::new("cu", "chu", Key::Id);

/// The event of a channel created or changed.
fn changed(c: &ChannelWrite, at: Ts) -> Draft {
    let created = c.create.as_ref();
    Draft::new(
        if created.is_some() {
            Topic::ChannelCreated
        } else {
            Topic::ChannelUpdated
        },
        channel_partition(c.channel_id),
        &ChannelChanged {
            v: PAYLOAD_VERSION,
            channel_id: c.channel_id,
            matrix_room_id: c.room_id.as_str(),
            microdao_id: created.map(|c| c.microdao_id),
            slug: created.map(|c| c.slug.as_str()),
            name: c.name.as_str(),
            topic: c.topic.as_deref(),
            visibility: c.visibility,
            at,
        },
    )
}

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    let created: Vec<&ChannelWrite> = b.channels.iter().filter(|c| c.create.is_some()).collect();
    if !created.is_empty() {
        // The parts only a creation has, one per created channel.
        let new: Vec<&NewChannel> = created.iter().filter_map(|c| c.create.as_ref()).collect();
        let ids = s.arrays(created.iter().map(|c| c.channel_id).collect())?;
        let slugs = s.arrays(new.iter().map(|n| n.slug.clone()).collect())?;
        let names = s.arrays(created.iter().map(|c| c.name.clone()).collect())?;
        let daos = s.arrays(new.iter().map(|n| n.microdao_id).collect())?;
        let rooms = s.arrays(created.iter().map(|c| c.room_id.as_str()).collect())?;
        let vis = s.arrays(created.iter().map(|c| c.visibility).collect())?;
        let topics = s.arrays(created.iter().map(|c| c.topic.clone()).collect())?;
        let by_user = s.arrays(new.iter().map(|n| n.created_by?.user()).collect())?;
        let by_agent = s.arrays(new.iter().map(|n| n.created_by?.agent()).collect())?;
        s.cte(
            CREATED.cte,
            &format!(
                "{INSERT} \
                 SELECT x.id, x.slug, x.name, x.dao, x.room, x.vis, x.topic, x.bu, x.ba, now(), now() \
                 FROM unnest({ids}::uuid[], {slugs}::text[], {names}::text[], {daos}::uuid[], {rooms}::text[], \
                 {vis}::text[], {topics}::text[], {by_user}::uuid[], {by_agent}::uuid[]) \
                 AS x(id, slug, name, dao, room, vis, topic, bu, ba) \
                 WHERE true{gate} {INSERT_CONFLICT}{ret}",
                ret = s.returning("RETURNING id")
            ),
        );
    }
    // A channel that follows a room upgrade in this batch is updated by `rooms.rs` (its
    // `matrix_room_id`); one statement may change a row only once, so its name, topic and
    // visibility wait for the next change (SQLite, statement by statement, writes both).
    let updated: Vec<&ChannelWrite> = b
        .channels
        .iter()
        .filter(|c| c.create.is_none() && !b.moves.iter().any(|m| m.channel_id == c.channel_id))
        .collect();
    if !updated.is_empty() {
        let ids = s.arrays(updated.iter().map(|c| c.channel_id).collect())?;
        let names = s.arrays(updated.iter().map(|c| c.name.clone()).collect())?;
        let topics = s.arrays(updated.iter().map(|c| c.topic.clone()).collect())?;
        let vis = s.arrays(updated.iter().map(|c| c.visibility).collect())?;
        s.cte(
            UPDATED.cte,
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
                "{ROOM} \
                 SELECT x.id, x.src, x.pinned, x.power::jsonb, CASE WHEN x.synced THEN now() END, x.direct, x.alias \
                 FROM unnest({ids}::uuid[], {sources}::text[], {pinned}::bool[], {power}::text[], {synced}::bool[], \
                 {direct}::bool[], {alias}::text[]) AS x(id, src, pinned, power, synced, direct, alias) \
                 WHERE true{gate} {ROOM_CONFLICT}"
            ),
        );
    }
    if s.events {
        for c in &b.channels {
            let witness = if c.create.is_some() { CREATED } else { UPDATED };
            if witness == UPDATED && b.moves.iter().any(|m| m.channel_id == c.channel_id) {
                continue;
            }
            let draft = changed(c, s.now);
            s.draft(witness, channel_partition(c.channel_id), None, draft);
        }
    }
    Ok(())
}

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    let now = w.now;
    for c in &b.channels {
        let written = match &c.create {
            Some(create) => {
                sqlx::query(&format!(
                    "{INSERT} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) {INSERT_CONFLICT}"
                ))
                .bind(c.channel_id)
                .bind(&create.slug)
                .bind(&c.name)
                .bind(create.microdao_id)
                .bind(c.room_id.as_str())
                .bind(c.visibility)
                .bind(&c.topic)
                .bind(create.created_by.and_then(Party::user))
                .bind(create.created_by.and_then(Party::agent))
                .bind(now)
                .execute(w.conn())
                .await?
                .rows_affected()
            }
            None => {
                sqlx::query(
                    "UPDATE channels SET name = $2, topic = $3, visibility = $4, updated_at = $5 WHERE id = $1 \
                     AND (name <> $2 OR topic IS NOT $3 OR visibility <> $4)",
                )
                .bind(c.channel_id)
                .bind(&c.name)
                .bind(&c.topic)
                .bind(c.visibility)
                .bind(now)
                .execute(w.conn())
                .await?
                .rows_affected()
            }
        };
        if let Some(ev) = &mut w.events
            && written > 0
        {
            ev.push(changed(c, now));
        }
        sqlx::query(&format!(
            "{ROOM} VALUES ($1, $2, $3, $4, $5, $6, $7) {ROOM_CONFLICT}"
        ))
        .bind(c.channel_id)
        .bind(c.name_source)
        .bind(c.visibility_pinned)
        .bind(sqlx::types::Json(&c.power_levels))
        .bind(c.state_synced.then_some(now))
        .bind(c.is_direct)
        .bind(&c.alias)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}
