//! Events out: what the bridge tells other DAARION services. Every change is appended to the
//! transactional outbox (`outbox_events`, see `db::events`) by the same database transaction that
//! makes it; the [`publisher`] delivers the rows to NATS JetStream in per-partition order, at
//! least once, deduplicated by JetStream on the event id; [`refusal`] tells the failures that
//! dead-letter an event from those that only make it wait.

pub mod link;
pub mod publisher;
pub mod refusal;
