-- BASE control-plane schema (PostgreSQL). Kept column-for-column in step with
-- ../sqlite/0001_control_plane.sql: the store code runs the same SQL on both.

CREATE TABLE challenges (
    slug                  TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    image                 TEXT NOT NULL,
    image_digest          TEXT,
    version               TEXT NOT NULL,
    emission_percent      DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (emission_percent >= 0),
    status                TEXT NOT NULL DEFAULT 'draft'
                          CHECK (status IN ('draft', 'active', 'inactive', 'disabled')),
    api_version           TEXT NOT NULL DEFAULT '1.0',
    internal_base_url     TEXT NOT NULL,
    required_capabilities JSONB NOT NULL DEFAULT '[]',
    resources             JSONB NOT NULL DEFAULT '{}',
    volumes               JSONB NOT NULL DEFAULT '{}',
    env                   JSONB NOT NULL DEFAULT '{}',
    secrets               JSONB NOT NULL DEFAULT '[]',
    metadata              JSONB NOT NULL DEFAULT '{}',
    broker                JSONB NOT NULL DEFAULT '{}',
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);

-- Only a hash and a hint of each token; the cleartext is shown once at issue.
CREATE TABLE challenge_tokens (
    slug        TEXT NOT NULL REFERENCES challenges (slug) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('challenge', 'docker_broker')),
    token_hash  TEXT NOT NULL UNIQUE,
    hint        TEXT NOT NULL,
    -- The cleartext sealed under the master's key (see base_sdk::vault),
    -- because the master must present it later; NULL if no key was set.
    sealed      TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (slug, kind)
);

-- Miner request nonces: unique per (netuid, slug, hotkey), kept 24 h.
CREATE TABLE miner_nonces (
    netuid      INTEGER NOT NULL,
    slug        TEXT NOT NULL,
    hotkey      TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (netuid, slug, hotkey, nonce)
);
CREATE INDEX miner_nonces_expires_at ON miner_nonces (expires_at);

-- One row per epoch; the newest is served after a restart.
CREATE TABLE weight_snapshots (
    id           BIGSERIAL PRIMARY KEY,
    computed_at  TIMESTAMPTZ NOT NULL,
    body         JSONB NOT NULL
);
CREATE INDEX weight_snapshots_computed_at ON weight_snapshots (computed_at);

-- Broker jobs. `id` is the broker's own id; (slug, job_id) is the caller's.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    slug         TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    task_id      TEXT,
    image        TEXT NOT NULL,
    state        TEXT NOT NULL
                 CHECK (state IN ('queued', 'pulling', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled')),
    spec         JSONB NOT NULL,
    service_id   TEXT,
    node_id      TEXT,
    gpu_count    INTEGER NOT NULL DEFAULT 0 CHECK (gpu_count >= 0),
    exit_code    INTEGER,
    error        TEXT,
    stdout_tail  TEXT NOT NULL DEFAULT '',
    stderr_tail  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    deadline_at  TIMESTAMPTZ
);
CREATE INDEX jobs_slug_job_id ON jobs (slug, job_id);
CREATE INDEX jobs_state ON jobs (state);

-- GPU capacity leases: held from before a GPU job's service is created until
-- it is cleaned up; the broker recovers them at start.
CREATE TABLE gpu_leases (
    job_ref      TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    slug         TEXT NOT NULL,
    node_id      TEXT,
    gpus         INTEGER NOT NULL CHECK (gpus > 0),
    acquired_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    slug    TEXT,
    detail  JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_slug ON audit_log (slug);
