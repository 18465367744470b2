//! Running things on a cluster: long-lived challenge services and
//! short evaluation jobs, behind one trait.
//!
//! The trait speaks BASE's types only, so the supervisor, the broker and
//! the weight collector never see Docker's; `swarm` (production) and
//! `process` (the embedded development default) implement it.

pub mod process;
pub mod readiness;
pub mod resources;
pub mod swarm;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::model::{Challenge, ImageRef, Slug};

/// Why an orchestrator operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The orchestrator cannot run this image (e.g. the process
    /// orchestrator has no program registered for it).
    #[error("cannot run image '{image}': {reason}")]
    UnsupportedImage {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// The thing asked about does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The spec is not acceptable to this orchestrator.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// This orchestrator is refused by policy (process in production).
    #[error("{0}")]
    Refused(String),
    /// The cluster or OS failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The backend answered with an error.
    #[error("{0}")]
    Backend(String),
    /// An object of the name this deployment needs exists and belongs to
    /// another deployment on the same cluster; it was left untouched. The
    /// message names the object and its owner.
    #[error("{0}")]
    Foreign(String),
    /// The Docker engine refused or failed a request (the message names
    /// the operation; it never holds a secret value).
    #[error("docker: {0}")]
    Docker(String),
}

/// The two tokens a challenge service receives as secret files.
#[derive(Clone)]
pub struct ChallengeSecrets {
    /// What the master presents to the challenge.
    pub challenge_token: SecretString,
    /// What the challenge presents to the broker.
    pub broker_token: SecretString,
}

impl std::fmt::Debug for ChallengeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeSecrets([REDACTED])")
    }
}

/// Everything needed to run one challenge service.
#[derive(Debug, Clone)]
pub struct ChallengeSpec {
    /// Identifier; names the service, volume and secrets.
    pub slug: Slug,
    /// The image to run.
    pub image: ImageRef,
    /// The record's version (readiness compares `/version` with it).
    pub version: String,
    /// Operator env from the record (never the control-plane DB URL).
    pub env: BTreeMap<String, String>,
    /// Resource requests from the record.
    pub resources: BTreeMap<String, String>,
    /// The tokens, delivered as secret files.
    pub secrets: ChallengeSecrets,
    /// The broker URL the challenge is told about, if a broker runs.
    pub broker_url: Option<String>,
}

impl ChallengeSpec {
    /// The spec for a challenge record with its revealed tokens.
    pub fn from_record(
        c: &Challenge,
        secrets: ChallengeSecrets,
        broker_url: Option<String>,
    ) -> Self {
        Self {
            slug: c.slug.clone(),
            image: c.image.clone(),
            version: c.version.clone(),
            env: c.env.clone(),
            resources: c.resources.clone(),
            secrets,
            broker_url,
        }
    }
}

/// What a challenge service is doing, as the cluster reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Created, not yet running.
    Starting,
    /// Running.
    Running,
    /// Exited or crashed; the reconciler will restart it.
    Failed,
    /// Not present.
    Missing,
}

/// A challenge service's observed status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Which challenge.
    pub slug: Slug,
    /// State.
    pub state: ServiceState,
    /// The image it runs.
    pub image: Option<String>,
    /// Where the master reaches it, when the orchestrator decides that
    /// (the process orchestrator's loopback port); `None` means the
    /// record's `internal_base_url`.
    pub endpoint: Option<String>,
    /// Extra detail (exit status, scheduler message).
    pub message: Option<String>,
    /// When it was last (re)started.
    pub started_at: Option<DateTime<Utc>>,
}

/// Where a job's network traffic may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobNetwork {
    /// No route out: the internal encrypted overlay `base_jobs_internal`.
    None,
    /// The orchestrator's default network for jobs.
    Default,
    /// A named `base_*` network meant for jobs (never the control plane's).
    Named(String),
}

/// A bind of untrusted content into a job (the broker extracts and checks
/// archives before a job ever sees them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMount {
    /// Path inside the job.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Files to place there: path relative to `target` → contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Hardening and resource limits of a job (CONTRACTS.md §4 defaults are
/// applied by the broker before this is built).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLimits {
    /// CPU limit in cores.
    pub cpus: f64,
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// Process limit.
    pub pids: i64,
    /// GPUs (generic resource `NVIDIA-GPU`); `None` = CPU only.
    pub gpus: Option<u32>,
    /// Network.
    pub network: JobNetwork,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// `uid[:gid]` to run as.
    pub user: Option<String>,
    /// tmpfs mounts: `path:options` (e.g. `/tmp:rw,noexec,nosuid,size=512m`).
    pub tmpfs: Vec<String>,
    /// `name=soft:hard` ulimits.
    pub ulimits: Vec<String>,
    /// Capabilities dropped (`ALL`).
    pub cap_drop: Vec<String>,
    /// Security options (`no-new-privileges`).
    pub security_opt: Vec<String>,
    /// Run an init process as PID 1.
    pub init: bool,
}

/// One evaluation job to run to completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The broker's unique id for it (names the service `base-job-<id>`).
    pub id: String,
    /// The challenge that asked.
    pub slug: Slug,
    /// The caller's job id (CONTRACTS.md §4 `job_id`).
    pub job_id: String,
    /// The caller's task id.
    pub task_id: Option<String>,
    /// Image.
    pub image: ImageRef,
    /// argv.
    pub command: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Extra labels (never overriding `base.*`).
    pub labels: BTreeMap<String, String>,
    /// Limits and hardening.
    pub limits: JobLimits,
    /// Content mounted into the job.
    pub mounts: Vec<JobMount>,
    /// How long the job may run once started.
    pub timeout_seconds: u64,
    /// When the reaper removes it at the latest (stored as a label so a
    /// restarted master can still act on it).
    pub deadline_at: DateTime<Utc>,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, waiting for a node.
    Queued,
    /// Its image is being fetched.
    Pulling,
    /// Its process runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero or could not start.
    Failed,
    /// Removed at its deadline.
    TimedOut,
    /// Cancelled by its owner.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 7] = [
        Self::Queued,
        Self::Pulling,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    /// The wire and database name (`timed_out`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Pulling => "pulling",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobState::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether the job will not change state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }
}

/// A job's observed status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The broker's id.
    pub id: String,
    /// The challenge.
    pub slug: Slug,
    /// State.
    pub state: JobState,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
    /// Node it ran on.
    pub node_id: Option<String>,
    /// When its process started (timeouts count from here).
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Scheduler or exit detail (e.g. "no suitable node (insufficient resources)").
    pub message: Option<String>,
    /// The hard deadline label: by then the job is removed whatever its
    /// state (covers jobs that never start, e.g. an image that never pulls).
    pub deadline_at: Option<DateTime<Utc>>,
    /// How long the job may run once started (`base.timeout` label), so a
    /// restarted reaper can time it out from `started_at` without the
    /// broker's records.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// Tail-capped output of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobLogs {
    /// The last bytes of stdout (lossy UTF-8).
    pub stdout: String,
    /// The last bytes of stderr.
    pub stderr: String,
    /// Whether either stream was cut.
    pub truncated: bool,
}

/// Which output stream a chunk of job output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One piece of a job's output, as it is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Which stream.
    pub stream: LogStreamKind,
    /// The bytes, as written by the job.
    pub data: bytes::Bytes,
}

/// The contents of a job's writable mounts, in order: each a gzip tar, or
/// why it did not come back.
pub type JobOutputs = Vec<Result<Vec<u8>, base_shim::frame::OutputError>>;

/// A live stream of a job's output, ending when the job ends.
pub type LogStream = futures::stream::BoxStream<'static, Result<LogChunk, OrchestratorError>>;

/// Manages challenge services and evaluation jobs.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Orchestrator: Send + Sync {
    /// Short name (`swarm`, `process`).
    fn name(&self) -> &'static str;

    /// Starts the service, or updates it when the spec changed; idempotent.
    async fn ensure_challenge(
        &self,
        spec: &ChallengeSpec,
    ) -> Result<ServiceStatus, OrchestratorError>;

    /// Stops and removes the service; its data is kept unless `purge_data`.
    async fn remove_challenge(
        &self,
        slug: &Slug,
        purge_data: bool,
    ) -> Result<(), OrchestratorError>;

    /// The service's status (`Missing` when absent).
    async fn challenge_status(&self, slug: &Slug) -> Result<ServiceStatus, OrchestratorError>;

    /// Every challenge service this orchestrator runs, including ones no
    /// record explains (so the reconciler can remove them).
    async fn list_challenges(&self) -> Result<Vec<ServiceStatus>, OrchestratorError>;

    /// Starts a job; returns once it is created (not finished).
    async fn run_job(&self, spec: &JobSpec) -> Result<JobStatus, OrchestratorError>;

    /// A job's current status.
    async fn job_status(&self, id: &str) -> Result<JobStatus, OrchestratorError>;

    /// Waits until the job is terminal or `timeout` passes (then returns
    /// its status as it is), without polling per job where the backend has
    /// an event stream.
    async fn wait_job(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<JobStatus, OrchestratorError>;

    /// The tail (at most `max_bytes` per stream) of a job's output.
    async fn job_logs(&self, id: &str, max_bytes: usize) -> Result<JobLogs, OrchestratorError>;

    /// What a job that ended by itself left in its writable mounts: one
    /// entry per writable mount of its spec (`writable` of them, in spec
    /// order), each the mount's contents as a gzip tar or why they did not
    /// come back. Called before [`remove_job`](Orchestrator::remove_job),
    /// while the job's output can still be read.
    async fn job_outputs(&self, id: &str, writable: usize)
    -> Result<JobOutputs, OrchestratorError>;

    /// Stops a job and removes everything it created; idempotent.
    async fn remove_job(&self, id: &str) -> Result<(), OrchestratorError>;

    /// Every job this orchestrator knows, optionally for one challenge
    /// (rebuilt from the backend's labels, so it survives a restart).
    async fn list_jobs(&self, slug: Option<Slug>) -> Result<Vec<JobStatus>, OrchestratorError>;

    /// Output of a job from its start, following it until the job ends.
    async fn follow_job_logs(&self, id: &str) -> Result<LogStream, OrchestratorError>;

    /// Removes what finished jobs left behind that
    /// [`remove_job`](Orchestrator::remove_job) could not (Swarm: the
    /// configs of mounted files whose job service is gone, after a crash or
    /// a failed removal); returns how many objects it removed. The broker's
    /// reaper calls it on every pass. Nothing to do by default.
    async fn prune_job_leftovers(&self) -> Result<usize, OrchestratorError> {
        Ok(0)
    }

    /// How many GPUs jobs can use in all, as the cluster advertises them
    /// (Swarm: the `NVIDIA-GPU` generic resources of ready GPU workers).
    /// The broker's lease ledger never hands out more than this.
    async fn gpu_capacity(&self) -> Result<u32, OrchestratorError>;
}
