//! The two sqlx backends of [`Store`], generated from one body.
//!
//! PostgreSQL and SQLite accept the same SQL here (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING`), and sqlx encodes `DateTime<Utc>` and
//! `Json<T>` for both, so a macro stamps the same implementation onto each
//! pool type. That keeps the backends from drifting apart, which the
//! backend-agnostic contract tests then check.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{Backend, Store, StoreError};
use crate::model::{
    Admission, AuditEntry, BrokerPolicy, Challenge, ChallengeStatus, EmissionPercent, GpuLease,
    JobFilter, JobOutput, JobRecord, NonceKey, Slug, TokenKind, TokenRecord, WeightsSnapshot,
};
use crate::orchestrator::JobState;

/// The PostgreSQL backend (production).
#[derive(Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
}

/// The SQLite backend (the embedded default for development).
#[derive(Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` with a small pool; does not migrate.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the SQLite file
    /// named by `url`; WAL mode
    /// so readers never wait for the epoch writer.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        let opts = SqliteConnectOptions::from_str(url).map_err(StoreError::Unavailable)?;
        // SQLite creates the file but not its directory.
        if let Some(dir) = opts.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Self { pool })
    }
}

/// Opens the store named by a `BASE_DATABASE_URL` and applies migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    let store: Arc<dyn Store> = match scheme {
        "postgres" | "postgresql" => Arc::new(PgStore::connect(url).await?),
        "sqlite" => Arc::new(SqliteStore::connect(url).await?),
        // Never echo the URL itself: it may carry a password.
        other => return Err(StoreError::UnsupportedUrl(other.to_string())),
    };
    store.migrate().await?;
    Ok(store)
}

fn map_err(what: impl Fn() -> String) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
        _ => StoreError::Database(e),
    }
}

fn db_err(e: sqlx::Error) -> StoreError {
    map_err(|| "row".to_string())(e)
}

#[derive(sqlx::FromRow)]
struct ChallengeRow {
    slug: String,
    name: String,
    description: String,
    image: String,
    image_digest: Option<String>,
    version: String,
    emission_percent: f64,
    status: String,
    api_version: String,
    internal_base_url: String,
    required_capabilities: Json<Vec<String>>,
    resources: Json<BTreeMap<String, String>>,
    volumes: Json<BTreeMap<String, String>>,
    env: Json<BTreeMap<String, String>>,
    secrets: Json<Vec<String>>,
    metadata: Json<serde_json::Map<String, serde_json::Value>>,
    broker: Json<BrokerPolicy>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ChallengeRow> for Challenge {
    type Error = StoreError;
    fn try_from(r: ChallengeRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("challenge '{}': {what}", r.slug));
        Ok(Challenge {
            slug: Slug::parse(&r.slug).map_err(|e| corrupt(e.to_string()))?,
            image: r
                .image
                .parse()
                .map_err(|e: crate::registry::image::ImageRefError| corrupt(e.to_string()))?,
            status: ChallengeStatus::from_str(&r.status).map_err(corrupt)?,
            name: r.name,
            description: r.description,
            image_digest: r.image_digest,
            version: r.version,
            emission_percent: EmissionPercent(r.emission_percent),
            api_version: r.api_version,
            internal_base_url: r.internal_base_url,
            required_capabilities: r.required_capabilities.0,
            resources: r.resources.0,
            volumes: r.volumes.0,
            env: r.env.0,
            secrets: r.secrets.0,
            metadata: r.metadata.0,
            broker: r.broker.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    slug: String,
    kind: String,
    token_hash: String,
    hint: String,
    sealed: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<TokenRow> for TokenRecord {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        Ok(TokenRecord {
            slug: Slug::parse(&r.slug).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kind: TokenKind::from_str(&r.kind).map_err(StoreError::Corrupt)?,
            hash: r.token_hash,
            hint: r.hint,
            sealed: r.sealed,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    slug: Option<String>,
    detail: Json<serde_json::Value>,
}

const CHALLENGE_COLUMNS: &str = "slug, name, description, image, image_digest, version, \
    emission_percent, status, api_version, internal_base_url, required_capabilities, resources, \
    volumes, env, secrets, metadata, broker, created_at, updated_at";

const INSERT_AUDIT: &str =
    "INSERT INTO audit_log (at, actor, action, slug, detail) VALUES ($1, $2, $3, $4, $5)";

const INSERT_TOKEN: &str = "INSERT INTO challenge_tokens (slug, kind, token_hash, hint, sealed, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (slug, kind) DO UPDATE SET token_hash = excluded.token_hash, \
     hint = excluded.hint, sealed = excluded.sealed, created_at = excluded.created_at";

const TOKEN_COLUMNS: &str = "slug, kind, token_hash, hint, sealed, created_at";

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    slug: String,
    job_id: String,
    task_id: Option<String>,
    image: String,
    state: String,
    spec: Json<serde_json::Value>,
    node_id: Option<String>,
    gpu_count: i32,
    exit_code: Option<i32>,
    error: Option<String>,
    stdout_tail: String,
    stderr_tail: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    deadline_at: Option<DateTime<Utc>>,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("job '{}': {what}", r.id));
        Ok(JobRecord {
            slug: Slug::parse(&r.slug).map_err(|e| corrupt(e.to_string()))?,
            state: JobState::parse(&r.state)
                .ok_or_else(|| corrupt(format!("unknown state '{}'", r.state)))?,
            gpu_count: u32::try_from(r.gpu_count)
                .map_err(|_| corrupt(format!("gpu_count {}", r.gpu_count)))?,
            id: r.id,
            job_id: r.job_id,
            task_id: r.task_id,
            image: r.image,
            spec: r.spec.0,
            node_id: r.node_id,
            exit_code: r.exit_code.map(i64::from),
            error: r.error,
            stdout_tail: r.stdout_tail,
            stderr_tail: r.stderr_tail,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            deadline_at: r.deadline_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LeaseRow {
    job_ref: String,
    slug: String,
    gpus: i32,
    acquired_at: DateTime<Utc>,
}

const JOB_COLUMNS: &str = "id, slug, job_id, task_id, image, state, spec, node_id, gpu_count, \
    exit_code, error, stdout_tail, stderr_tail, created_at, started_at, finished_at, deadline_at";

/// The states of a job that still holds a slot (and possibly GPUs).
const ACTIVE_STATES: &str = "('queued', 'pulling', 'running')";

/// A count or sum as the database returns it, clamped into `u32`.
fn clamp_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// An exit code as the `INTEGER` column holds it (codes are 0..=255 or
/// small negatives in practice; anything else is clamped, not refused).
fn exit_code_column(code: Option<i64>) -> Option<i32> {
    code.map(|c| i32::try_from(c).unwrap_or(if c < 0 { i32::MIN } else { i32::MAX }))
}

macro_rules! insert_audit {
    ($tx:ident, $audit:expr) => {
        sqlx::query(INSERT_AUDIT)
            .bind($audit.at)
            .bind(&$audit.actor)
            .bind(&$audit.action)
            .bind(&$audit.slug)
            .bind(Json(&$audit.detail))
            .execute(&mut *$tx)
            .await
            .map_err(db_err)?;
    };
}

/// Binds a challenge's mutable fields (name … broker), in column order.
macro_rules! bind_challenge {
    ($q:expr, $c:expr) => {
        $q.bind(&$c.name)
            .bind(&$c.description)
            .bind($c.image.to_string())
            .bind(&$c.image_digest)
            .bind(&$c.version)
            .bind($c.emission_percent.0)
            .bind($c.status.as_str())
            .bind(&$c.api_version)
            .bind(&$c.internal_base_url)
            .bind(Json(&$c.required_capabilities))
            .bind(Json(&$c.resources))
            .bind(Json(&$c.volumes))
            .bind(Json(&$c.env))
            .bind(Json(&$c.secrets))
            .bind(Json(&$c.metadata))
            .bind(Json(&$c.broker))
    };
}

/// Inserts (or replaces, per slug and kind) token rows inside `$tx`.
macro_rules! insert_tokens {
    ($tx:ident, $tokens:expr) => {
        for t in $tokens {
            sqlx::query(INSERT_TOKEN)
                .bind(t.slug.as_str())
                .bind(t.kind.as_str())
                .bind(&t.hash)
                .bind(&t.hint)
                .bind(&t.sealed)
                .bind(t.created_at)
                .execute(&mut *$tx)
                .await
                .map_err(map_err(|| "token".to_string()))?;
        }
    };
}

macro_rules! sql_store {
    ($ty:ty, $backend:expr, $migrations:literal) => {
        #[async_trait]
        impl Store for $ty {
            fn backend(&self) -> Backend {
                $backend
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                sqlx::migrate!($migrations)
                    .run(&self.pool)
                    .await
                    .map_err(StoreError::Migration)
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(StoreError::Unavailable)
            }

            async fn create_challenge(
                &self,
                c: &Challenge,
                tokens: &[TokenRecord],
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let conflict = || format!("Challenge '{}'", c.slug);
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                bind_challenge!(sqlx::query(&format!(
                    "INSERT INTO challenges ({CHALLENGE_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
                ))
                .bind(c.slug.as_str()), c)
                .bind(c.created_at)
                .bind(c.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err(conflict))?;
                insert_tokens!(tx, tokens);
                insert_audit!(tx, audit);
                tx.commit().await.map_err(db_err)
            }

            async fn get_challenge(&self, slug: &Slug) -> Result<Option<Challenge>, StoreError> {
                let row: Option<ChallengeRow> = sqlx::query_as(&format!(
                    "SELECT {CHALLENGE_COLUMNS} FROM challenges WHERE slug = $1"
                ))
                .bind(slug.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                row.map(Challenge::try_from).transpose()
            }

            async fn list_challenges(&self) -> Result<Vec<Challenge>, StoreError> {
                let rows: Vec<ChallengeRow> = sqlx::query_as(&format!(
                    "SELECT {CHALLENGE_COLUMNS} FROM challenges ORDER BY slug"
                ))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.into_iter().map(Challenge::try_from).collect()
            }

            async fn update_challenge(
                &self,
                c: &Challenge,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let done = bind_challenge!(sqlx::query(
                    "UPDATE challenges SET name = $2, description = $3, image = $4, \
                     image_digest = $5, version = $6, emission_percent = $7, status = $8, \
                     api_version = $9, internal_base_url = $10, required_capabilities = $11, \
                     resources = $12, volumes = $13, env = $14, secrets = $15, metadata = $16, \
                     broker = $17, updated_at = $18 WHERE slug = $1",
                )
                .bind(c.slug.as_str()), c)
                .bind(c.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("Challenge '{}'", c.slug)));
                }
                insert_audit!(tx, audit);
                tx.commit().await.map_err(db_err)
            }

            async fn delete_challenge(
                &self,
                slug: &Slug,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // Tokens first: not every SQLite connection may enforce the cascade.
                sqlx::query("DELETE FROM challenge_tokens WHERE slug = $1")
                    .bind(slug.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let done = sqlx::query("DELETE FROM challenges WHERE slug = $1")
                    .bind(slug.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("Challenge '{slug}'")));
                }
                insert_audit!(tx, audit);
                tx.commit().await.map_err(db_err)
            }

            async fn replace_tokens(
                &self,
                tokens: &[TokenRecord],
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                for t in tokens {
                    let exists: Option<(String,)> =
                        sqlx::query_as("SELECT slug FROM challenges WHERE slug = $1")
                            .bind(t.slug.as_str())
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound(format!("Challenge '{}'", t.slug)));
                    }
                }
                insert_tokens!(tx, tokens);
                insert_audit!(tx, audit);
                tx.commit().await.map_err(db_err)
            }

            async fn tokens(&self, slug: &Slug) -> Result<Vec<TokenRecord>, StoreError> {
                let rows: Vec<TokenRow> = sqlx::query_as(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM challenge_tokens WHERE slug = $1 ORDER BY kind"
                ))
                .bind(slug.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.into_iter().map(TokenRecord::try_from).collect()
            }

            async fn find_token(
                &self,
                kind: TokenKind,
                hash: &str,
            ) -> Result<Option<TokenRecord>, StoreError> {
                let row: Option<TokenRow> = sqlx::query_as(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM challenge_tokens WHERE kind = $1 AND token_hash = $2"
                ))
                .bind(kind.as_str())
                .bind(hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                row.map(TokenRecord::try_from).transpose()
            }

            async fn audit_log(
                &self,
                slug: Option<Slug>,
                limit: u32,
            ) -> Result<Vec<AuditEntry>, StoreError> {
                let rows: Vec<AuditRow> = sqlx::query_as(
                    "SELECT id, at, actor, action, slug, detail FROM audit_log \
                     WHERE ($1 IS NULL OR slug = $1) ORDER BY id DESC LIMIT $2",
                )
                .bind(slug.as_ref().map(|s| s.as_str().to_string()))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(rows
                    .into_iter()
                    .map(|r| AuditEntry {
                        id: r.id,
                        at: r.at,
                        actor: r.actor,
                        action: r.action,
                        slug: r.slug,
                        detail: r.detail.0,
                    })
                    .collect())
            }

            async fn reserve_nonce(
                &self,
                key: &NonceKey,
                now: DateTime<Utc>,
                expires_at: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // An expired row of the same key no longer counts as a use.
                sqlx::query(
                    "DELETE FROM miner_nonces WHERE netuid = $1 AND slug = $2 AND hotkey = $3 \
                     AND nonce = $4 AND expires_at <= $5",
                )
                .bind(i32::from(key.netuid))
                .bind(key.slug.as_str())
                .bind(&key.hotkey)
                .bind(&key.nonce)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                let done = sqlx::query(
                    "INSERT INTO miner_nonces (netuid, slug, hotkey, nonce, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(i32::from(key.netuid))
                .bind(key.slug.as_str())
                .bind(&key.hotkey)
                .bind(&key.nonce)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn purge_nonces(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM miner_nonces WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn put_snapshot(
                &self,
                snapshot: &WeightsSnapshot,
                keep: u32,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                sqlx::query("INSERT INTO weight_snapshots (computed_at, body) VALUES ($1, $2)")
                    .bind(snapshot.computed_at)
                    .bind(Json(snapshot))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query(
                    "DELETE FROM weight_snapshots WHERE id NOT IN \
                     (SELECT id FROM weight_snapshots ORDER BY id DESC LIMIT $1)",
                )
                .bind(i64::from(keep.max(1)))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            }

            async fn latest_snapshot(&self) -> Result<Option<WeightsSnapshot>, StoreError> {
                let row: Option<(Json<WeightsSnapshot>,)> = sqlx::query_as(
                    "SELECT body FROM weight_snapshots ORDER BY id DESC LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(row.map(|(j,)| j.0))
            }

            async fn admit_job(
                &self,
                job: &JobRecord,
                max_active: Option<u32>,
                gpu_capacity: u32,
            ) -> Result<Admission, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                if let Some(max) = max_active {
                    let (active,): (i64,) = sqlx::query_as(&format!(
                        "SELECT COUNT(*) FROM jobs WHERE slug = $1 AND state IN {ACTIVE_STATES}"
                    ))
                    .bind(job.slug.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    let active = clamp_u32(active);
                    if active >= max {
                        return Ok(Admission::TooManyJobs { active, max });
                    }
                }
                if job.gpu_count > 0 {
                    let (leased,): (i64,) =
                        sqlx::query_as("SELECT CAST(COALESCE(SUM(gpus), 0) AS BIGINT) FROM gpu_leases")
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    let leased = clamp_u32(leased);
                    if leased.saturating_add(job.gpu_count) > gpu_capacity {
                        return Ok(Admission::NoGpuCapacity {
                            requested: job.gpu_count,
                            leased,
                            capacity: gpu_capacity,
                        });
                    }
                }
                sqlx::query(&format!(
                    "INSERT INTO jobs ({JOB_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                ))
                .bind(&job.id)
                .bind(job.slug.as_str())
                .bind(&job.job_id)
                .bind(&job.task_id)
                .bind(&job.image)
                .bind(job.state.as_str())
                .bind(Json(&job.spec))
                .bind(&job.node_id)
                .bind(i32::try_from(job.gpu_count).unwrap_or(i32::MAX))
                .bind(exit_code_column(job.exit_code))
                .bind(&job.error)
                .bind(&job.stdout_tail)
                .bind(&job.stderr_tail)
                .bind(job.created_at)
                .bind(job.started_at)
                .bind(job.finished_at)
                .bind(job.deadline_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err(|| format!("job '{}'", job.id)))?;
                if job.gpu_count > 0 {
                    sqlx::query(
                        "INSERT INTO gpu_leases (job_ref, slug, node_id, gpus, acquired_at) \
                         VALUES ($1, $2, NULL, $3, $4)",
                    )
                    .bind(&job.id)
                    .bind(job.slug.as_str())
                    .bind(i32::try_from(job.gpu_count).unwrap_or(i32::MAX))
                    .bind(job.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)?;
                Ok(Admission::Admitted)
            }

            async fn update_job(&self, job: &JobRecord) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // Only an unfinished record may change: two writers racing
                // to end a job (a driver and the reaper, or a broker that
                // was thought dead) cannot overwrite each other's ending.
                let done = sqlx::query(&format!(
                    "UPDATE jobs SET state = $2, node_id = $3, exit_code = $4, error = $5, \
                     stdout_tail = $6, stderr_tail = $7, started_at = $8, finished_at = $9, \
                     deadline_at = $10 WHERE id = $1 AND state IN {ACTIVE_STATES}",
                ))
                .bind(&job.id)
                .bind(job.state.as_str())
                .bind(&job.node_id)
                .bind(exit_code_column(job.exit_code))
                .bind(&job.error)
                .bind(&job.stdout_tail)
                .bind(&job.stderr_tail)
                .bind(job.started_at)
                .bind(job.finished_at)
                .bind(job.deadline_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if done.rows_affected() == 0 {
                    let exists: Option<(String,)> =
                        sqlx::query_as("SELECT state FROM jobs WHERE id = $1")
                            .bind(&job.id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    return Err(match exists {
                        Some(_) => StoreError::JobFinished(job.id.clone()),
                        None => StoreError::NotFound(format!("job '{}'", job.id)),
                    });
                }
                if job.state.is_terminal() {
                    sqlx::query("DELETE FROM gpu_leases WHERE job_ref = $1")
                        .bind(&job.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
                let row: Option<JobRow> =
                    sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_err)?;
                row.map(JobRecord::try_from).transpose()
            }

            async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
                let active = if filter.active_only {
                    format!(" AND state IN {ACTIVE_STATES}")
                } else {
                    String::new()
                };
                let rows: Vec<JobRow> = sqlx::query_as(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR slug = $1) \
                     AND ($2 IS NULL OR job_id = $2){active} \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .bind(filter.slug.as_ref().map(|s| s.as_str().to_string()))
                .bind(&filter.job_id)
                .bind(filter.limit.map_or(i64::MAX, i64::from))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.into_iter().map(JobRecord::try_from).collect()
            }

            async fn put_job_outputs(
                &self,
                job_ref: &str,
                outputs: &[JobOutput],
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let state: Option<(String,)> =
                    sqlx::query_as("SELECT state FROM jobs WHERE id = $1")
                        .bind(job_ref)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                match state.as_ref().map(|(s,)| JobState::parse(s)) {
                    None => return Err(StoreError::NotFound(format!("job '{job_ref}'"))),
                    Some(Some(s)) if !s.is_terminal() => {}
                    Some(_) => return Err(StoreError::JobFinished(job_ref.to_string())),
                }
                sqlx::query("DELETE FROM job_outputs WHERE job_ref = $1")
                    .bind(job_ref)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                for (position, out) in outputs.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO job_outputs (job_ref, position, target, archive_b64, error, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(job_ref)
                    .bind(i32::try_from(position).unwrap_or(i32::MAX))
                    .bind(&out.target)
                    .bind(&out.archive_b64)
                    .bind(&out.error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
                tx.commit().await.map_err(db_err)
            }

            async fn job_outputs(&self, job_ref: &str) -> Result<Vec<JobOutput>, StoreError> {
                let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT target, archive_b64, error FROM job_outputs WHERE job_ref = $1 ORDER BY position",
                )
                .bind(job_ref)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(rows
                    .into_iter()
                    .map(|(target, archive_b64, error)| JobOutput {
                        target,
                        archive_b64,
                        error,
                    })
                    .collect())
            }

            async fn purge_job_outputs(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM job_outputs WHERE created_at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn purge_jobs(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // Outputs first: SQLite enforces the foreign key's cascade
                // only with foreign_keys on, so nothing relies on it.
                let finished = format!(
                    "SELECT id FROM jobs WHERE state NOT IN {ACTIVE_STATES} AND finished_at < $1"
                );
                sqlx::query(&format!("DELETE FROM job_outputs WHERE job_ref IN ({finished})"))
                    .bind(before)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let done = sqlx::query(&format!(
                    "DELETE FROM jobs WHERE state NOT IN {ACTIVE_STATES} AND finished_at < $1"
                ))
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(done.rows_affected())
            }

            async fn gpu_leases(&self) -> Result<Vec<GpuLease>, StoreError> {
                let rows: Vec<LeaseRow> = sqlx::query_as(
                    "SELECT job_ref, slug, gpus, acquired_at FROM gpu_leases ORDER BY acquired_at, job_ref",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.into_iter()
                    .map(|r| {
                        Ok(GpuLease {
                            slug: Slug::parse(&r.slug)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            gpus: u32::try_from(r.gpus)
                                .map_err(|_| StoreError::Corrupt(format!("lease gpus {}", r.gpus)))?,
                            job_ref: r.job_ref,
                            acquired_at: r.acquired_at,
                        })
                    })
                    .collect()
            }
        }
    };
}

sql_store!(PgStore, Backend::Postgres, "migrations/postgres");
sql_store!(SqliteStore, Backend::Sqlite, "migrations/sqlite");
