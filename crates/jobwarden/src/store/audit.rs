//! The append-only `cleanup_audit_log`: the query type and the row mapping shared by both
//! backends.
//!
//! Append-only twice over: the store has no method that updates or deletes a row, and each
//! backend's migration installs a trigger that aborts any `UPDATE` or `DELETE` on the table
//! (PostgreSQL also `TRUNCATE`), whoever issues it. Removing old rows is therefore an
//! operator's decision made outside jobwarden (drop the trigger, delete, re-create it).

use crate::model::{AuditAction, AuditEntry, Timestamp};

use super::Result;
use super::convert::RowExt;

/// Which audit rows [`super::Store::query_audit`] returns; the default is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only rows about this job.
    pub job_id: Option<String>,
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Only rows with `timestamp >= since`.
    pub since: Option<Timestamp>,
    /// Only rows with `timestamp < until` (half-open, so consecutive windows never overlap).
    pub until: Option<Timestamp>,
    /// At most this many (the oldest first, or the newest with `newest_first`).
    pub limit: Option<u32>,
    /// Only rows about jobs of this organisation.
    pub org: Option<String>,
    /// Newest first (timestamp, then id, descending).
    pub newest_first: bool,
}

/// The columns an insert writes, in bind order (a macro so that `concat!` can use it).
macro_rules! audit_insert_columns {
    () => {
        "timestamp, job_id, resource_type, resource_name, action, reason, initiated_by, \
         success, error_message, dry_run, details"
    };
}
pub(crate) use audit_insert_columns;

/// Reads a `cleanup_audit_log` row.
pub(crate) fn decode_audit(row: &impl RowExt) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.int("id")?,
        timestamp: row.ts("timestamp")?,
        job_id: row.text("job_id")?,
        resource_type: row.text("resource_type")?,
        resource_name: row.text("resource_name")?,
        action: row.parsed("action")?,
        reason: row.text("reason")?,
        initiated_by: row.text("initiated_by")?,
        success: row.flag("success")?,
        error_message: row.opt_text("error_message")?,
        dry_run: row.flag("dry_run")?,
        details: row.opt_json("details")?,
    })
}

/// The `details` column's text.
pub(crate) fn details_text(e: &AuditEntry) -> Option<String> {
    // Serialising a `serde_json::Value` to a string cannot fail.
    e.details.as_ref().map(|d| d.to_string())
}
