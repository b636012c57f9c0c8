//! The live schema against the DAARION ERD (`tests/spec/daarion-erd.dbml`, the platform's
//! `docs/messaging-erd.dbml`, read and parsed here): every table, column, type family,
//! NOT NULL, unique, `now()` default, index and value set (a note `'a | b'` is the column's
//! CHECK) is present, on SQLite (`pragma`) and PostgreSQL (`information_schema`, `pg_index`,
//! `pg_constraint`). And the two dialects agree with each other on every table: the same
//! columns, NOT NULLs, defaults and CHECK value sets. A later migration cannot drift.

use std::collections::{BTreeMap, BTreeSet};

use rstest::rstest;

use crate::support::{Backend, TestApp};

const ERD: &str = include_str!("../spec/daarion-erd.dbml");

/// The bridge's columns on the ERD's tables (docs/architecture.md, "Schema"), with why.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("channels", "topic", "the room's m.room.topic"),
    (
        "channels",
        "updated_at",
        "when the name, topic or visibility last changed",
    ),
    ("messages", "edited_at", "m.replace edits"),
    ("messages", "redacted_at", "redactions"),
    ("messages", "thread_root_event_id", "threads (m.thread)"),
    ("agent_sessions", "closed_at", "when a session closed"),
];

#[derive(Debug, Default)]
struct Column {
    ty: String,
    not_null: bool,
    unique: bool,
    now_default: bool,
    /// The values its note lists (`'human | agent'`), which a CHECK must allow exactly.
    values: Option<BTreeSet<String>>,
}

#[derive(Debug, Default)]
struct Table {
    columns: BTreeMap<String, Column>,
    /// Indexes as column lists, with whether they are unique.
    indexes: Vec<(Vec<String>, bool)>,
}

/// The tables of the DBML (the conceptual Matrix tables, "not stored in DAARION DB", aside).
fn parse_erd() -> BTreeMap<String, Table> {
    let mut tables = BTreeMap::new();
    let mut current: Option<(String, Table)> = None;
    let mut in_indexes = false;
    for raw in ERD.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("Table ") {
            let name = rest.trim_end_matches('{').trim().to_owned();
            current = Some((name, Table::default()));
            continue;
        }
        let Some((name, table)) = current.as_mut() else {
            continue;
        };
        if line == "indexes {" {
            in_indexes = true;
        } else if line == "}" && in_indexes {
            in_indexes = false;
        } else if line == "}" {
            let (name, table) = current.take().unwrap();
            if !name.starts_with("matrix_") {
                tables.insert(name, table);
            }
        } else if line.starts_with("note:") {
        } else if in_indexes {
            let (cols, attrs) = line.split_once('[').unwrap_or((line, ""));
            let cols: Vec<String> = cols
                .trim()
                .trim_matches(|c| c == '(' || c == ')')
                .split(',')
                .map(|c| c.trim().to_owned())
                .collect();
            table.indexes.push((cols, attrs.contains("unique")));
        } else {
            let mut words = line.split_whitespace();
            let col = words.next().unwrap().to_owned();
            let ty = words.next().unwrap().to_owned();
            let attrs = line.split_once('[').map(|(_, a)| a).unwrap_or("");
            let values = attrs
                .split_once("note: '")
                .map(|(_, n)| n.split('\'').next().unwrap_or(""))
                .filter(|n| n.contains(" | "))
                .map(|n| n.split(" | ").map(|v| v.trim().to_owned()).collect());
            let column = Column {
                ty,
                not_null: attrs.contains("not null") || attrs.contains("pk"),
                unique: attrs.contains("unique") || attrs.contains("pk"),
                now_default: attrs.contains("`now()`"),
                values,
            };
            assert!(!name.is_empty());
            table.columns.insert(col, column);
        }
    }
    tables
}

/// A live column: type, NOT NULL, default.
struct Live {
    ty: String,
    not_null: bool,
    default: String,
}

async fn live_columns(app: &TestApp, table: &str) -> BTreeMap<String, Live> {
    let sql = match app.backend {
        Backend::Postgres => format!(
            "SELECT column_name, data_type, is_nullable, COALESCE(column_default, '') \
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}'"
        ),
        Backend::Sqlite => format!(
            "SELECT name, type, CASE WHEN \"notnull\" = 1 OR pk = 1 THEN 'NO' ELSE 'YES' END, \
             COALESCE(dflt_value, '') FROM pragma_table_info('{table}')"
        ),
    };
    app.rows(&sql)
        .await
        .into_iter()
        .map(|r| {
            let v = |i: usize| r[i].clone().unwrap_or_default();
            (
                v(0),
                Live {
                    ty: v(1),
                    not_null: v(2) == "NO",
                    default: v(3),
                },
            )
        })
        .collect()
}

/// Every index of a table (the primary key included) as its column list and uniqueness.
async fn live_indexes(app: &TestApp, table: &str) -> Vec<(Vec<String>, bool)> {
    match app.backend {
        Backend::Postgres => app
            .rows(&format!(
                "SELECT CAST(i.indisunique AS TEXT), string_agg(a.attname, ',' ORDER BY k.n) \
                 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
                 WHERE t.relname = '{table}' AND i.indpred IS NULL GROUP BY i.indexrelid, i.indisunique"
            ))
            .await
            .into_iter()
            .map(|r| {
                let cols = r[1].clone().unwrap_or_default();
                (
                    cols.split(',').map(str::to_owned).collect(),
                    r[0].as_deref() == Some("true"),
                )
            })
            .collect(),
        Backend::Sqlite => {
            let mut out = Vec::new();
            let list = app
                .rows(&format!(
                    "SELECT name, CAST(\"unique\" AS TEXT), CAST(partial AS TEXT) FROM pragma_index_list('{table}')"
                ))
                .await;
            for r in list {
                if r[2].as_deref() == Some("1") {
                    continue;
                }
                let name = r[0].clone().unwrap();
                let cols = app
                    .col(&format!(
                        "SELECT name FROM pragma_index_info('{name}') ORDER BY seqno"
                    ))
                    .await;
                out.push((cols, r[1].as_deref() == Some("1")));
            }
            // A TEXT primary key is a unique index of its own.
            let pk = app
                .col(&format!(
                    "SELECT name FROM pragma_table_info('{table}') WHERE pk > 0 ORDER BY pk"
                ))
                .await;
            if !pk.is_empty() {
                out.push((pk, true));
            }
            out
        }
    }
}

/// The quoted values of a CHECK's list (`'a'::text, 'b'::text` or `'a', 'b'`).
fn quoted(list: &str) -> BTreeSet<String> {
    list.split('\'')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// Each column's CHECK value set (`col IN ('a', 'b')`, which PostgreSQL shows as
/// `col = ANY (ARRAY['a'::text, 'b'::text])`).
async fn live_checks(app: &TestApp, table: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    match app.backend {
        Backend::Postgres => {
            let defs = app
                .col(&format!(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE conrelid = '{table}'::regclass AND contype = 'c'"
                ))
                .await;
            for def in defs {
                // CHECK ((col = ANY (ARRAY['a'::text, …])))
                let Some((head, rest)) = def.split_once(" = ANY (ARRAY[") else {
                    continue;
                };
                let col = head.trim_start_matches("CHECK ").trim_start_matches('(');
                let list = rest.split(']').next().unwrap_or("");
                out.insert(col.to_owned(), quoted(list));
            }
        }
        Backend::Sqlite => {
            let sql = app
                .col(&format!(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
                ))
                .await
                .concat();
            for part in sql.split("CHECK (").skip(1) {
                // CHECK (col IN ('a', 'b'))
                let Some((col, rest)) = part.split_once(" IN (") else {
                    continue;
                };
                let values = quoted(rest.split(')').next().unwrap_or(""));
                // Text value sets only (a boolean's `IN (0, 1)` is SQLite's way of typing it).
                if !values.is_empty() {
                    out.insert(col.trim().to_owned(), values);
                }
            }
        }
    }
    out
}

/// A column as both dialects must agree on it.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    not_null: bool,
    has_default: bool,
    generated: bool,
    values: Option<BTreeSet<String>>,
}

/// Every table (and view-free) column shape of the live schema.
async fn live_shapes(app: &TestApp) -> BTreeMap<String, BTreeMap<String, Shape>> {
    let tables = match app.backend {
        Backend::Postgres => {
            app.col(
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name NOT LIKE '\\_sqlx%'",
            )
            .await
        }
        Backend::Sqlite => {
            app.col(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
            )
            .await
        }
    };
    let mut out = BTreeMap::new();
    for table in tables {
        let checks = live_checks(app, &table).await;
        let sql = match app.backend {
            Backend::Postgres => format!(
                "SELECT column_name, is_nullable, CASE WHEN column_default IS NULL THEN 'no' ELSE 'yes' END, \
                 is_generated FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}'"
            ),
            Backend::Sqlite => format!(
                "SELECT name, CASE WHEN \"notnull\" = 1 OR pk = 1 THEN 'NO' ELSE 'YES' END, \
                 CASE WHEN dflt_value IS NULL THEN 'no' ELSE 'yes' END, \
                 CASE WHEN hidden IN (2, 3) THEN 'ALWAYS' ELSE 'NEVER' END FROM pragma_table_xinfo('{table}')"
            ),
        };
        let mut cols = BTreeMap::new();
        for r in app.rows(&sql).await {
            let v = |i: usize| r[i].clone().unwrap_or_default();
            cols.insert(
                v(0),
                Shape {
                    not_null: v(1) == "NO",
                    has_default: v(2) == "yes",
                    generated: v(3) == "ALWAYS",
                    values: checks.get(&v(0)).cloned(),
                },
            );
        }
        out.insert(table, cols);
    }
    out
}

fn type_family(backend: Backend, erd: &str) -> &'static str {
    match (backend, erd) {
        (Backend::Postgres, "uuid") => "uuid",
        (Backend::Postgres, "text") => "text",
        (Backend::Postgres, "timestamptz") => "timestamp with time zone",
        (Backend::Postgres, "jsonb") => "jsonb",
        // SQLite keeps every ERD type as TEXT (ids, timestamps and JSON as text).
        (Backend::Sqlite, _) => "TEXT",
        (_, other) => panic!("an ERD type the check does not know: {other}"),
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_the_erds(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let erd = parse_erd();
    assert_eq!(erd.len(), 9, "the nine DAARION tables: {:?}", erd.keys());
    let mut problems = Vec::new();
    for (name, table) in &erd {
        let live = live_columns(&app, name).await;
        if live.is_empty() {
            problems.push(format!("table {name} is missing"));
            continue;
        }
        let indexes = live_indexes(&app, name).await;
        let checks = live_checks(&app, name).await;
        // Columns the ERD does not have are the documented extensions, and nullable (or
        // defaulted): another service inserting the ERD's columns only must still succeed.
        for (col, have) in &live {
            if table.columns.contains_key(col) {
                continue;
            }
            if !EXTENSIONS.iter().any(|(t, c, _)| t == name && c == col) {
                problems.push(format!(
                    "{name}.{col} is not in the ERD nor a documented extension"
                ));
            } else if have.not_null && have.default.is_empty() {
                problems.push(format!(
                    "{name}.{col} extends the ERD but is NOT NULL without a default"
                ));
            }
        }
        for (col, want) in &table.columns {
            let Some(have) = live.get(col) else {
                problems.push(format!("{name}.{col} is missing"));
                continue;
            };
            if !have.ty.eq_ignore_ascii_case(type_family(b, &want.ty)) {
                problems.push(format!("{name}.{col} is {} (ERD: {})", have.ty, want.ty));
            }
            if want.not_null && !have.not_null {
                problems.push(format!("{name}.{col} is nullable (ERD: not null)"));
            }
            if want.unique && !indexes.iter().any(|(c, u)| *u && c == &vec![col.clone()]) {
                problems.push(format!("{name}.{col} is not unique"));
            }
            if let Some(values) = &want.values {
                let live = checks.get(col);
                if live != Some(values) {
                    problems.push(format!("{name}.{col} allows {live:?} (ERD: {values:?})"));
                }
            }
            if want.now_default && !have.default.to_ascii_lowercase().contains("now") {
                problems.push(format!(
                    "{name}.{col} has no now() default: {:?}",
                    have.default
                ));
            }
        }
        for (cols, unique) in &table.indexes {
            // Covered by an index with these leading columns (a unique one where the ERD says so).
            let covered = indexes.iter().any(|(c, u)| {
                c.len() >= cols.len()
                    && c[..cols.len()] == cols[..]
                    && (!unique || (*u && c == cols))
            });
            if !covered {
                problems.push(format!(
                    "{name}: no index on ({}){}",
                    cols.join(", "),
                    if *unique { " unique" } else { "" }
                ));
            }
        }
    }
    // The ERD's agent kinds are all accepted, and nothing else.
    let echo = "(SELECT id FROM agent_blueprints WHERE code = 'echo')";
    for kind in ["system", "assistant", "node", "quest"] {
        app.exec(&format!(
            "INSERT INTO agents (external_id, name, kind, blueprint_id) VALUES ('agent:erd-{kind}', 'ERD', '{kind}', {echo})"
        ))
        .await;
    }
    let refused = app
        .try_exec(&format!(
            "INSERT INTO agents (external_id, name, kind, blueprint_id) VALUES ('agent:erd-bot', 'ERD', 'bot', {echo})"
        ))
        .await;
    if refused.is_ok() {
        problems.push("agents.kind accepts `bot`, which the ERD does not have".into());
    }
    assert!(
        problems.is_empty(),
        "the schema drifts from the ERD:\n{}",
        problems.join("\n")
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_agent_kinds_move_to_the_erds(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    // Back to before the platform migration, rows of the old kinds, then forward again; with
    // the bridge stopped and a store of its own, as migrations run (docs/deployment.md).
    app.stop_bridge().await;
    let store = daarion_bridge::db::Store::connect(&app.db_url, 2)
        .await
        .unwrap();
    store.migrate_down_to(5).await.unwrap();
    for (i, kind) in ["specialist", "orchestrator", "service", "bot", "assistant"]
        .iter()
        .enumerate()
    {
        app.exec(&format!(
            "INSERT INTO agents (external_id, name, kind) VALUES ('agent:old{i}', 'Old', '{kind}')"
        ))
        .await;
    }
    store.migrate().await.unwrap();
    assert_eq!(
        app.col("SELECT kind FROM agents WHERE external_id LIKE 'agent:old%' ORDER BY external_id")
            .await,
        vec!["assistant", "system", "node", "system", "assistant"]
    );
}

/// Where the dialects may differ, each with its reason (`table.column`; `table` alone: the
/// table exists in one dialect only).
const DIALECT_DIFFERENCES: &[(&str, &str)] = &[(
    "bridge_member_sync",
    "SQLite's triggers cannot call functions: the pairs to bring in line are queued here for \
     the trigger that does the work (PostgreSQL calls bridge_microdao_member_sync)",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialects_agree() {
    let pg = live_shapes(&TestApp::spawn(Backend::Postgres).await).await;
    let sqlite = live_shapes(&TestApp::spawn(Backend::Sqlite).await).await;
    let allowed = |what: &str| DIALECT_DIFFERENCES.iter().any(|(w, _)| *w == what);
    let mut problems = Vec::new();
    let names: BTreeSet<&String> = pg.keys().chain(sqlite.keys()).collect();
    for table in names {
        let (Some(p), Some(s)) = (pg.get(table), sqlite.get(table)) else {
            if !allowed(table) {
                problems.push(format!("{table} exists in one dialect only"));
            }
            continue;
        };
        let cols: BTreeSet<&String> = p.keys().chain(s.keys()).collect();
        for col in cols {
            let what = format!("{table}.{col}");
            if allowed(&what) {
                continue;
            }
            match (p.get(col), s.get(col)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => problems.push(format!("{what}: PostgreSQL {a:?}, SQLite {b:?}")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dialects differ:\n{}",
        problems.join("\n")
    );
}
