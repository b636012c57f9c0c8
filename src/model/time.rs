//! How typed ids and timestamps travel in both dialects: native `uuid`/`timestamptz` in
//! PostgreSQL, canonical text in SQLite (hyphenated UUIDs, RFC 3339 UTC with milliseconds, so
//! text order is time order).

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{
    Decode, Encode, Postgres, Sqlite, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef},
    sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef},
};
use uuid::Uuid;

use crate::model::ids::*;

/// A timestamp column value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts(pub DateTime<Utc>);

impl Ts {
    /// From milliseconds since the Unix epoch (out-of-range values become the epoch).
    pub fn from_millis(ms: i64) -> Self {
        Ts(DateTime::from_timestamp_millis(ms).unwrap_or_default())
    }
    /// The current time.
    pub fn now() -> Self {
        Ts(Utc::now())
    }
    /// `self` minus `d` (saturating at the epoch).
    pub fn minus(self, d: std::time::Duration) -> Self {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| self.0.checked_sub_signed(d))
            .map(Ts)
            .unwrap_or(Ts(DateTime::<Utc>::MIN_UTC))
    }

    /// `self` plus `d`.
    pub fn plus(self, d: std::time::Duration) -> Self {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| self.0.checked_add_signed(d))
            .map(Ts)
            .unwrap_or(Ts(DateTime::<Utc>::MAX_UTC))
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0.timestamp_millis()
    }

    /// The timestamp as SQLite stores it (RFC 3339, milliseconds, `Z`).
    pub fn sqlite_text(&self) -> String {
        self.text(&mut [0; 24]).into_owned()
    }

    /// The text, borrowed from `buf` where the fixed width fits, else chrono's.
    fn text<'b>(&self, buf: &'b mut [u8; 24]) -> std::borrow::Cow<'b, str> {
        match self.fixed_text(buf) {
            Some(text) => text.into(),
            None => self.0.to_rfc3339_opts(SecondsFormat::Millis, true).into(),
        }
    }

    /// The same text as [`Ts::sqlite_text`], written into `buf` without allocating, for the
    /// years 0–9999 without a leap second (every timestamp the bridge makes); `None` otherwise.
    /// Every event payload carries timestamps, and chrono's formatter (the fallback) goes
    /// through `fmt` and a `String` each time.
    fn fixed_text<'b>(&self, buf: &'b mut [u8; 24]) -> Option<&'b str> {
        use chrono::{Datelike, Timelike};
        let (d, nanos) = (self.0, self.0.nanosecond());
        let year = u32::try_from(d.year()).ok().filter(|y| *y <= 9999)?;
        if nanos >= 1_000_000_000 {
            return None;
        }
        let mut put = |at: usize, width: usize, mut value: u32| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, d.month());
        put(8, 2, d.day());
        put(11, 2, d.hour());
        put(14, 2, d.minute());
        put(17, 2, d.second());
        put(20, 3, nanos / 1_000_000);
        for (i, c) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ] {
            buf[i] = c;
        }
        std::str::from_utf8(buf).ok()
    }
}

/// API and event payloads show timestamps as RFC 3339 UTC with milliseconds.
impl serde::Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text(&mut [0; 24]))
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}
impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}
impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Ts(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
    }
}
impl Type<Sqlite> for Ts {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}
impl<'q> Encode<'q, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.sqlite_text(), buf)
    }
}
impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Ts(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc)))
    }
}

macro_rules! id_sql {
    ($($name:ident),*) => {$(
        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <Uuid as Type<Postgres>>::type_info()
            }
        }
        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <Uuid as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }
        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
            }
        }
        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok($name(<Uuid as Decode<Postgres>>::decode(value)?))
            }
        }
        impl Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <String as Type<Sqlite>>::type_info()
            }
            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <String as Type<Sqlite>>::compatible(ty)
            }
        }
        impl<'q> Encode<'q, Sqlite> for $name {
            fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
                <String as Encode<Sqlite>>::encode(self.0.hyphenated().to_string(), buf)
            }
        }
        impl<'r> Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok($name(<&str as Decode<Sqlite>>::decode(value)?.parse()?))
            }
        }
    )*};
}

id_sql!(
    UserRowId,
    MicrodaoId,
    BlueprintId,
    AgentId,
    ChannelId,
    MessageId,
    SessionId,
    AccessKeyId,
    OutboxId,
    RunId,
    JobId,
    TriggerId,
    MemberId,
    AdminKeyId,
    PartId,
    StepId
);

impl sqlx::postgres::PgHasArrayType for Ts {
    fn array_type_info() -> PgTypeInfo {
        <DateTime<Utc> as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, SecondsFormat, TimeZone, Utc};

    use super::Ts;

    /// The allocation-free text is byte for byte chrono's, and chrono still answers where the
    /// fixed width does not fit (years past 9999, before 0, leap seconds).
    #[test]
    fn timestamp_text_matches_chrono() {
        let chrono_text = |t: &Ts| t.0.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut samples: Vec<Ts> = [
            0,
            1,
            999,
            1_700_000_000_123,
            -1,
            -62_167_219_200_000, // 0000-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01
            -62_167_219_200_001, // -0001
        ]
        .into_iter()
        .map(Ts::from_millis)
        .collect();
        // A deterministic spread over 0000..9999.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = (x % 315_569_520_000_000) as i64 - 62_167_219_200_000;
            samples.push(Ts::from_millis(ms));
        }
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1_500)
            .unwrap();
        samples.push(Ts(Utc.from_utc_datetime(&leap)));
        for t in &samples {
            assert_eq!(t.sqlite_text(), chrono_text(t), "{:?}", t.0);
            assert_eq!(
                serde_json::to_string(t).unwrap(),
                serde_json::to_string(&chrono_text(t)).unwrap()
            );
        }
        let mut buf = [0; 24];
        assert!(samples[7].fixed_text(&mut buf).is_none(), "year 10000");
        assert!(
            samples.last().unwrap().fixed_text(&mut buf).is_none(),
            "leap second"
        );
    }
}
