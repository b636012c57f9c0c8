//! Integration tests of the HTTP surface and the mirror, each run against SQLite and a real
//! PostgreSQL (a fresh database per test).

mod admin;
mod agents;
mod appservice;
mod cli;
mod crypto;
mod delivery;
#[path = "../common/e2ee.rs"]
mod e2ee;
mod erd;
mod events;
mod fake_hs;
mod hardening;
mod mirror;
#[path = "../common/model.rs"]
mod model;
mod nats;
mod ops;
mod outbox_scale;
mod plans;
mod platform;
mod process;
mod properties;
mod publish;
mod records;
mod runs;
mod runtimes;
mod slow_clients;
mod spec;
mod support;

use admin::*;
use agents::*;
use appservice::*;
use cli::*;
use crypto::*;
use delivery::*;
use erd::*;
use events::*;
use hardening::*;
use mirror::*;
use ops::*;
use outbox_scale::*;
use plans::*;
use platform::*;
use process::*;
use properties::*;
use publish::*;
use records::*;
use runs::*;
use runtimes::*;
use slow_clients::*;
use spec::*;

use support::{Backend, TestApp, ev};

/// Runs each listed test once per backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

both_backends!(
    encrypted_events_decrypt_whatever_the_key_order,
    hostile_encrypted_input_never_fails_a_transaction,
    encrypted_events_wait_then_give_up,
    a_question_whose_key_comes_late_is_answered,
    pending_events_are_bounded_in_count,
    with_a_bot_device_every_mirrored_room_waits_for_keys,
    bot_invite_mirrors_room_and_joins,
    replayed_txn_changes_nothing_even_after_restart,
    same_event_in_another_txn_is_not_doubled,
    auth_is_enforced,
    malformed_bodies_get_matrix_errors,
    malformed_event_is_skipped_not_fatal,
    oversize_body_is_413,
    unknown_routes_and_methods,
    legacy_routes_work,
    queries_ping_and_thirdparty,
    daarion_channel_state_places_room,
    unmirrored_rooms_are_ignored,
    platform_user_rows_are_reused,
    membership_lifecycle_and_roles,
    previews_by_message_kind,
    edits_and_redactions,
    name_topic_and_visibility_follow_state,
    agent_messages_and_membership,
    invites_refused_with_reason,
    agents_created_elsewhere_are_found,
    database_down_is_5xx_and_nothing_is_lost,
    health_and_metrics,
    migrations_are_reversible,
    sessions_follow_activity,
    per_agent_idle_override,
    keys_and_capabilities,
    membership_and_input_rules,
    send_edit_react_redact,
    idempotency_and_ordering,
    homeserver_429_and_outage,
    outbox_survives_restart,
    failed_send_is_recorded,
    rate_limited_per_agent,
    openapi_documents_every_route,
    echo_answers_mentions_and_dms,
    settings_debounce_and_cancel,
    queued_run_cancelled_by_redaction,
    openai_streams_into_one_edited_message,
    openai_plain_and_failures,
    webhook_runtime,
    agent_chain_stops_at_the_limit,
    command_line,
    puppet_avatar_is_uploaded_once,
    thread_participation_addresses_the_agent,
    conforms_to_the_appservice_spec,
    edits_trigger_only_when_configured,
    renamed_agents_get_their_new_name,
    nul_anywhere_never_stalls_mirroring,
    an_event_the_database_refuses_is_skipped,
    long_and_odd_txn_ids,
    invalid_utf8_is_decoded_lossily,
    removing_the_name_falls_back,
    previews_are_bounded,
    agent_api_refuses_bad_input,
    failed_authentication_is_limited_per_address,
    old_records_are_pruned,
    follow_ups_are_durable,
    slow_and_idle_clients_are_cut_off,
    the_connection_limit_holds,
    idle_connections_do_not_starve_the_homeserver,
    negative_content_length_is_refused,
    sigterm_with_a_half_open_connection_exits_cleanly,
    sigkill_mid_load_loses_and_doubles_no_answer,
    any_transaction_gets_200_or_a_matrix_4xx,
    lookups_by_event_id_use_the_index_at_any_size,
    edits_of_full_pages_stay_on_their_page,
    every_change_publishes_its_event,
    runs_keys_and_sweeps_publish,
    events_roll_back_with_their_change,
    sequences_are_gapless_under_concurrency,
    events_and_audit_are_pruned,
    events_can_be_turned_off,
    events_reach_jetstream_in_order,
    a_lost_mark_is_deduplicated_by_jetstream,
    nats_outage_loses_and_doubles_nothing,
    a_million_row_outbox_is_counted_and_pruned_fast,
    audit_records_every_action,
    channels_export_with_edits_and_redactions,
    a_large_export_runs_in_bounded_memory,
    sql_defined_agent_answers,
    disabled_agents_are_silent_and_refused,
    bot_commands,
    admin_api_refuses_wrong_keys,
    admin_api_provisions_agents,
    the_schema_is_the_erds,
    config_seeds_but_never_overwrites_others,
    old_agent_kinds_move_to_the_erds,
    dripped_requests_meet_their_deadline,
    refused_requests_are_answered_before_their_body,
    the_homeserver_gets_through_a_thousand_dripping_connections,
    malformed_http_gets_matrix_errors,
    malformed_envelopes_keep_their_events,
    nul_in_the_channel_state_is_not_a_database_error,
);

/// Tests run on one backend only (each says why).
mod one_backend {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishing_resumes_within_2s_of_a_restart_with_a_large_stream() {
        super::publishing_resumes_within_2s_of_a_restart_with_a_large_stream(
            super::Backend::Postgres,
        )
        .await
    }
}

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
