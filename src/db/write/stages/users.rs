//! `users`: a row for each Matrix user the batch meets for the first time. DO NOTHING on any
//! conflict: a row the platform already wrote for this Matrix id wins.

use crate::db::{
    Batch, StoreError,
    write::{pg::Statement, sqlite::Write},
};

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    if b.users.is_empty() {
        return Ok(());
    }
    let ids = s.arrays(b.users.iter().map(|u| u.id).collect())?;
    let mxids = s.arrays(b.users.iter().map(|u| u.matrix_id.as_str()).collect())?;
    let handles = s.arrays(b.users.iter().map(|u| u.matrix_id.localpart()).collect())?;
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

/// SQLite: runs the stage's statements.
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    for u in &b.users {
        sqlx::query(
            "INSERT INTO users (id, external_id, matrix_id, handle, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(u.id)
        .bind(format!("matrix:{}", u.matrix_id))
        .bind(u.matrix_id.as_str())
        .bind(u.matrix_id.localpart())
        .bind(w.now)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}
