//! Durations in the config: seconds (`900`) or with a unit (`"500ms"`, `"30s"`, `"15m"`,
//! `"1h"`, `"7d"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error};

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Secs(u64),
    Text(String),
}

/// Parses `"500ms"`, `"30s"`, `"15m"`, `"1h"`, `"7d"` or plain seconds.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs);
    match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// serde `deserialize_with` for a [`Duration`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse(&t).ok_or_else(|| {
            D::Error::custom(format!("`{t}` is not a duration like 30s, 15m, 1h, 7d"))
        }),
    }
}

/// serde `serialize_with` for a [`Duration`] (milliseconds).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// The same for optional durations.
pub mod opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// serde `deserialize_with` for an optional [`Duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }

    /// serde `serialize_with` for an optional [`Duration`].
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse("1w"), None);
        assert_eq!(parse("99999999999999999999d"), None);
    }
}
