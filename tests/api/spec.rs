//! Conformance with the official OpenAPI definitions of the Application Service API (Matrix spec
//! v1.19, vendored under `tests/spec/matrix-spec`, Apache-2.0): every documented operation is
//! routed and answers one of its documented status codes with the documented error shape, the
//! spec's own example transaction is accepted, and the generated registration validates against
//! the registration schema.

use std::path::{Path, PathBuf};

use rstest::rstest;
use serde_json::{Map, Value, json};

use crate::support::{Backend, HS_TOKEN, TestApp};

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spec/matrix-spec/data")
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Resolves `$ref`s in examples: the referenced file is the base, sibling keys override it.
fn resolve_example(v: &Value, dir: &Path) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            if let Some(Value::String(r)) = map.get("$ref") {
                let path = dir.join(r);
                let base = resolve_example(&load(&path), path.parent().unwrap());
                if let Value::Object(b) = base {
                    out.extend(b);
                }
            }
            for (k, val) in map {
                if k != "$ref" {
                    out.insert(k.clone(), resolve_example(val, dir));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| resolve_example(i, dir)).collect())
        }
        other => other.clone(),
    }
}

/// A JSON-schema subset (type, required, properties, items, allOf, $ref) — enough for the
/// registration schema.
fn validate(schema: &Value, value: &Value, dir: &Path, at: &str, errors: &mut Vec<String>) {
    if let Some(Value::String(r)) = schema.get("$ref") {
        let path = dir.join(r);
        validate(&load(&path), value, path.parent().unwrap(), at, errors);
    }
    if let Some(Value::Array(all)) = schema.get("allOf") {
        for s in all {
            validate(s, value, dir, at, errors);
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types
            .iter()
            .any(|t| *t == actual || (*t == "number" && actual == "integer"))
        {
            errors.push(format!("{at}: expected {types:?}, got {actual}"));
        }
    }
    if let (Some(Value::Array(req)), Value::Object(obj)) = (schema.get("required"), value) {
        for r in req.iter().filter_map(|r| r.as_str()) {
            if !obj.contains_key(r) {
                errors.push(format!("{at}: missing required `{r}`"));
            }
        }
    }
    if let (Some(Value::Object(props)), Value::Object(obj)) = (schema.get("properties"), value) {
        for (k, s) in props {
            if let Some(v) = obj.get(k) {
                validate(s, v, dir, &format!("{at}.{k}"), errors);
            }
        }
    }
    if let (Some(items), Value::Array(arr)) = (schema.get("items"), value) {
        for (i, v) in arr.iter().enumerate() {
            validate(items, v, dir, &format!("{at}[{i}]"), errors);
        }
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_to_the_appservice_spec(#[case] b: Backend) {
    let app = TestApp::spawn(b).await;
    let dir = spec_dir().join("api/application-service");
    let mut operations = 0;
    for file in [
        "transactions.yaml",
        "query_user.yaml",
        "query_room.yaml",
        "ping.yaml",
        "protocols.yaml",
    ] {
        let spec = load(&dir.join(file));
        let base = spec["servers"][0]["variables"]["basePath"]["default"]
            .as_str()
            .unwrap()
            .to_owned();
        for (path, ops) in spec["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                operations += 1;
                let mut url = format!("{base}{path}");
                let mut query = Vec::new();
                for p in op["parameters"].as_array().cloned().unwrap_or_default() {
                    let example = p["example"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| "x".into());
                    let name = p["name"].as_str().unwrap();
                    match p["in"].as_str() {
                        Some("path") => {
                            url = url.replace(&format!("{{{name}}}"), &example.replace('#', "%23"))
                        }
                        Some("query") if p["schema"]["type"] == "string" => query.push(format!(
                            "{name}={}",
                            example.replace('#', "%23").replace('@', "%40")
                        )),
                        _ => {}
                    }
                }
                if !query.is_empty() {
                    url = format!("{url}?{}", query.join("&"));
                }
                let body =
                    op["requestBody"]["content"]["application/json"]["schema"]["example"].clone();
                let body = if body.is_null() {
                    json!({})
                } else {
                    resolve_example(&body, &dir)
                };
                let documented: Vec<u16> = op["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter_map(|k| k.parse().ok())
                    .collect();
                let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let send = |token: Option<&str>| {
                    let mut req = app.http.request(m.clone(), app.url(&url)).json(&body);
                    if let Some(t) = token {
                        req = req.bearer_auth(t);
                    }
                    req.send()
                };
                let r = send(Some(HS_TOKEN)).await.unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                assert!(
                    documented.contains(&status),
                    "{method} {url}: {status} is not among {documented:?} ({v})"
                );
                if status >= 400 {
                    assert!(
                        v["errcode"].as_str().is_some_and(|c| c.starts_with("M_"))
                            && v["error"].is_string(),
                        "{method} {url}: error shape {v}"
                    );
                }
                if file == "transactions.yaml" {
                    assert_eq!(
                        (status, v),
                        (200, json!({})),
                        "the spec's example transaction is accepted"
                    );
                }
                if op.get("security").is_some() {
                    if documented.contains(&401) {
                        let r = send(None).await.unwrap();
                        assert_eq!(r.status(), 401, "{method} {url} without a token");
                        assert_eq!(
                            r.json::<Value>().await.unwrap()["errcode"],
                            "M_UNAUTHORIZED"
                        );
                    }
                    if documented.contains(&403) {
                        let r = send(Some("wrong-token")).await.unwrap();
                        assert_eq!(r.status(), 403, "{method} {url} with a wrong token");
                        assert_eq!(r.json::<Value>().await.unwrap()["errcode"], "M_FORBIDDEN");
                    }
                }
            }
        }
    }
    assert!(
        operations >= 7,
        "all application-service operations were exercised ({operations})"
    );

    // The registration `generate-registration` writes validates against the spec's schema.
    let config = daarion_bridge::config::Config::from_toml_str(&crate::support::base_config(
        &app.db_url,
        &app.hs_url,
    ))
    .unwrap();
    let yaml = daarion_bridge::registration::to_yaml(&daarion_bridge::registration::build(&config));
    let registration: Value = serde_yaml::from_str(&yaml).unwrap();
    let schema_path = dir.join("definitions/registration.yaml");
    let mut errors = Vec::new();
    validate(
        &load(&schema_path),
        &registration,
        schema_path.parent().unwrap(),
        "registration",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:#?}\n{yaml}");
    assert_eq!(
        registration["namespaces"]["users"][0]["regex"],
        r"^@agent_.*:localhost$"
    );
}
