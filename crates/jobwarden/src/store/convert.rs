//! Conversions between model values and column values, shared by both backends.
//!
//! [`RowExt`] reads a column as a model-level value (a timestamp, a duration in seconds, a
//! JSON document) whatever the backend's column type, so that rows are decoded by one
//! function per table ([`super::jobs::decode_job`], …) instead of one per backend.

use std::time::Duration;

use crate::model::Timestamp;

use super::{Error, Result};

/// Whole seconds of `d` as a column value (the sub-second part is dropped).
pub(crate) fn secs(d: Duration, what: &'static str) -> Result<i64> {
    i64::try_from(d.as_secs()).map_err(|_| Error::OutOfRange {
        what,
        value: format!("{}s", d.as_secs()),
    })
}

/// An unsigned count or id as a column value.
pub(crate) fn int_u64(v: u64, what: &'static str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::OutOfRange {
        what,
        value: v.to_string(),
    })
}

/// Microseconds since the Unix epoch (SQLite's timestamp columns). Every `DateTime<Utc>`
/// chrono can represent fits in an `i64` of microseconds; nanoseconds are dropped.
pub(crate) fn micros(ts: Timestamp) -> i64 {
    ts.timestamp_micros()
}

/// `ts` truncated to whole microseconds: what both backends store, so a time computed here
/// (a retry time) compares equal to the same time read back.
pub(crate) fn trunc_micros(ts: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(ts.timestamp_micros()).unwrap_or(ts)
}

/// Reads a row's columns as model values, naming the column in every error.
pub(crate) trait RowExt {
    /// The table, for error messages.
    fn table(&self) -> &'static str;
    /// A `TEXT` column.
    fn text(&self, col: &str) -> Result<String>;
    /// A nullable `TEXT` column.
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// An integer column.
    fn int(&self, col: &str) -> Result<i64>;
    /// A nullable integer column.
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    /// A boolean column.
    fn flag(&self, col: &str) -> Result<bool>;
    /// A timestamp column.
    fn ts(&self, col: &str) -> Result<Timestamp>;
    /// A nullable timestamp column.
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>>;
    /// A nullable JSON column.
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>>;

    /// A JSON column.
    fn json(&self, col: &str) -> Result<serde_json::Value> {
        self.opt_json(col)?
            .ok_or_else(|| self.corrupt(col, "NULL in a NOT NULL column".into()))
    }

    /// An error naming this column.
    fn corrupt(&self, col: &str, problem: String) -> Error {
        Error::Corrupt {
            what: format!("{}.{col}", self.table()),
            problem,
        }
    }

    /// A column holding one of a string enum's names.
    fn parsed<T: std::str::FromStr<Err = String>>(&self, col: &str) -> Result<T> {
        self.text(col)?.parse().map_err(|e| self.corrupt(col, e))
    }

    /// A nullable column holding one of a string enum's names.
    fn opt_parsed<T: std::str::FromStr<Err = String>>(&self, col: &str) -> Result<Option<T>> {
        self.opt_text(col)?
            .map(|s| s.parse().map_err(|e| self.corrupt(col, e)))
            .transpose()
    }

    /// A non-negative integer column as `u32`.
    fn count(&self, col: &str) -> Result<u32> {
        let v = self.int(col)?;
        u32::try_from(v).map_err(|_| self.corrupt(col, format!("{v} is not a valid count")))
    }

    /// A seconds column as a duration.
    fn duration(&self, col: &str) -> Result<Duration> {
        let v = self.int(col)?;
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| self.corrupt(col, format!("negative duration {v}s")))
    }

    /// A nullable seconds column as a duration.
    fn opt_duration(&self, col: &str) -> Result<Option<Duration>> {
        match self.opt_int(col)? {
            None => Ok(None),
            Some(v) => u64::try_from(v)
                .map(|s| Some(Duration::from_secs(s)))
                .map_err(|_| self.corrupt(col, format!("negative duration {v}s"))),
        }
    }

    /// A nullable integer column as `i32`.
    fn opt_i32(&self, col: &str) -> Result<Option<i32>> {
        self.opt_int(col)?
            .map(|v| {
                i32::try_from(v).map_err(|_| self.corrupt(col, format!("{v} is out of range")))
            })
            .transpose()
    }
}

/// Decodes a column, naming it on failure.
fn get<'r, R, T>(row: &'r R, table: &'static str, col: &str) -> Result<T>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    row.try_get(col).map_err(|cause| Error::Db {
        op: format!("reading column {table}.{col}"),
        cause,
    })
}

/// A row with its table name.
pub(crate) struct Row<'r, R> {
    pub(crate) row: &'r R,
    pub(crate) table: &'static str,
}

fn parse_json(
    row: &impl RowExt,
    col: &str,
    text: Option<String>,
) -> Result<Option<serde_json::Value>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| row.corrupt(col, format!("invalid JSON: {e}")))
    })
    .transpose()
}

fn from_micros(row: &impl RowExt, col: &str, v: i64) -> Result<Timestamp> {
    chrono::DateTime::from_timestamp_micros(v)
        .ok_or_else(|| row.corrupt(col, format!("{v} µs is not a representable time")))
}

impl RowExt for Row<'_, sqlx::sqlite::SqliteRow> {
    fn table(&self) -> &'static str {
        self.table
    }
    fn text(&self, col: &str) -> Result<String> {
        get(self.row, self.table, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        get(self.row, self.table, col)
    }
    fn int(&self, col: &str) -> Result<i64> {
        get(self.row, self.table, col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        get(self.row, self.table, col)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        get(self.row, self.table, col)
    }
    fn ts(&self, col: &str) -> Result<Timestamp> {
        let v: i64 = get(self.row, self.table, col)?;
        from_micros(self, col, v)
    }
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>> {
        let v: Option<i64> = get(self.row, self.table, col)?;
        v.map(|v| from_micros(self, col, v)).transpose()
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        let text: Option<String> = get(self.row, self.table, col)?;
        parse_json(self, col, text)
    }
}

impl RowExt for Row<'_, sqlx::postgres::PgRow> {
    fn table(&self) -> &'static str {
        self.table
    }
    fn text(&self, col: &str) -> Result<String> {
        get(self.row, self.table, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        get(self.row, self.table, col)
    }
    fn int(&self, col: &str) -> Result<i64> {
        get(self.row, self.table, col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        get(self.row, self.table, col)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        get(self.row, self.table, col)
    }
    fn ts(&self, col: &str) -> Result<Timestamp> {
        get(self.row, self.table, col)
    }
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>> {
        get(self.row, self.table, col)
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        get(self.row, self.table, col)
    }
}
