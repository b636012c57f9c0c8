//! The live schema against the DAARION ERD (`tests/spec/daarion-erd.dbml`, the platform's
//! `docs/messaging-erd.dbml`, read and parsed here): every table, column, type family,
//! NOT NULL, unique, `now()` default and index is present, on SQLite (`pragma`) and
//! PostgreSQL (`information_schema`, `pg_index`). A later migration cannot drift from it.

use std::collections::BTreeMap;

use rstest::rstest;

use crate::support::{Backend, TestApp};

const ERD: &str = include_str!("../spec/daarion-erd.dbml");

/// Columns whose ERD `NOT NULL` the bridge relaxes, each documented next to the column (a
/// PostgreSQL comment that says so, checked below).
const RELAXED: [(&str, &str); 4] = [
    ("channels", "matrix_room_id"),
    ("agents", "blueprint_id"),
    ("agent_blueprints", "model"),
    ("microdaos", "owner_user_id"),
];

#[derive(Debug, Default)]
struct Column {
    ty: String,
    not_null: bool,
    unique: bool,
    now_default: bool,
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
            let column = Column {
                ty,
                not_null: attrs.contains("not null") || attrs.contains("pk"),
                unique: attrs.contains("unique") || attrs.contains("pk"),
                now_default: attrs.contains("`now()`"),
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
        for (col, want) in &table.columns {
            let Some(have) = live.get(col) else {
                problems.push(format!("{name}.{col} is missing"));
                continue;
            };
            if !have.ty.eq_ignore_ascii_case(type_family(b, &want.ty)) {
                problems.push(format!("{name}.{col} is {} (ERD: {})", have.ty, want.ty));
            }
            let relaxed = RELAXED.contains(&(name.as_str(), col.as_str()));
            if want.not_null && !have.not_null && !relaxed {
                problems.push(format!("{name}.{col} is nullable (ERD: not null)"));
            }
            if want.unique && !indexes.iter().any(|(c, u)| *u && c == &vec![col.clone()]) {
                problems.push(format!("{name}.{col} is not unique"));
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
    if b == Backend::Postgres {
        for (table, col) in RELAXED {
            let comment = app
                .col(&format!(
                    "SELECT COALESCE(col_description('{table}'::regclass, ordinal_position::int), '') \
                     FROM information_schema.columns WHERE table_name = '{table}' AND column_name = '{col}'"
                ))
                .await;
            if !comment
                .first()
                .is_some_and(|c| c.contains("ERD: NOT NULL") && c.contains("Nullable here"))
            {
                problems.push(format!(
                    "{table}.{col} relaxes the ERD's NOT NULL without saying why"
                ));
            }
        }
        // The ERD's agent kinds are all accepted.
        app.exec("INSERT INTO agent_blueprints (code) VALUES ('erd-check')")
            .await;
        for kind in ["system", "assistant", "node", "quest"] {
            app.exec(&format!(
                "INSERT INTO agents (external_id, name, kind, blueprint_id) VALUES \
                 ('agent:erd-{kind}', 'ERD', '{kind}', (SELECT id FROM agent_blueprints WHERE code = 'erd-check'))"
            ))
            .await;
        }
    } else {
        for kind in ["system", "assistant", "node", "quest"] {
            app.exec(&format!(
                "INSERT INTO agents (external_id, name, kind) VALUES ('agent:erd-{kind}', 'ERD', '{kind}')"
            ))
            .await;
        }
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
    // Back to before the platform migration, rows of the old kinds, then forward again.
    app.store.migrate_down_to(5).await.unwrap();
    for (i, kind) in ["specialist", "orchestrator", "service", "bot", "assistant"]
        .iter()
        .enumerate()
    {
        app.exec(&format!(
            "INSERT INTO agents (external_id, name, kind) VALUES ('agent:old{i}', 'Old', '{kind}')"
        ))
        .await;
    }
    app.store.migrate().await.unwrap();
    assert_eq!(
        app.col("SELECT kind FROM agents WHERE external_id LIKE 'agent:old%' ORDER BY external_id")
            .await,
        vec!["assistant", "system", "node", "system", "assistant"]
    );
}
