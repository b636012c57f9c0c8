//! The parts of a transaction beside its timeline events: ephemeral data, to-device events and
//! MSC3202's device lists and key counts. A malformed one is dropped and counted, never a reason
//! to refuse the transaction: the homeserver would resend it forever, and its valid messages
//! with it. Only called when ruma refused the body (the fast path parses it once).

use ruma::UserId;
use serde_json::{Map, Value};

/// Fields ruma reads as lists (anything inside a list is kept: each item is parsed later).
/// Fields ruma does not read (the stable `to_device`, read leniently beside it) cannot make it
/// refuse a body, so they are left alone.
const LISTS: &[(&str, &str)] = &[
    ("ephemeral", "ephemeral"),
    ("de.sorunome.msc2409.to_device", "to_device"),
];
const DEVICE_LISTS: &str = "org.matrix.msc3202.device_lists";
const KEY_COUNTS: &str = "org.matrix.msc3202.device_one_time_keys_count";
const FALLBACK_KEYS: &str = "org.matrix.msc3202.device_unused_fallback_key_types";

/// A transaction body with its malformed envelope parts removed.
pub struct Salvaged {
    /// The body to parse again.
    pub body: String,
    /// What was dropped: (metric type, count).
    pub dropped: Vec<(&'static str, u64)>,
}

/// Removes what ruma cannot read from the envelope of `text`; `None` when `text` is not a JSON
/// object or nothing was removed (the body is then wrong in a way this cannot mend).
pub fn salvage(text: &str) -> Option<Salvaged> {
    let mut body: Map<String, Value> = serde_json::from_str(text).ok()?;
    let mut dropped = Vec::new();
    for (field, kind) in LISTS {
        if body.get(*field).is_some_and(|v| !v.is_array()) {
            body.remove(*field);
            dropped.push((*kind, 1));
        }
    }
    if let Some(lists) = body.get_mut(DEVICE_LISTS) {
        let n = device_lists(lists);
        if n > 0 {
            dropped.push(("device_lists", n));
        }
    }
    for field in [KEY_COUNTS, FALLBACK_KEYS] {
        if let Some(counts) = body.get_mut(field) {
            let n = per_device(counts, field == KEY_COUNTS);
            if n > 0 {
                dropped.push(("one_time_keys", n));
            }
        }
    }
    if dropped.is_empty() {
        return None;
    }
    Some(Salvaged {
        body: Value::Object(body).to_string(),
        dropped,
    })
}

/// Keeps the valid user ids of `changed` and `left`; returns how many entries went.
fn device_lists(lists: &mut Value) -> u64 {
    let Some(object) = lists.as_object_mut() else {
        *lists = Value::Object(Map::new());
        return 1;
    };
    let mut dropped = 0;
    object.retain(|key, value| {
        if key != "changed" && key != "left" {
            return true;
        }
        let Some(ids) = value.as_array_mut() else {
            dropped += 1;
            return false;
        };
        let before = ids.len();
        ids.retain(|id| id.as_str().is_some_and(|s| UserId::parse(s).is_ok()));
        dropped += (before - ids.len()) as u64;
        true
    });
    dropped
}

/// Keeps the valid entries of a `{user: {device: …}}` map: key counts (`{algorithm: count}`)
/// or fallback key types (`[algorithm]`). Returns how many entries went.
fn per_device(map: &mut Value, counts: bool) -> u64 {
    let Some(users) = map.as_object_mut() else {
        *map = Value::Object(Map::new());
        return 1;
    };
    let mut dropped = 0;
    users.retain(|user, devices| {
        let Some(devices) = devices
            .as_object_mut()
            .filter(|_| UserId::parse(user).is_ok())
        else {
            dropped += 1;
            return false;
        };
        devices.retain(|device, keys| {
            let ok = !device.is_empty()
                && if counts {
                    keys.as_object().is_some_and(|k| {
                        k.values()
                            .all(|n| n.as_u64().is_some_and(|n| n < (1 << 53)))
                    })
                } else {
                    keys.as_array()
                        .is_some_and(|k| k.iter().all(Value::is_string))
                };
            if !ok {
                dropped += 1;
            }
            ok
        });
        true
    });
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_parts_go_and_valid_ones_stay() {
        let text = serde_json::json!({
            "events": [{"type": "m.room.message"}],
            "ephemeral": {"not": "a list"},
            "de.sorunome.msc2409.to_device": 7,
            "org.matrix.msc3202.device_lists": {"changed": ["@ok:x", "not an id", 3], "left": "no"},
            "org.matrix.msc3202.device_one_time_keys_count": {
                "@ok:x": {"DEV": {"signed_curve25519": 5}, "BAD": {"signed_curve25519": -1}},
                "nobody": {"DEV": {}}
            },
        })
        .to_string();
        let salvaged = salvage(&text).unwrap();
        let body: Value = serde_json::from_str(&salvaged.body).unwrap();
        assert!(body.get("ephemeral").is_none());
        assert!(body.get("de.sorunome.msc2409.to_device").is_none());
        assert_eq!(body["events"].as_array().unwrap().len(), 1);
        assert_eq!(
            body["org.matrix.msc3202.device_lists"],
            serde_json::json!({"changed": ["@ok:x"]})
        );
        assert_eq!(
            body["org.matrix.msc3202.device_one_time_keys_count"],
            serde_json::json!({"@ok:x": {"DEV": {"signed_curve25519": 5}}})
        );
        let total: u64 = salvaged.dropped.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 1 + 1 + 2 + 1 + 1 + 1);
        // Nothing to mend: no salvage.
        assert!(salvage(r#"{"events": []}"#).is_none());
        assert!(salvage("[1]").is_none());
    }
}
