//! `bridge_channel_archives` and `bridge_room_aliases`: channels archived (a tombstone without
//! a replacement, or the admin API) and channels that follow a room upgrade (the channel's
//! `matrix_room_id` moves to the replacement; the old room id stays as an alias). Publishes
//! `chat.channel.archived` and `chat.channel.moved` when the row changed.

use crate::{
    db::{
        Batch, ChannelArchive, RoomMove, StoreError,
        write::{
            pg::{Key, Statement, Witness},
            sqlite::Write,
        },
    },
    model::{
        Ts,
        topics::{ChannelArchived, ChannelMoved, Draft, PAYLOAD_VERSION, Topic, channel_partition},
    },
};

/// PostgreSQL: `chat.channel.archived` is kept when the insert (`ar`) archived the channel.
const ARCHIVED: Witness = Witness::new("ca", "ar", Key::Id);
/// PostgreSQL: `chat.channel.moved` is kept when the update (`mv`) moved the channel.
const MOVED: Witness = Witness::new("cm", "mv", Key::Id);

/// A channel is archived once: a second archive changes nothing and publishes nothing.
const ARCHIVE: &str = "INSERT INTO bridge_channel_archives (channel_id, reason, archived_at)";
const ARCHIVE_CONFLICT: &str = "ON CONFLICT (channel_id) DO NOTHING";

/// A room id is kept as an alias once (a replayed tombstone changes nothing).
const ALIAS: &str =
    "INSERT INTO bridge_room_aliases (room_id, channel_id, replaced_by, replaced_at)";
const ALIAS_CONFLICT: &str = "ON CONFLICT (room_id) DO NOTHING";

fn archived(a: &ChannelArchive, at: Ts) -> Draft {
    Draft::new(
        Topic::ChannelArchived,
        channel_partition(a.channel_id),
        &ChannelArchived {
            v: PAYLOAD_VERSION,
            channel_id: a.channel_id,
            matrix_room_id: a.room_id.as_str(),
            reason: a.reason,
            at,
        },
    )
}

fn moved(m: &RoomMove, at: Ts) -> Draft {
    Draft::new(
        Topic::ChannelMoved,
        channel_partition(m.channel_id),
        &ChannelMoved {
            v: PAYLOAD_VERSION,
            channel_id: m.channel_id,
            matrix_room_id: m.to.as_str(),
            previous_room_id: Some(m.from.as_str()),
            microdao_id: None,
            previous_microdao_id: None,
            slug: None,
            at,
        },
    )
}

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    let gate = s.gate;
    if !b.archives.is_empty() {
        let ids = s.arrays(b.archives.iter().map(|a| a.channel_id).collect())?;
        let why = s.arrays(b.archives.iter().map(|a| a.reason).collect())?;
        s.cte(
            ARCHIVED.cte,
            &format!(
                "{ARCHIVE} SELECT x.id, x.why, now() FROM unnest({ids}::uuid[], {why}::text[]) AS x(id, why) \
                 WHERE true{gate} {ARCHIVE_CONFLICT}{ret}",
                ret = s.returning("RETURNING channel_id AS id")
            ),
        );
    }
    if !b.moves.is_empty() {
        let m = &b.moves;
        let ids = s.arrays(m.iter().map(|m| m.channel_id).collect())?;
        let froms = s.arrays(m.iter().map(|m| m.from.as_str()).collect())?;
        let tos = s.arrays(m.iter().map(|m| m.to.as_str()).collect())?;
        s.cte(
            MOVED.cte,
            &format!(
                "UPDATE channels c SET matrix_room_id = x.t, updated_at = now() \
                 FROM unnest({ids}::uuid[], {froms}::text[], {tos}::text[]) AS x(id, f, t) \
                 WHERE c.id = x.id AND c.matrix_room_id = x.f{gate}{ret}",
                ret = s.returning("RETURNING c.id")
            ),
        );
        s.cte(
            "ma",
            &format!(
                "{ALIAS} SELECT x.f, x.id, x.t, now() \
                 FROM unnest({ids}::uuid[], {froms}::text[], {tos}::text[]) AS x(id, f, t) \
                 WHERE true{gate} {ALIAS_CONFLICT}"
            ),
        );
    }
    if s.events {
        for a in &b.archives {
            let draft = archived(a, s.now);
            s.draft(ARCHIVED, channel_partition(a.channel_id), None, draft);
        }
        for m in &b.moves {
            let draft = moved(m, s.now);
            s.draft(MOVED, channel_partition(m.channel_id), None, draft);
        }
    }
    Ok(())
}

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    let now = w.now;
    for a in &b.archives {
        let written = sqlx::query(&format!("{ARCHIVE} VALUES ($1, $2, $3) {ARCHIVE_CONFLICT}"))
            .bind(a.channel_id)
            .bind(a.reason)
            .bind(now)
            .execute(w.conn())
            .await?
            .rows_affected();
        if let Some(ev) = &mut w.events
            && written > 0
        {
            ev.push(archived(a, now));
        }
    }
    for m in &b.moves {
        let written = sqlx::query(
            "UPDATE channels SET matrix_room_id = $3, updated_at = $4 WHERE id = $1 AND matrix_room_id = $2",
        )
        .bind(m.channel_id)
        .bind(m.from.as_str())
        .bind(m.to.as_str())
        .bind(now)
        .execute(w.conn())
        .await?
        .rows_affected();
        sqlx::query(&format!("{ALIAS} VALUES ($1, $2, $3, $4) {ALIAS_CONFLICT}"))
            .bind(m.from.as_str())
            .bind(m.channel_id)
            .bind(m.to.as_str())
            .bind(now)
            .execute(w.conn())
            .await?;
        if let Some(ev) = &mut w.events
            && written > 0
        {
            ev.push(moved(m, now));
        }
    }
    Ok(())
}
