-- jobwarden store, PostgreSQL flavour (the SQLite flavour is ../sqlite; keep them in step).
-- Timestamps: TIMESTAMPTZ (microseconds). Durations: BIGINT seconds. JSON: jsonb.
-- Integers are BIGINT throughout so that both backends decode them as i64.

-- One row per job id (src/model.rs JobRecord). `steps` holds the escalation steps of the
-- current run (`run_id`) as a JSON array.
CREATE TABLE jobs (
    id                     TEXT PRIMARY KEY,
    run_id                 TEXT NOT NULL,
    attempt                BIGINT NOT NULL CHECK (attempt >= 0),
    runtime                TEXT NOT NULL,
    namespace              TEXT,
    name                   TEXT NOT NULL,
    org                    TEXT,
    job_type               TEXT,
    stage                  TEXT NOT NULL,
    outcome                TEXT,
    reason                 TEXT,
    created_at             TIMESTAMPTZ NOT NULL,
    started_at             TIMESTAMPTZ,
    finished_at            TIMESTAMPTZ,
    timeout_secs           BIGINT NOT NULL CHECK (timeout_secs >= 0),
    grace_secs             BIGINT NOT NULL CHECK (grace_secs >= 0),
    ttl_secs               BIGINT CHECK (ttl_secs >= 0),
    deadline               TIMESTAMPTZ,
    steps                  JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(steps) = 'array'),
    heartbeat_timeout_secs BIGINT CHECK (heartbeat_timeout_secs >= 0),
    last_heartbeat         TIMESTAMPTZ,
    recovery_attempts      BIGINT NOT NULL DEFAULT 0 CHECK (recovery_attempts >= 0),
    pid                    BIGINT,
    pid_start_ticks        BIGINT,
    exit_code              BIGINT,
    signal                 BIGINT,
    spec                   JSONB NOT NULL DEFAULT 'null',
    dry_run                BOOLEAN NOT NULL DEFAULT FALSE
);

-- list_jobs(active_only): the few active jobs among many finished ones.
CREATE INDEX jobs_active ON jobs (id) WHERE stage IN ('pre_start', 'running', 'terminating');
CREATE INDEX jobs_runtime ON jobs (runtime, id);

-- The durable cleanup queue (src/store/queue.rs). Identity ids are never reused.
CREATE TABLE cleanup_tasks (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key        TEXT NOT NULL,
    job_id           TEXT,
    kind             TEXT NOT NULL,
    resource_name    TEXT NOT NULL,
    payload          JSONB NOT NULL,
    priority         BIGINT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    scheduled_at     TIMESTAMPTZ NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     BIGINT NOT NULL CHECK (max_attempts >= 1),
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    CHECK (state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- De-duplication: one unfinished task per key; a done or dead task frees its key.
CREATE UNIQUE INDEX cleanup_tasks_dedup ON cleanup_tasks (dedup_key)
    WHERE state IN ('pending', 'running');
-- claim() and next_due_at(): due pending tasks and expired leases. claim() combines both
-- (BitmapOr) and sorts the due rows by priority, so future tasks are never read; checked with
-- EXPLAIN on 100 000 future and 10 due tasks. (An index in claim order was tried and dropped:
-- the planner used it only when nearly every task was due, and it costs every write.)
CREATE INDEX cleanup_tasks_due ON cleanup_tasks (scheduled_at) WHERE state = 'pending';
CREATE INDEX cleanup_tasks_lease ON cleanup_tasks (lease_expires_at) WHERE state = 'running';
-- prune_done().
CREATE INDEX cleanup_tasks_done ON cleanup_tasks (updated_at) WHERE state = 'done';
CREATE INDEX cleanup_tasks_job ON cleanup_tasks (job_id, id);

-- The audit log (the seed's columns plus dry_run and details). Append-only: see the triggers.
-- No foreign key to jobs: orphan rows name job ids the store never knew.
CREATE TABLE cleanup_audit_log (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    timestamp     TIMESTAMPTZ NOT NULL,
    job_id        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    action        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    initiated_by  TEXT NOT NULL,
    success       BOOLEAN NOT NULL,
    error_message TEXT,
    dry_run       BOOLEAN NOT NULL DEFAULT FALSE,
    details       JSONB
);

CREATE INDEX cleanup_audit_log_job ON cleanup_audit_log (job_id, timestamp, id);
CREATE INDEX cleanup_audit_log_time ON cleanup_audit_log (timestamp, id);
CREATE INDEX cleanup_audit_log_action ON cleanup_audit_log (action, timestamp, id);

-- Append-only, whoever connects: UPDATE, DELETE and TRUNCATE abort. Dropping old rows is an
-- operator's decision taken outside jobwarden (drop the triggers, delete, re-create them).
CREATE FUNCTION cleanup_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cleanup_audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER cleanup_audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON cleanup_audit_log
    FOR EACH ROW EXECUTE FUNCTION cleanup_audit_log_append_only();

CREATE TRIGGER cleanup_audit_log_no_truncate
    BEFORE TRUNCATE ON cleanup_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION cleanup_audit_log_append_only();
