-- What came back from a job's writable mounts (docs/broker.md "Writable
-- mounts"): one row per writable mount, in mount order; either the archive
-- or the reason there is none. Purged by the broker's reaper after the
-- retention. Kept column-for-column in step with ../sqlite/0002_job_outputs.sql.
CREATE TABLE job_outputs (
    job_ref      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL CHECK (position >= 0),
    target       TEXT NOT NULL,
    archive_b64  TEXT,
    error        TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_ref, position),
    CHECK ((archive_b64 IS NULL) <> (error IS NULL))
);
CREATE INDEX job_outputs_created_at ON job_outputs (created_at);

-- Finished job records are deleted after the broker's retention
-- (BASE_BROKER_JOB_RETENTION_DAYS); this serves that purge.
CREATE INDEX jobs_finished_at ON jobs (finished_at);
