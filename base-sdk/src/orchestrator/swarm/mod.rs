//! The Docker Swarm orchestrator, over the Docker Engine API (bollard).
//!
//! Production runs every challenge as a Swarm service on a manager and
//! every evaluation job as a replicated-job on a worker; this module is the
//! only place that knows. It is split the way it is so that what reaches
//! the engine can be reviewed without an engine: `spec` is the pure
//! mapping from BASE's specs to the engine's (snapshot-tested), `client`
//! applies it through bollard and reads statuses back. Bollard's types
//! never leave this module: the public surface is [`SwarmOrchestrator`],
//! [`SwarmError`] and BASE's own types. docs/swarm.md describes the
//! mapping, and what the engine could not express.

mod client;
pub mod nodes;
mod spec;

pub use client::SwarmOrchestrator;
pub use spec::SecretKind;
// The installer labels its objects with the same keys.
pub use spec::{
    CHALLENGE_DATABASE_URL, CHALLENGES_NETWORK, DEFAULT_SHIM_HOST_PATH, GPU_RESOURCE,
    JOBS_INTERNAL_NETWORK, MAX_MOUNT_BYTES, MAX_MOUNT_FILES, OVERLAY_MTU, SECRETS_DIR, SHIM_TARGET,
    WRITABLE_MOUNT_BYTES, challenge_endpoint, secret_name, token_hash8, volume_name,
};
pub use spec::{LABEL_COMPONENT, LABEL_SPEC_SHA256};

use super::OrchestratorError;

/// Why a Swarm operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// BASE's spec cannot be expressed as a Swarm service.
    #[error("{0}")]
    Spec(String),
    /// The engine refused or failed a request. `message` is the engine's
    /// (or the transport's) text; no request body is ever part of it, so it
    /// holds no secret value.
    #[error("{context}: {message}")]
    Docker {
        /// What was being done ("creating service challenge-quiz").
        context: String,
        /// The HTTP status the engine answered, when it answered.
        status: Option<u16>,
        /// The engine's message.
        message: String,
    },
    /// A network of BASE's name exists with weaker properties.
    #[error("{0}")]
    NetworkMismatch(String),
    /// This engine is not a Swarm manager.
    #[error(
        "the Docker engine is not a Swarm manager ({0}); run `docker swarm init` or point DOCKER_HOST at a manager"
    )]
    NotManager(String),
}

impl SwarmError {
    /// Wraps a bollard error with what was being done. Bollard's own type is
    /// flattened to text here so it never leaves the module.
    pub(crate) fn docker(context: impl Into<String>, e: bollard::errors::Error) -> Self {
        let (status, message) = match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => (Some(status_code), message),
            other => (None, other.to_string()),
        };
        Self::Docker {
            context: context.into(),
            status,
            message,
        }
    }

    /// The engine's HTTP status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Docker { status, .. } => *status,
            _ => None,
        }
    }
}

impl From<SwarmError> for OrchestratorError {
    fn from(e: SwarmError) -> Self {
        match e {
            SwarmError::Spec(m) => OrchestratorError::InvalidSpec(m),
            SwarmError::Docker {
                status: Some(404),
                context,
                message,
            } => OrchestratorError::NotFound(format!("{context}: {message}")),
            SwarmError::NetworkMismatch(m) => OrchestratorError::Refused(m),
            e @ SwarmError::NotManager(_) => OrchestratorError::Refused(e.to_string()),
            other @ SwarmError::Docker { .. } => OrchestratorError::Docker(other.to_string()),
        }
    }
}
