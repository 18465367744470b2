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
// Public so that the agreed names (`spec::LABEL_DEPLOYMENT`, the label
// keys, the naming rules) have one home other modules and binaries can
// name; its functions take and return bollard types, the one place where
// they show, and only for code that builds Docker objects itself (the
// installer).
pub mod spec;

pub use client::SwarmOrchestrator;
pub use spec::SecretKind;
// The installer labels its objects with the same keys.
pub use spec::{
    CHALLENGE_DATABASE_URL, CHALLENGES_NETWORK, DEFAULT_SHIM_HOST_PATH, GPU_RESOURCE,
    JOBS_INTERNAL_NETWORK, MAX_MOUNT_BYTES, MAX_MOUNT_FILES, OVERLAY_MTU, SECRETS_DIR, SHIM_TARGET,
    WRITABLE_MOUNT_BYTES, challenge_endpoint, secret_name, token_hash8, volume_name,
};
pub use spec::{LABEL_COMPONENT, LABEL_SPEC_SHA256};
pub use spec::{LABEL_DEPLOYMENT, Owner, is_ours, owner};

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
    /// An object of BASE's name exists and belongs to another deployment
    /// (`spec::check_owner`); it was neither updated nor removed.
    #[error(
        "{object} already exists and belongs to {owner}, not to deployment '{deployment}'; \
         BASE neither updates nor removes another deployment's objects (use another slug, or \
         remove it through its own deployment)"
    )]
    Foreign {
        /// The object ("service challenge-quiz").
        object: String,
        /// Who owns it ("deployment 'b'").
        owner: String,
        /// The deployment that was refused.
        deployment: String,
    },
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
            e @ SwarmError::Foreign { .. } => OrchestratorError::Foreign(e.to_string()),
            e @ SwarmError::NotManager(_) => OrchestratorError::Refused(e.to_string()),
            other @ SwarmError::Docker { .. } => OrchestratorError::Docker(other.to_string()),
        }
    }
}
