//! The floor: what any bridge pays — typed parsing of the transaction and one batched insert.
//!
//! Two shapes. The floor writes every message into one channel of its own with no
//! sender. The **same-rows floor** writes each message into its room's channel with its
//! sender's user id, as any bridge mirroring into the ERD must: ids come from maps loaded once
//! at start-up (a bridge's warm caches), so it still pays only parsing and the one insert, but
//! the database does the same work per row as for the bridge's messages (the sender's foreign
//! key check, and index entries spread over 100 channels and 300 senders instead of one spot).

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Deserialize)]
pub struct Txn {
    pub events: Vec<Event>,
}

#[derive(Deserialize)]
pub struct Event {
    pub event_id: String,
    pub sender: String,
    pub room_id: String,
    pub origin_server_ts: i64,
    pub content: Content,
}

#[derive(Deserialize)]
pub struct Content {
    #[serde(default)]
    pub body: Option<String>,
}

pub fn serve(spec: String) {
    let mut parts = spec.split(' ');
    let (db_url, port, channel) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse::<uuid::Uuid>().unwrap(),
    );
    // `rows`: the same-rows floor (see the module's doc).
    let same_rows = parts.next() == Some("rows");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use axum::{extract::State, routing::{get, put}};
        #[derive(Clone)]
        enum Pool {
            Pg(sqlx::PgPool),
            Sqlite(sqlx::SqlitePool),
        }
        let pool = if db_url.starts_with("postgres") {
            Pool::Pg(sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&db_url).await.unwrap())
        } else {
            Pool::Sqlite(sqlx::SqlitePool::connect(&db_url).await.unwrap())
        };
        // Room → channel and Matrix id → user, loaded once (empty for the floor).
        let (mut rooms, mut users) = (HashMap::new(), HashMap::new());
        if same_rows && let Pool::Pg(p) = &pool {
            let q = "SELECT matrix_room_id, id FROM channels WHERE matrix_room_id IS NOT NULL";
            rooms = sqlx::query_as::<_, (String, uuid::Uuid)>(q).fetch_all(p).await.unwrap().into_iter().collect();
            let q = "SELECT matrix_id, id FROM users WHERE matrix_id IS NOT NULL";
            users = sqlx::query_as::<_, (String, uuid::Uuid)>(q).fetch_all(p).await.unwrap().into_iter().collect();
        }
        let ids: &'static (HashMap<String, uuid::Uuid>, HashMap<String, uuid::Uuid>) =
            Box::leak(Box::new((rooms, users)));
        let app = axum::Router::new()
            .route("/health/ready", get(|| async { "ok" }))
            .route(
                "/_matrix/app/v1/transactions/{txn}",
                put(move |State(pool): State<Pool>, axum::Json(txn): axum::Json<Txn>| async move {
                    let row_ids: Vec<uuid::Uuid> = txn.events.iter().map(|_| uuid::Uuid::now_v7()).collect();
                    let events: Vec<&str> = txn.events.iter().map(|e| e.event_id.as_str()).collect();
                    let previews: Vec<&str> = txn.events.iter().map(|e| e.content.body.as_deref().unwrap_or("")).collect();
                    let at: Vec<chrono::DateTime<chrono::Utc>> = txn
                        .events
                        .iter()
                        .map(|e| chrono::DateTime::from_timestamp_millis(e.origin_server_ts).unwrap_or_default())
                        .collect();
                    match pool {
                        Pool::Pg(p) if same_rows => {
                            let chans: Vec<uuid::Uuid> =
                                txn.events.iter().map(|e| ids.0.get(&e.room_id).copied().unwrap_or(channel)).collect();
                            let senders: Vec<Option<uuid::Uuid>> =
                                txn.events.iter().map(|e| ids.1.get(&e.sender).copied()).collect();
                            sqlx::query(
                                "INSERT INTO messages (id, channel_id, matrix_event_id, sender_user_id, sender_type, content_preview, created_at) \
                                 SELECT id, ch, e, u, 'human', p, t FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[]) \
                                 AS x(ch, u, id, e, p, t) ON CONFLICT DO NOTHING",
                            )
                            .bind(chans)
                            .bind(senders)
                            .bind(row_ids)
                            .bind(events)
                            .bind(previews)
                            .bind(at)
                            .execute(&p)
                            .await
                            .unwrap();
                        }
                        Pool::Pg(p) => {
                            sqlx::query(
                                "INSERT INTO messages (id, channel_id, matrix_event_id, sender_type, content_preview, created_at) \
                                 SELECT id, $1, e, 'human', p, t FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) \
                                 AS x(id, e, p, t) ON CONFLICT DO NOTHING",
                            )
                            .bind(channel)
                            .bind(row_ids)
                            .bind(events)
                            .bind(previews)
                            .bind(at)
                            .execute(&p)
                            .await
                            .unwrap();
                        }
                        Pool::Sqlite(p) => {
                            let mut tx = p.begin_with("BEGIN IMMEDIATE").await.unwrap();
                            for i in 0..row_ids.len() {
                                sqlx::query(
                                    "INSERT INTO messages (id, channel_id, matrix_event_id, sender_type, content_preview, created_at) \
                                     VALUES ($1, $2, $3, 'human', $4, $5) ON CONFLICT DO NOTHING",
                                )
                                .bind(row_ids[i].hyphenated().to_string())
                                .bind(channel.hyphenated().to_string())
                                .bind(events[i])
                                .bind(previews[i])
                                .bind(at[i].to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                                .execute(&mut *tx)
                                .await
                                .unwrap();
                            }
                            tx.commit().await.unwrap();
                        }
                    }
                    axum::Json(serde_json::json!({}))
                }),
            )
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}
