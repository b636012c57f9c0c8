//! `outbox_events`: the events the batch publishes, appended in its commit. Drafts are built in
//! Rust from the batch (`write::drafts`) and kept only where the write they describe happened:
//! SQLite's stages keep them as their statements report; on PostgreSQL, drafts are bound as
//! arrays and joined to the `RETURNING` rows of the CTE each depends on (a duplicate message, an
//! edit of an unknown message, a member already joined publish nothing), with the events other
//! stages built in SQL added (`Statement::event_rows`). Sequence numbers come from
//! `outbox_partitions` as in `db::events`. Last in the pipeline: it reads every other stage.

use crate::db::{
    Batch, StoreError,
    events::AppendEvents,
    write::{
        Stage,
        drafts::{Drafted, Witness, pg_drafts},
        pg::Statement,
        sqlite::Write,
    },
};

/// The stage.
pub(in crate::db::write) const STAGE: Stage = Stage {
    pg,
    sqlite: |w, b| Box::pin(sqlite(w, b)),
};

fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    if !s.events {
        return Ok(());
    }
    let drafts: Vec<Drafted> = pg_drafts(b)
        .into_iter()
        .filter(|d| s.has(cte_of(d.witness)))
        .collect();
    let mut branches: Vec<String> = Vec::new();
    if !drafts.is_empty() {
        let tags = s.arrays(drafts.iter().map(|d| d.witness.tag()).collect())?;
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

/// The CTE a witness reads.
fn cte_of(w: Witness) -> &'static str {
    match w {
        Witness::Message => "mi",
        Witness::Edit => "ed",
        Witness::Redaction => "rd",
        Witness::ChannelCreated => "ch",
        Witness::ChannelUpdated => "chu",
        Witness::Joined { agent: false } | Witness::JoinedThenLeft { agent: false } => "mju",
        Witness::Joined { agent: true } | Witness::JoinedThenLeft { agent: true } => "mja",
        Witness::Left { agent: false } => "mjul",
        Witness::Left { agent: true } => "mjal",
    }
}

/// The drafts of one witness kind that its CTE's rows confirm.
fn branch(w: Witness) -> String {
    let tag = w.tag();
    let cte = cte_of(w);
    let (join, pk, payload) = match w {
        Witness::Message | Witness::ChannelCreated | Witness::ChannelUpdated => (
            format!("JOIN {cte} r ON r.id::text = d.k"),
            "d.pk",
            "d.p::jsonb".to_owned(),
        ),
        Witness::Edit | Witness::Redaction => (
            format!("JOIN {cte} r ON r.matrix_event_id = d.k"),
            "r.channel_id::text",
            "d.p::jsonb || jsonb_build_object('channel_id', r.channel_id, 'message_id', r.id)"
                .to_owned(),
        ),
        Witness::Joined { .. } => (
            format!(
                "JOIN {cte} r ON r.channel_id::text || ':' || r.who::text = d.k AND r.joined_at = d.at"
            ),
            "d.pk",
            "d.p::jsonb".to_owned(),
        ),
        Witness::JoinedThenLeft { .. } => (
            format!(
                "JOIN {cte} r ON r.channel_id::text || ':' || r.who::text = d.k AND r.left_at = d.at"
            ),
            "d.pk",
            "d.p::jsonb".to_owned(),
        ),
        Witness::Left { .. } => (
            format!("JOIN {cte} r ON r.channel_id::text || ':' || r.who::text = d.k"),
            "d.pk",
            "d.p::jsonb".to_owned(),
        ),
    };
    format!(
        "SELECT d.ord, d.id, d.t, {pk} AS pk, {payload} AS p FROM dv d {join} WHERE d.w = '{tag}'"
    )
}

/// Appends the drafts the other stages kept (`db::events` numbers them per partition).
async fn sqlite(w: &mut Write, _: &Batch) -> Result<(), sqlx::Error> {
    match &w.events {
        Some(drafts) => w.tx.append_events(drafts).await,
        None => Ok(()),
    }
}
