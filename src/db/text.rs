//! The one place text enters the store. PostgreSQL refuses U+0000 in `text` and `jsonb`, so a
//! single NUL in a message body would fail the whole transaction on every retry, and a
//! homeserver that delivers in order would stop mirroring everywhere. Every piece of free text
//! the bridge writes is therefore a [`DbText`], which can only be built with NUL replaced by
//! U+FFFD; JSON documents go through [`clean_json`]. Ids containing NUL are invalid and never
//! reach the store (the mirror skips and counts such events).

use std::borrow::Cow;

use serde::Serialize;

/// What replaces U+0000 in stored text (visible, and never a valid part of a Matrix body).
pub const REPLACEMENT: char = '\u{FFFD}';

/// Free text as the store accepts it: never contains U+0000 (in both dialects).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DbText(String);

impl DbText {
    /// The text, NUL replaced.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        if text.contains('\0') {
            Self(text.replace('\0', "\u{FFFD}"))
        } else {
            Self(text)
        }
    }

    /// The text itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The owned text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for DbText {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl From<&str> for DbText {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl std::ops::Deref for DbText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DbText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text` with NUL replaced, borrowing when there is none.
pub fn clean(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Replaces NUL in every string (keys included) of a JSON document, so `jsonb` accepts it.
pub fn clean_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(clean_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    clean_json(&mut v);
                    map.insert(k.replace('\0', "\u{FFFD}"), v);
                }
            } else {
                map.values_mut().for_each(clean_json);
            }
        }
        _ => {}
    }
}

/// Whether any string of a JSON document (keys included) contains NUL.
pub fn json_has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

impl sqlx::Type<sqlx::Postgres> for DbText {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}
impl sqlx::postgres::PgHasArrayType for DbText {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}
impl sqlx::Encode<'_, sqlx::Postgres> for DbText {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.0.as_str(), buf)
    }
}
impl sqlx::Type<sqlx::Sqlite> for DbText {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}
impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for DbText {
    fn encode_by_ref(
        &self,
        buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <String as sqlx::Encode<sqlx::Sqlite>>::encode(self.0.clone(), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_never_survives() {
        assert_eq!(DbText::new("a\0b").as_str(), "a\u{FFFD}b");
        assert_eq!(DbText::new("plain").as_str(), "plain");
        let mut v = serde_json::json!({ "body": "x\u{0}y", "k\u{0}": ["\u{0}"] });
        assert!(json_has_nul(&v));
        clean_json(&mut v);
        assert!(!json_has_nul(&v));
        assert_eq!(v["body"], "x\u{FFFD}y");
    }
}
