-- jobwarden store, SQLite flavour (the PostgreSQL flavour is ../postgres; keep them in step).
-- Timestamps: INTEGER microseconds since the Unix epoch, UTC. Durations: INTEGER seconds.
-- JSON: TEXT. Booleans: INTEGER 0/1. STRICT tables reject values of the wrong type.

-- One row per job id (src/model.rs JobRecord). `steps` holds the escalation steps of the
-- current run (`run_id`) as a JSON array.
CREATE TABLE jobs (
    id                     TEXT PRIMARY KEY NOT NULL,
    run_id                 TEXT NOT NULL,
    attempt                INTEGER NOT NULL CHECK (attempt >= 0),
    runtime                TEXT NOT NULL,
    namespace              TEXT,
    name                   TEXT NOT NULL,
    org                    TEXT,
    job_type               TEXT,
    stage                  TEXT NOT NULL,
    outcome                TEXT,
    reason                 TEXT,
    created_at             INTEGER NOT NULL,
    started_at             INTEGER,
    finished_at            INTEGER,
    timeout_secs           INTEGER NOT NULL CHECK (timeout_secs >= 0),
    grace_secs             INTEGER NOT NULL CHECK (grace_secs >= 0),
    ttl_secs               INTEGER CHECK (ttl_secs >= 0),
    deadline               INTEGER,
    steps                  TEXT NOT NULL DEFAULT '[]' CHECK (json_type(steps) = 'array'),
    heartbeat_timeout_secs INTEGER CHECK (heartbeat_timeout_secs >= 0),
    last_heartbeat         INTEGER,
    recovery_attempts      INTEGER NOT NULL DEFAULT 0 CHECK (recovery_attempts >= 0),
    pid                    INTEGER,
    pid_start_ticks        INTEGER,
    exit_code              INTEGER,
    signal                 INTEGER,
    spec                   TEXT NOT NULL DEFAULT 'null' CHECK (json_valid(spec)),
    dry_run                INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1))
) STRICT;

-- list_jobs(active_only): the few active jobs among many finished ones.
CREATE INDEX jobs_active ON jobs (id) WHERE stage IN ('pre_start', 'running', 'terminating');
CREATE INDEX jobs_runtime ON jobs (runtime, id);

-- The durable cleanup queue (src/store/queue.rs). AUTOINCREMENT: ids are never reused after
-- prune_done, so a late complete() for a pruned task can never hit a new one.
CREATE TABLE cleanup_tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key        TEXT NOT NULL,
    job_id           TEXT,
    kind             TEXT NOT NULL,
    resource_name    TEXT NOT NULL,
    payload          TEXT NOT NULL CHECK (json_valid(payload)),
    priority         INTEGER NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    scheduled_at     INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    CHECK (state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
) STRICT;

-- De-duplication: one unfinished task per key; a done or dead task frees its key.
CREATE UNIQUE INDEX cleanup_tasks_dedup ON cleanup_tasks (dedup_key)
    WHERE state IN ('pending', 'running');
-- claim() and next_due_at(): due pending tasks and expired leases. claim() reads both ranges
-- (a MULTI-INDEX OR) and sorts the due rows by priority, so future tasks are never scanned.
CREATE INDEX cleanup_tasks_due ON cleanup_tasks (scheduled_at) WHERE state = 'pending';
CREATE INDEX cleanup_tasks_lease ON cleanup_tasks (lease_expires_at) WHERE state = 'running';
-- prune_done().
CREATE INDEX cleanup_tasks_done ON cleanup_tasks (updated_at) WHERE state = 'done';
CREATE INDEX cleanup_tasks_job ON cleanup_tasks (job_id, id);

-- The audit log (the seed's columns plus dry_run and details). Append-only: see the triggers.
-- No foreign key to jobs: orphan rows name job ids the store never knew.
CREATE TABLE cleanup_audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp     INTEGER NOT NULL,
    job_id        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    action        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    initiated_by  TEXT NOT NULL,
    success       INTEGER NOT NULL CHECK (success IN (0, 1)),
    error_message TEXT,
    dry_run       INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1)),
    details       TEXT CHECK (details IS NULL OR json_valid(details))
) STRICT;

CREATE INDEX cleanup_audit_log_job ON cleanup_audit_log (job_id, timestamp, id);
CREATE INDEX cleanup_audit_log_time ON cleanup_audit_log (timestamp, id);
CREATE INDEX cleanup_audit_log_action ON cleanup_audit_log (action, timestamp, id);

CREATE TRIGGER cleanup_audit_log_no_update BEFORE UPDATE ON cleanup_audit_log
BEGIN
    SELECT RAISE(ABORT, 'cleanup_audit_log is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER cleanup_audit_log_no_delete BEFORE DELETE ON cleanup_audit_log
BEGIN
    SELECT RAISE(ABORT, 'cleanup_audit_log is append-only: DELETE is not allowed');
END;
