//! Control-plane persistence behind one trait, with PostgreSQL (production)
//! and SQLite (embedded default) backends.
//!
//! Every write that an operator makes carries its [`AuditEntry`] into the
//! same transaction, so the audit log cannot miss a change and a failed
//! write leaves neither the change nor its audit row behind.

mod sql;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{
    Admission, AuditEntry, Challenge, GpuLease, JobFilter, JobOutput, JobRecord, NonceKey, Slug,
    TokenKind, TokenRecord, WeightsSnapshot,
};

pub use sql::{PgStore, SqliteStore, connect};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the connection.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A unique constraint refused the write.
    #[error("{0} already exists")]
    Conflict(String),
    /// The row the write was about does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A stored row could not be read back into BASE's types.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The URL names no supported database.
    #[error(
        "unsupported database URL scheme '{0}': expected postgres://, postgresql:// or sqlite://"
    )]
    UnsupportedUrl(String),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// The job has already reached a terminal state; finished records are
    /// never rewritten (the first ending recorded wins).
    #[error("job '{0}' has already finished")]
    JobFinished(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// Which engine a store runs on; production policy requires PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// The control plane's persistent state.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync {
    /// Which engine this is.
    fn backend(&self) -> Backend;

    /// Applies pending migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts a challenge with its tokens and audit entry, all or nothing.
    /// A duplicate slug is [`StoreError::Conflict`].
    async fn create_challenge(
        &self,
        challenge: &Challenge,
        tokens: &[TokenRecord],
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// One challenge by slug.
    async fn get_challenge(&self, slug: &Slug) -> Result<Option<Challenge>, StoreError>;

    /// Every challenge, ordered by slug.
    async fn list_challenges(&self) -> Result<Vec<Challenge>, StoreError>;

    /// Replaces a challenge's mutable fields (everything but slug and
    /// `created_at`) and records the audit entry.
    async fn update_challenge(
        &self,
        challenge: &Challenge,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Deletes a challenge and its tokens; `NotFound` when absent.
    async fn delete_challenge(&self, slug: &Slug, audit: &AuditEntry) -> Result<(), StoreError>;

    /// Replaces the given tokens of an existing challenge (rotation).
    async fn replace_tokens(
        &self,
        tokens: &[TokenRecord],
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// The token records (hash and hint) of a challenge.
    async fn tokens(&self, slug: &Slug) -> Result<Vec<TokenRecord>, StoreError>;

    /// Finds the challenge that owns a token of `kind` with this hash.
    async fn find_token(
        &self,
        kind: TokenKind,
        hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// The newest audit entries first, optionally for one challenge.
    async fn audit_log(
        &self,
        slug: Option<Slug>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Reserves a miner nonce; `false` when it was already used and has not
    /// expired.
    async fn reserve_nonce(
        &self,
        key: &NonceKey,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Deletes nonces that expired before `now`; returns how many.
    async fn purge_nonces(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Stores an epoch's snapshot and keeps at most `keep` of the newest.
    async fn put_snapshot(&self, snapshot: &WeightsSnapshot, keep: u32) -> Result<(), StoreError>;

    /// The newest snapshot, if any epoch completed.
    async fn latest_snapshot(&self) -> Result<Option<WeightsSnapshot>, StoreError>;

    /// Records a new job and, when it asks for GPUs, its lease, in one
    /// transaction; refused (nothing written) when the challenge already
    /// has `max_active` unfinished jobs or fewer than `job.gpu_count` of
    /// `gpu_capacity` GPUs are unleased. Callers serialise admissions (one
    /// broker per cluster), so the count and the insert cannot interleave.
    async fn admit_job(
        &self,
        job: &JobRecord,
        max_active: Option<u32>,
        gpu_capacity: u32,
    ) -> Result<Admission, StoreError>;

    /// Writes a job's state, timings, outcome and output tails. When the
    /// new state is terminal its GPU lease is released in the same
    /// transaction, so no path that ends a job can keep GPUs leased. A
    /// record that is already terminal is left as it is and the call fails
    /// with [`StoreError::JobFinished`].
    async fn update_job(&self, job: &JobRecord) -> Result<(), StoreError>;

    /// One job record.
    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// Job records, newest first.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;

    /// The GPU leases held now.
    async fn gpu_leases(&self) -> Result<Vec<GpuLease>, StoreError>;

    /// Stores what came back from an unfinished job's writable mounts (in
    /// mount order), replacing what was stored before; the broker calls it
    /// just before the terminal [`update_job`](Store::update_job). Fails
    /// with [`StoreError::JobFinished`] once the job has ended (the ending
    /// that won keeps what it stored) and `NotFound` for an unknown job.
    async fn put_job_outputs(
        &self,
        job_ref: &str,
        outputs: &[JobOutput],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// What came back from a job's writable mounts, in mount order (empty
    /// when it had none, or they were purged).
    async fn job_outputs(&self, job_ref: &str) -> Result<Vec<JobOutput>, StoreError>;

    /// Deletes job outputs stored before `before`; returns how many.
    async fn purge_job_outputs(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Deletes the records of jobs that ended before `before` (with their
    /// outputs); unfinished jobs are never touched. Returns how many.
    async fn purge_jobs(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}
