//! `outbox_events`: the events the batch publishes, appended in its commit. Each stage drafts
//! the events of its rows in Rust and keeps only those whose write happened (a duplicate
//! message, an edit of an unknown message, a member already joined publish nothing). SQLite's
//! stages keep them as their statements report, and this stage appends them. On PostgreSQL the
//! drafts are bound as arrays here and joined to the `RETURNING` rows of the CTE each depends
//! on (its [`Witness`]), with the events other stages built in SQL added
//! (`Statement::event_rows`). Sequence numbers come from `outbox_partitions` as in
//! `db::events`. Last in the pipeline: it reads what every other stage wrote.

use crate::db::{
    Batch, StoreError,
    events::AppendEvents,
    write::{
        pg::{Drafted, Key, Statement, Witness},
        sqlite::Write,
    },
};

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, _: &Batch) -> Result<(), StoreError> {
    if !s.events {
        return Ok(());
    }
    // Each stage drafted its rows' events with the CTE that writes them, so every witness
    // named here exists.
    let drafts: Vec<Drafted> = std::mem::take(&mut s.drafts);
    let mut branches: Vec<String> = Vec::new();
    if !drafts.is_empty() {
        let tags = s.arrays(drafts.iter().map(|d| d.witness.tag).collect())?;
        let keys = s.arrays(drafts.iter().map(|d| d.key.as_str()).collect())?;
        let ats = s.arrays(drafts.iter().map(|d| d.at).collect())?;
        let ids = s.arrays(drafts.iter().map(|d| d.draft.id).collect())?;
        let topics = s.arrays(drafts.iter().map(|d| d.draft.topic.as_str()).collect())?;
        let pks = s.arrays(drafts.iter().map(|d| d.draft.partition.as_str()).collect())?;
        let payloads = s.arrays(drafts.iter().map(|d| d.draft.payload.as_str()).collect())?;
        s.cte(
            "dv",
            &format!(
                "SELECT * FROM unnest({tags}::text[], {keys}::text[], {ats}::timestamptz[], {ids}::uuid[], \
                 {topics}::text[], {pks}::text[], {payloads}::text[]) WITH ORDINALITY \
                 AS d(w, k, at, id, t, pk, p, ord)"
            ),
        );
        let mut seen: Vec<Witness> = Vec::new();
        for d in &drafts {
            if seen.contains(&d.witness) {
                continue;
            }
            seen.push(d.witness);
            branches.push(branch(d.witness));
        }
    }
    branches.append(&mut s.event_rows);
    if branches.is_empty() {
        return Ok(());
    }
    s.cte("ev", &branches.join(" UNION ALL "));
    s.cte(
        "evn",
        "SELECT ev.*, row_number() OVER (PARTITION BY pk ORDER BY ord) AS rn, \
         count(*) OVER (PARTITION BY pk) AS n FROM ev",
    );
    // Counters are bumped in key order: a fixed lock order, so concurrent statements touching
    // overlapping channels cannot deadlock; each counter's row lock is held until commit, which
    // makes sequence order commit order within a partition.
    s.cte(
        "op",
        "INSERT INTO outbox_partitions AS p (partition_key, last_seq) \
         SELECT pk, max(n) FROM evn GROUP BY pk ORDER BY pk \
         ON CONFLICT (partition_key) DO UPDATE SET last_seq = p.last_seq + excluded.last_seq \
         RETURNING partition_key, last_seq",
    );
    s.cte(
        "oe",
        "INSERT INTO outbox_events (id, topic, payload, partition_key, seq) \
         SELECT e.id, e.t, e.p, e.pk, o.last_seq - e.n + e.rn FROM evn e JOIN op o ON o.partition_key = e.pk",
    );
    Ok(())
}

/// The drafts of one witness that its CTE's rows confirm.
fn branch(w: Witness) -> String {
    let Witness { tag, cte, key } = w;
    let (join, pk, payload) = match key {
        Key::Id => (
            format!("JOIN {cte} r ON r.id::text = d.k"),
            "d.pk",
            "d.p::jsonb",
        ),
        Key::EventId => (
            format!("JOIN {cte} r ON r.matrix_event_id = d.k"),
            "r.channel_id::text",
            "d.p::jsonb || jsonb_build_object('channel_id', r.channel_id, 'message_id', r.id)",
        ),
        Key::Member(at) => (
            format!(
                "JOIN {cte} r ON r.channel_id::text || ':' || r.who::text = d.k{at}",
                at = at
                    .map(|col| format!(" AND r.{col} = d.at"))
                    .unwrap_or_default()
            ),
            "d.pk",
            "d.p::jsonb",
        ),
    };
    format!(
        "SELECT d.ord, d.id, d.t, {pk} AS pk, {payload} AS p FROM dv d {join} WHERE d.w = '{tag}'"
    )
}

/// Appends the drafts the other stages kept (`db::events` numbers them per partition).
pub(in crate::db::write) async fn sqlite(w: &mut Write, _: &Batch) -> Result<(), sqlx::Error> {
    match &w.events {
        Some(drafts) => w.tx.append_events(drafts).await,
        None => Ok(()),
    }
}
