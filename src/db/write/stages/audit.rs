//! `audit_log`: the audit records of the decisions the batch makes (invites accepted or
//! refused), committed with them.

use crate::db::{
    Batch, StoreError,
    audit::{AppendAudit, USER_ID},
    write::{pg::Statement, sqlite::Write},
};

/// PostgreSQL: adds the stage's CTEs.
pub(in crate::db::write) fn pg(s: &mut Statement, b: &Batch) -> Result<(), StoreError> {
    if b.audits.is_empty() {
        return Ok(());
    }
    let gate = s.gate;
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
            "INSERT INTO audit_log (id, actor_type, actor_id, action, target, outcome, details, user_id) \
             SELECT x.id, x.ty, x.ac, x.act, x.tg, x.oc, x.d::jsonb, {USER_ID} \
             FROM unnest({ids}::uuid[], {types}::text[], {actors}::text[], {actions}::text[], {targets}::text[], \
             {outcomes}::text[], {details}::text[]) AS x(id, ty, ac, act, tg, oc, d) WHERE true{gate}"
        ),
    );
    Ok(())
}

/// The statement every SQLite writer of audit records shares (`db::audit`).
pub(in crate::db::write) async fn sqlite(w: &mut Write, b: &Batch) -> Result<(), sqlx::Error> {
    w.conn().append_audit(&b.audits).await
}
