//! Running things on a cluster: long-lived challenge services and
//! short evaluation jobs, behind one trait.
//!
//! The trait speaks BASE's types only, so the supervisor, the broker and
//! the weight collector never see Docker's; `swarm` (production) and
//! `process` (the embedded development default) implement it.

pub mod process;

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
    pub fn from_record(c: &Challenge, secrets: ChallengeSecrets, broker_url: Option<String>) -> Self {
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

/// Manages challenge services (jobs join with the broker).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Orchestrator: Send + Sync {
    /// Short name (`swarm`, `process`).
    fn name(&self) -> &'static str;

    /// Starts the service, or updates it when the spec changed; idempotent.
    async fn ensure_challenge(&self, spec: &ChallengeSpec) -> Result<ServiceStatus, OrchestratorError>;

    /// Stops and removes the service; its data is kept unless `purge_data`.
    async fn remove_challenge(&self, slug: &Slug, purge_data: bool) -> Result<(), OrchestratorError>;

    /// The service's status (`Missing` when absent).
    async fn challenge_status(&self, slug: &Slug) -> Result<ServiceStatus, OrchestratorError>;

    /// Every challenge service this orchestrator runs, including ones no
    /// record explains (so the reconciler can remove them).
    async fn list_challenges(&self) -> Result<Vec<ServiceStatus>, OrchestratorError>;
}
