//! Matrix ids at the storage edge. A row type holds ruma ids (`OwnedRoomId`, `OwnedUserId`,
//! `OwnedEventId`), parsed once when the row is read, so no consumer parses them again. The
//! database holds them as text, and one row may hold text that is no valid id (written by
//! another service, or by hand): such a row must cost only itself. Decoding inside `FromRow`
//! would fail the whole `fetch_all` for one bad row, stalling a queue behind it; so a query
//! reads [`RawRow`]s (ids as text) and [`decode_all`] decodes each on its own. A row that does
//! not decode is logged with its key and handed back as a [`BadRow`]: a queue marks it failed
//! or cancelled (its consumer decides, as it did for a bad id before), a listing leaves it out.

use ruma::IdParseError;

/// A row as stored, its Matrix ids still text.
pub trait RawRow: Sized {
    /// The row with its ids parsed.
    type Row;
    /// The table, for the log line of a row that does not decode.
    const TABLE: &'static str;
    /// What identifies the row, for the same log line.
    fn key(&self) -> String;
    /// Parses the ids; an invalid one gives the raw row back with the error.
    fn decode(self) -> Result<Self::Row, BadRow<Self>>;
}

/// A row whose stored Matrix id does not parse.
#[derive(Debug)]
pub struct BadRow<R> {
    /// The row as read.
    pub raw: R,
    /// Why its id is invalid.
    pub error: IdParseError,
}

/// Rows read and decoded one by one: those that decoded, and those that did not.
#[derive(Debug)]
pub struct Decoded<R: RawRow> {
    /// The rows whose ids parsed, in the order read.
    pub rows: Vec<R::Row>,
    /// The rows with an invalid id (each logged once here).
    pub bad: Vec<BadRow<R>>,
}

impl<R: RawRow> Decoded<R> {
    /// How many rows were read, good and bad (a batch loop compares it with its limit).
    pub fn read(&self) -> usize {
        self.rows.len() + self.bad.len()
    }
}

/// Decodes each row on its own; a bad row is logged with its key and kept aside.
pub fn decode_all<R: RawRow>(raws: Vec<R>) -> Decoded<R> {
    let mut out = Decoded {
        rows: Vec::with_capacity(raws.len()),
        bad: Vec::new(),
    };
    for raw in raws {
        match raw.decode() {
            Ok(row) => out.rows.push(row),
            Err(bad) => {
                tracing::warn!(table = R::TABLE, key = %bad.raw.key(), error = %bad.error, "row with an invalid Matrix id");
                out.bad.push(bad);
            }
        }
    }
    out
}

/// The rows that decode; the others are logged and left out (a listing, or rows a queue
/// settles elsewhere).
pub fn decode_good<R: RawRow>(raws: Vec<R>) -> Vec<R::Row> {
    decode_all(raws).rows
}

/// One row, if it decodes; a bad one is logged and read as absent.
pub fn decode_one<R: RawRow>(raw: Option<R>) -> Option<R::Row> {
    decode_good(raw.into_iter().collect()).pop()
}

/// Parses a raw row's ids with `parse` (for [`RawRow::decode`]): the row and its ids, or the
/// row back as a [`BadRow`] with the first invalid id's error.
pub fn parse_ids<R, T>(
    raw: R,
    parse: impl FnOnce(&R) -> Result<T, IdParseError>,
) -> Result<(R, T), BadRow<R>> {
    match parse(&raw) {
        Ok(ids) => Ok((raw, ids)),
        Err(error) => Err(BadRow { raw, error }),
    }
}
