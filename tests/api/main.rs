//! Integration tests of the HTTP surface and the mirror, each run against SQLite and a real
//! PostgreSQL (a fresh database per test). Each test registers itself where it is defined:
//! `#[rstest]` with a `#[case::sqlite]` and a `#[case::postgres]` of its `Backend`.

mod admin;
mod agents;
mod appservice;
mod bad_ids;
mod cli;
mod crypto;
mod dead_letter;
mod delivery;
#[path = "../common/e2ee.rs"]
mod e2ee;
mod erd;
mod events;
mod failed;
mod fake_hs;
#[path = "../common/mcp.rs"]
mod fake_mcp;
mod files;
mod hardening;
mod history;
mod mcp;
mod media;
mod mirror;
#[path = "../common/model.rs"]
mod model;
mod moves;
mod nats;
mod ops;
mod outbox_scale;
mod parts;
mod plans;
mod platform;
mod process;
mod properties;
mod publish;
mod records;
mod replicas;
mod rooms;
mod runs;
mod runtimes;
mod seeds;
mod slow_clients;
mod spec;
mod subject_keys;
mod support;
mod tools;
mod tools_admin;

use support::{TestApp, ev};

pub(crate) async fn mirrored(app: &TestApp) {
    let (status, _) = app
        .put_txn(
            "setup",
            vec![
                ev::invite_bot("inv", "@alice:localhost", "Town Square"),
                ev::member("aj", "@alice:localhost", "@alice:localhost", "join"),
            ],
        )
        .await;
    assert_eq!(status, 200);
}
