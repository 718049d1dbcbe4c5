//! Conversions between model values and column values, shared by both backends.
//!
//! [`RowExt`] reads a column as a model-level value (a timestamp, a duration in seconds, a
//! JSON document) whatever the backend's column type, so that rows are decoded by one
//! function per table ([`super::jobs::decode_job`], …) instead of one per backend. It is
//! implemented once, for [`Row`] over any backend's row; [`Columns`] holds the two column
//! types that really differ (timestamps and JSON).
//!
//! What it must not do: know a table's columns (the table modules do) or run a query.

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
    /// A nullable timestamp column.
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>>;
    /// A nullable JSON column.
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>>;

    /// A timestamp column.
    fn ts(&self, col: &str) -> Result<Timestamp> {
        self.opt_ts(col)?.ok_or_else(|| self.null(col))
    }

    /// A JSON column.
    fn json(&self, col: &str) -> Result<serde_json::Value> {
        self.opt_json(col)?.ok_or_else(|| self.null(col))
    }

    /// The error for a NULL where the schema has none.
    fn null(&self, col: &str) -> Error {
        self.corrupt(col, "NULL in a NOT NULL column".into())
    }

    /// An error naming this column.
    fn corrupt(&self, col: &str, problem: String) -> Error {
        corrupt(self.table(), col, problem)
    }

    /// A column holding one of a string enum's names.
    fn parsed<T>(&self, col: &str) -> Result<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let text = self.text(col)?;
        text.parse::<T>()
            .map_err(|e| self.corrupt(col, e.to_string()))
    }

    /// A nullable column holding one of a string enum's names.
    fn opt_parsed<T>(&self, col: &str) -> Result<Option<T>>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.opt_text(col)?
            .map(|s| s.parse::<T>().map_err(|e| self.corrupt(col, e.to_string())))
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

/// The error for a stored value that cannot be read back.
fn corrupt(table: &str, col: &str, problem: String) -> Error {
    Error::Corrupt {
        what: format!("{table}.{col}"),
        problem,
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

/// A `jobs` row.
pub(crate) fn job_row<R>(row: &R) -> Row<'_, R> {
    Row { row, table: "jobs" }
}

/// A `cleanup_tasks` row.
pub(crate) fn task_row<R>(row: &R) -> Row<'_, R> {
    Row {
        row,
        table: "cleanup_tasks",
    }
}

/// A `cleanup_audit_log` row.
pub(crate) fn audit_row<R>(row: &R) -> Row<'_, R> {
    Row {
        row,
        table: "cleanup_audit_log",
    }
}

/// How a backend's row holds the two kinds of value whose column types differ: timestamps
/// (SQLite `INTEGER` microseconds, PostgreSQL `TIMESTAMPTZ`) and JSON (`TEXT`, `jsonb`).
pub(crate) trait Columns: sqlx::Row + Sized {
    /// A nullable timestamp column.
    fn opt_ts(row: &Row<'_, Self>, col: &str) -> Result<Option<Timestamp>>;
    /// A nullable JSON column.
    fn opt_json(row: &Row<'_, Self>, col: &str) -> Result<Option<serde_json::Value>>;
}

impl Columns for sqlx::sqlite::SqliteRow {
    fn opt_ts(row: &Row<'_, Self>, col: &str) -> Result<Option<Timestamp>> {
        let v: Option<i64> = get(row.row, row.table, col)?;
        v.map(|v| {
            chrono::DateTime::from_timestamp_micros(v).ok_or_else(|| {
                corrupt(
                    row.table,
                    col,
                    format!("{v} µs is not a representable time"),
                )
            })
        })
        .transpose()
    }

    fn opt_json(row: &Row<'_, Self>, col: &str) -> Result<Option<serde_json::Value>> {
        let text: Option<String> = get(row.row, row.table, col)?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| corrupt(row.table, col, format!("invalid JSON: {e}")))
        })
        .transpose()
    }
}

impl Columns for sqlx::postgres::PgRow {
    fn opt_ts(row: &Row<'_, Self>, col: &str) -> Result<Option<Timestamp>> {
        get(row.row, row.table, col)
    }

    fn opt_json(row: &Row<'_, Self>, col: &str) -> Result<Option<serde_json::Value>> {
        get(row.row, row.table, col)
    }
}

impl<R> RowExt for Row<'_, R>
where
    R: Columns,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>> {
        R::opt_ts(self, col)
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        R::opt_json(self, col)
    }
}
