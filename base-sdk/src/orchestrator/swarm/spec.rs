//! Pure mapping from BASE's specs to Docker Engine API specs, and back from
//! what the engine reports to BASE's statuses.
//!
//! Everything here is a function of its arguments — no I/O, no clock — so
//! the exact JSON that reaches the engine is pinned by snapshot tests
//! (`base-sdk/tests/fixtures/swarm/*.json`) and the rules (names, labels,
//! env, hardening, limits) are reviewed in one place. The client in
//! `client.rs` only fetches, applies and compares. Bollard types appear in
//! signatures here, which is why this module is private to `swarm`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::Engine as _;
use bollard::models::{
    Config, ConfigSpec, Driver, EndpointSpec, EndpointSpecModeEnum, GenericResourcesInner,
    GenericResourcesInnerDiscreteResourceSpec, Limit, Mount, MountTmpfsOptions, MountType,
    MountVolumeOptions, NetworkAttachmentConfig, NetworkCreateRequest, ResourceObject,
    ResourcesUlimits, SecretSpec, Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecModeReplicatedJob, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecFile1, TaskSpecContainerSpecPrivileges, TaskSpecContainerSpecSecrets,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState, VolumeCreateRequest,
};
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::SwarmError;
use crate::model::{DeploymentId, Slug};
use crate::orchestrator::{
    ChallengeSpec, JobNetwork, JobSpec, JobState, JobStatus, ServiceState, ServiceStatus,
};

/// The encrypted overlay the master and the challenge services share.
pub const CHALLENGES_NETWORK: &str = "base_challenges";
/// The encrypted, internal overlay of jobs with `network: none`: no route
/// out, and nothing else on it.
pub const JOBS_INTERNAL_NETWORK: &str = "base_jobs_internal";
/// Overlay MTU: 1500 minus VXLAN (50) and IPsec ESP overhead, the value
/// CONTRACTS.md §7 fixes for both networks.
pub const OVERLAY_MTU: u32 = 1450;
/// The port every challenge serves on (CONTRACTS.md §1), never published.
pub const CHALLENGE_PORT: u16 = 8000;
/// Where a challenge finds its token files.
pub const SECRETS_DIR: &str = "/run/secrets/base";
/// The challenge's SQLite database inside the `/data` volume.
pub const CHALLENGE_DATABASE_URL: &str = "sqlite+aiosqlite:////data/challenge.sqlite3";
/// The generic resource a GPU job reserves (case-sensitive; it must match
/// the `node-generic-resources` of GPU workers' daemon.json).
pub const GPU_RESOURCE: &str = "NVIDIA-GPU";

/// Label: which kind of BASE object this is (`challenge`, `job`, …).
pub const LABEL_COMPONENT: &str = "base.component";
/// Label: the deployment that owns the object ([`DeploymentId`]). Every
/// object BASE creates carries it; the reconciler, the reaper and the
/// orphan sweeps act only where it names their own deployment (or, for
/// the default deployment, where it is absent: see [`owner`]).
pub const LABEL_DEPLOYMENT: &str = "base.deployment";
/// Label: the challenge a service, secret or job belongs to.
pub const LABEL_CHALLENGE: &str = "base.challenge";
/// Label on the data volume (the name the issue fixes for volumes).
pub const LABEL_VOLUME_SLUG: &str = "base.challenge.slug";
/// Label: which of the two tokens a secret holds.
pub const LABEL_SECRET_KIND: &str = "base.secret";
/// Label: digest of the desired service spec, so an ensure can tell
/// "unchanged" without diffing what the engine normalised.
pub const LABEL_SPEC_SHA256: &str = "base.spec.sha256";
/// Label: the record's version (for operators reading `docker service ls`).
pub const LABEL_VERSION: &str = "base.challenge.version";
/// Label: the caller's job id.
pub const LABEL_JOB: &str = "base.job";
/// Label: the caller's task id.
pub const LABEL_TASK: &str = "base.task";
/// Label: the broker's unique job id (names the service).
pub const LABEL_JOB_ID: &str = "base.job.id";
/// Label: RFC 3339 deadline, so a restarted reaper can act.
pub const LABEL_DEADLINE: &str = "base.deadline";
/// Label on a job service: seconds it may run once its task started.
pub const LABEL_TIMEOUT: &str = "base.timeout";

/// `base.component` values.
pub const COMPONENT_CHALLENGE: &str = "challenge";
/// `base.component` of challenge token secrets.
pub const COMPONENT_SECRET: &str = "challenge-secret";
/// `base.component` of challenge data volumes.
pub const COMPONENT_DATA: &str = "challenge-data";
/// `base.component` of jobs.
pub const COMPONENT_JOB: &str = "job";
/// `base.component` of the overlays BASE creates.
pub const COMPONENT_NETWORK: &str = "network";
/// `base.component` of the configs that carry a job's mounted files.
pub const COMPONENT_JOB_MOUNT: &str = "job-mount";
/// `base.component` of a job's own network (`network: none`).
pub const COMPONENT_JOB_NETWORK: &str = "job-network";

/// Largest file a job mount may hold: one Swarm config each, and Docker's
/// documented config limit is 500 KiB, checked as `size < 512000` (newer
/// engines allow 1000 KiB; BASE holds every engine to the smaller one).
pub const MAX_MOUNT_FILE_BYTES: usize = 511_999;
/// Most files across all mounts of one job (each is a config object in
/// the raft store, created and removed per job).
pub const MAX_MOUNT_FILES: usize = 256;
/// Most bytes across all mounts of one job: everything is replicated to
/// every manager through raft, so a job may not put more there than this.
pub const MAX_MOUNT_BYTES: usize = 16 << 20;
/// The Go template a config of an empty file holds: the engine refuses a
/// config with no data ("config data must be larger than 0"), and this
/// renders to nothing when the task starts.
pub const EMPTY_FILE_TEMPLATE: &str = "{{/* empty file */}}";

/// Where the job shim (`base-shim`) appears inside a job with writable
/// mounts: bind-mounted read-only from the node's copy.
pub const SHIM_TARGET: &str = "/.base/shim";
/// Where the shim finds the seed files of writable mount `n`:
/// `<SEED_ROOT>/<n>/<path>` (one config each, like read-only files).
pub const SEED_ROOT: &str = "/.base/seed";
/// Size of the tmpfs behind each writable mount (it counts against the
/// job's memory limit as it fills).
pub const WRITABLE_MOUNT_BYTES: i64 = 1 << 30;
/// The node path of the shim unless configured (`BASE_SWARM_JOB_SHIM`).
pub const DEFAULT_SHIM_HOST_PATH: &str = "/usr/local/lib/base/base-shim";

/// How a job with writable mounts is started under the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobShim {
    /// The shim binary's path on every worker node.
    pub host_path: String,
    /// The image's `ENTRYPOINT`, which the shim runs before the command
    /// (the shim replaces the entrypoint of the container).
    pub entrypoint: Vec<String>,
}

/// Swarm's limit on service names (a DNS label).
const MAX_SERVICE_NAME: usize = 63;
/// Swarm's limit on secret names.
const MAX_SECRET_NAME: usize = 64;
/// Swarm's limit on config names (the same rule as secrets').
const MAX_CONFIG_NAME: usize = 64;
/// Prefix of job service names.
const JOB_PREFIX: &str = "base-job-";
/// Prefix of challenge service names (and their DNS names on the overlay).
const CHALLENGE_PREFIX: &str = "challenge-";
/// A challenge's `/tmp` (root is read-only; Python images need a /tmp).
const CHALLENGE_TMP_BYTES: i64 = 256 << 20;

/// The two token secrets of a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `challenge_token`: what the master presents to the challenge.
    Challenge,
    /// `docker_broker_token`: what the challenge presents to the broker.
    Broker,
}

impl SecretKind {
    /// Both kinds.
    pub const ALL: [SecretKind; 2] = [SecretKind::Challenge, SecretKind::Broker];

    /// The middle part of the secret's name.
    fn name_part(self) -> &'static str {
        match self {
            Self::Challenge => "challenge_token",
            Self::Broker => "broker_token",
        }
    }

    /// The file name under [`SECRETS_DIR`] (the contract's names).
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Challenge => "challenge_token",
            Self::Broker => "docker_broker_token",
        }
    }
}

/// A secret as the engine knows it: both id and name are needed to attach
/// it to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Engine id.
    pub id: String,
    /// Name (`base_<slug>_<kind>_<hash8>`).
    pub name: String,
}

/// The challenge's two secrets, created before the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeSecretRefs {
    /// `challenge_token`.
    pub challenge: SecretRef,
    /// `docker_broker_token`.
    pub broker: SecretRef,
}

/// `challenge-<slug>`; refused when longer than a DNS label, because that
/// name is also the challenge's address on the overlay.
pub fn service_name(slug: &Slug) -> Result<String, SwarmError> {
    let name = format!("{CHALLENGE_PREFIX}{slug}");
    if name.len() > MAX_SERVICE_NAME {
        return Err(SwarmError::Spec(format!(
            "slug '{slug}' is too long for Swarm: the service name '{name}' exceeds \
             {MAX_SERVICE_NAME} characters (slugs of at most {} characters fit)",
            MAX_SERVICE_NAME - CHALLENGE_PREFIX.len()
        )));
    }
    Ok(name)
}

/// The slug a challenge service name stands for, if it is one.
pub fn slug_of_service(name: &str) -> Option<Slug> {
    name.strip_prefix(CHALLENGE_PREFIX)
        .and_then(|s| Slug::parse(s).ok())
}

/// Where the master reaches the challenge on the overlay.
pub fn challenge_endpoint(slug: &Slug) -> String {
    format!("http://{CHALLENGE_PREFIX}{slug}:{CHALLENGE_PORT}")
}

/// `base_<slug>_data`.
pub fn volume_name(slug: &Slug) -> String {
    format!("base_{slug}_data")
}

/// `base-job-<id>`; the id must fit a service name.
pub fn job_service_name(id: &str) -> Result<String, SwarmError> {
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && JOB_PREFIX.len() + bytes.len() <= MAX_SERVICE_NAME
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !ok {
        return Err(SwarmError::Spec(format!(
            "job id '{}' cannot name a Swarm service: use 1..={} of [A-Za-z0-9_-], \
             starting and ending alphanumeric",
            id.escape_debug(),
            MAX_SERVICE_NAME - JOB_PREFIX.len()
        )));
    }
    Ok(format!("{JOB_PREFIX}{id}"))
}

/// The first 8 hex digits of the token's SHA-256: enough to give a rotated
/// token a new secret name, far too little to learn anything about a
/// 256-bit random token.
pub fn token_hash8(token: &SecretString) -> String {
    let digest = Sha256::digest(token.expose_secret().as_bytes());
    hex::encode(&digest[..4])
}

/// `base_<slug>_<kind>_<hash8>`. Swarm caps secret names at 64 characters;
/// a slug too long for that is cut and followed by 6 hex digits of its own
/// hash, so two long slugs sharing a prefix still get different names (the
/// full slug is in the secret's labels either way).
pub fn secret_name(slug: &Slug, kind: SecretKind, hash8: &str) -> String {
    let tail = format!("_{}_{hash8}", kind.name_part());
    let budget = MAX_SECRET_NAME - "base_".len() - tail.len();
    let slug = slug.as_str();
    let slug_part = if slug.len() <= budget {
        slug.to_string()
    } else {
        let digest = hex::encode(Sha256::digest(slug.as_bytes()));
        // Slugs are ASCII, so byte slicing is char slicing; a cut that ends
        // in '-' is fine inside a secret name.
        format!("{}-{}", &slug[..budget - 7], &digest[..6])
    };
    format!("base_{slug_part}{tail}")
}

/// Who owns a BASE object, as one deployment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This deployment: labelled with its id, or unlabelled while this is
    /// the default deployment (which adopts what was created before
    /// deployment ids existed, so an existing install keeps working).
    Ours,
    /// Another deployment, by id. An unlabelled object seen from a
    /// non-default deployment belongs to the default one (`labelled`
    /// false).
    Other {
        /// The owner's id.
        id: String,
        /// Whether the object carries the label (false: created before
        /// deployment ids, owned by the default deployment).
        labelled: bool,
    },
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ours => f.write_str("this deployment"),
            Self::Other { id, labelled: true } => write!(f, "deployment '{id}'"),
            Self::Other {
                id,
                labelled: false,
            } => write!(
                f,
                "deployment '{id}' (it has no {LABEL_DEPLOYMENT} label: created before \
                 deployment ids, so it is the default deployment's)"
            ),
        }
    }
}

/// The owner of an object with these labels, seen from `deployment`: the
/// `base.deployment` label decides; without it, the default deployment
/// owns the object. Pure, so every sweep applies the same rule.
pub fn owner(labels: Option<&HashMap<String, String>>, deployment: &DeploymentId) -> Owner {
    let id = labels
        .and_then(|l| l.get(LABEL_DEPLOYMENT))
        .map(String::as_str);
    match id {
        Some(id) if id == deployment.as_str() => Owner::Ours,
        Some(id) => Owner::Other {
            id: id.to_string(),
            labelled: true,
        },
        None if deployment.is_default() => Owner::Ours,
        None => Owner::Other {
            id: DeploymentId::DEFAULT.to_string(),
            labelled: false,
        },
    }
}

/// Whether `deployment` may act on (update, remove, prune) an object with
/// these labels.
pub fn is_ours(labels: Option<&HashMap<String, String>>, deployment: &DeploymentId) -> bool {
    owner(labels, deployment) == Owner::Ours
}

/// Ok when `deployment` may adopt the existing object `what` (e.g.
/// "service challenge-quiz"); otherwise [`SwarmError::Foreign`] naming the
/// object and its owner. Ensures call it before touching an object whose
/// name they did not make unique, so a same-name object of another
/// deployment is neither updated nor removed.
pub fn check_owner(
    what: &str,
    labels: Option<&HashMap<String, String>>,
    deployment: &DeploymentId,
) -> Result<(), SwarmError> {
    match owner(labels, deployment) {
        Owner::Ours => Ok(()),
        other => Err(SwarmError::Foreign {
            object: what.to_string(),
            owner: other.to_string(),
            deployment: deployment.to_string(),
        }),
    }
}

/// The labels every object of a challenge carries.
fn challenge_labels(
    slug: &Slug,
    component: &str,
    deployment: &DeploymentId,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_COMPONENT.to_string(), component.to_string()),
        (LABEL_CHALLENGE.to_string(), slug.to_string()),
        (LABEL_DEPLOYMENT.to_string(), deployment.to_string()),
    ])
}

/// A token secret. The token reaches Docker only here, base64 in the API
/// body (`Data`); `SecretSpec`'s `Debug` would show it, so callers never
/// log the value this returns.
pub fn secret_spec(
    slug: &Slug,
    kind: SecretKind,
    token: &SecretString,
    deployment: &DeploymentId,
) -> SecretSpec {
    let mut labels = challenge_labels(slug, COMPONENT_SECRET, deployment);
    labels.insert(LABEL_SECRET_KIND.to_string(), kind.file_name().to_string());
    SecretSpec {
        name: Some(secret_name(slug, kind, &token_hash8(token))),
        labels: Some(labels),
        data: Some(base64::engine::general_purpose::STANDARD.encode(token.expose_secret())),
        ..Default::default()
    }
}

/// The data volume: local driver, labelled so operators (and a purge) find
/// it.
pub fn volume_spec(slug: &Slug, deployment: &DeploymentId) -> VolumeCreateRequest {
    let mut labels = challenge_labels(slug, COMPONENT_DATA, deployment);
    labels.insert(LABEL_VOLUME_SLUG.to_string(), slug.to_string());
    VolumeCreateRequest {
        name: Some(volume_name(slug)),
        driver: Some("local".to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// Which BASE overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseNetwork {
    /// [`CHALLENGES_NETWORK`]: attachable, routed.
    Challenges,
    /// [`JOBS_INTERNAL_NETWORK`]: internal (no route out), not attachable.
    JobsInternal,
}

impl BaseNetwork {
    /// Both networks.
    pub const ALL: [BaseNetwork; 2] = [BaseNetwork::Challenges, BaseNetwork::JobsInternal];

    /// The network's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Challenges => CHALLENGES_NETWORK,
            Self::JobsInternal => JOBS_INTERNAL_NETWORK,
        }
    }

    /// Whether it must be `internal`.
    pub fn internal(self) -> bool {
        matches!(self, Self::JobsInternal)
    }

    /// Whether standalone containers may attach (the challenges network is,
    /// so an operator — or a test — can reach challenges for debugging).
    pub fn attachable(self) -> bool {
        matches!(self, Self::Challenges)
    }
}

/// The create request of a BASE overlay: encrypted (IPsec between nodes),
/// MTU 1450, labelled with the deployment that created it. The overlays
/// are shared by every deployment on the Swarm (their names are fixed and
/// nothing in BASE removes them), so the label records the creator only.
pub fn network_spec(net: BaseNetwork, deployment: &DeploymentId) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: net.name().to_string(),
        driver: Some("overlay".to_string()),
        scope: Some("swarm".to_string()),
        internal: Some(net.internal()),
        attachable: Some(net.attachable()),
        options: Some(HashMap::from([
            ("encrypted".to_string(), String::new()),
            (
                "com.docker.network.driver.mtu".to_string(),
                OVERLAY_MTU.to_string(),
            ),
        ])),
        labels: Some(HashMap::from([
            (LABEL_COMPONENT.to_string(), COMPONENT_NETWORK.to_string()),
            (LABEL_DEPLOYMENT.to_string(), deployment.to_string()),
        ])),
        ..Default::default()
    }
}

/// The name of the network a `network: none` job has to itself: the job's
/// service name (networks and services are named apart by the engine).
pub fn job_network_name(id: &str) -> Result<String, SwarmError> {
    job_service_name(id)
}

/// The create request of a `network: none` job's own network: an internal
/// overlay (no gateway, no route out, not even to the node) that no other
/// container joins — the job alone on it, so it can reach nothing and
/// nothing can reach it, not even another job of the same challenge.
/// Not encrypted: with one member nothing ever crosses a node. Labelled
/// with the job's id, so what a removal leaves is found and pruned.
pub fn job_network_spec(
    job: &JobSpec,
    deployment: &DeploymentId,
) -> Result<NetworkCreateRequest, SwarmError> {
    Ok(NetworkCreateRequest {
        name: job_network_name(&job.id)?,
        driver: Some("overlay".to_string()),
        scope: Some("swarm".to_string()),
        internal: Some(true),
        attachable: Some(false),
        options: Some(HashMap::from([(
            "com.docker.network.driver.mtu".to_string(),
            OVERLAY_MTU.to_string(),
        )])),
        labels: Some(HashMap::from([
            (
                LABEL_COMPONENT.to_string(),
                COMPONENT_JOB_NETWORK.to_string(),
            ),
            (LABEL_JOB_ID.to_string(), job.id.clone()),
            (LABEL_CHALLENGE.to_string(), job.slug.to_string()),
            (LABEL_DEPLOYMENT.to_string(), deployment.to_string()),
        ])),
        ..Default::default()
    })
}

/// The names of the job networks whose job has no service any more (a
/// removal that could not delete the network yet — Swarm refuses while the
/// task's container is still detaching — or a broker killed between
/// creating the network and the service). Only networks labelled by BASE as
/// job networks of `deployment` count ([`is_ours`]: another deployment's
/// broker prunes its own), and only those older than `grace`, so a job
/// being created right now (network first, then its service) keeps its
/// network.
pub fn orphaned_job_networks(
    networks: &[bollard::models::Network],
    live_jobs: &HashSet<String>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
    deployment: &DeploymentId,
) -> Vec<String> {
    let mut out: Vec<String> = networks
        .iter()
        .filter_map(|n| {
            let labels = n.labels.as_ref()?;
            if labels.get(LABEL_COMPONENT).map(String::as_str) != Some(COMPONENT_JOB_NETWORK)
                || !is_ours(Some(labels), deployment)
            {
                return None;
            }
            let job_id = labels.get(LABEL_JOB_ID)?;
            if live_jobs.contains(job_id) {
                return None;
            }
            let young = parse_time(n.created.as_ref()).is_some_and(|t| now - t < grace);
            (!young).then(|| n.name.clone()).flatten()
        })
        .collect();
    out.sort();
    out
}

/// Why an existing network of the right name cannot be adopted, or `None`
/// when it can. Adoption never weakens the network: an unencrypted or
/// routed look-alike is refused rather than used.
pub fn network_mismatch(
    net: BaseNetwork,
    driver: Option<&str>,
    scope: Option<&str>,
    internal: Option<bool>,
    options: Option<&HashMap<String, String>>,
) -> Option<String> {
    let mut problems = Vec::new();
    if driver != Some("overlay") {
        problems.push(format!("driver is {driver:?}, not overlay"));
    }
    if scope != Some("swarm") {
        problems.push(format!("scope is {scope:?}, not swarm"));
    }
    if !options.is_some_and(|o| o.contains_key("encrypted")) {
        problems.push("it is not encrypted".to_string());
    }
    if internal.unwrap_or(false) != net.internal() {
        problems.push(format!(
            "internal is {}, expected {}",
            internal.unwrap_or(false),
            net.internal()
        ));
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "network '{}' exists but cannot be adopted: {}; remove it (docker network rm {}) \
             and let BASE create it",
            net.name(),
            problems.join(", "),
            net.name()
        ))
    }
}

/// Parses a byte size as Docker writes them: `512m`, `4g`, `1024`, `2GiB`
/// (binary multiples, as `docker run --memory` does). The rule lives in
/// [`crate::orchestrator::resources`], shared with the registry.
pub fn parse_bytes(raw: &str) -> Result<i64, SwarmError> {
    crate::orchestrator::resources::parse_byte_size(raw)
        .map_err(|e| SwarmError::Spec(e.to_string()))
}

/// Cores → the engine's nano-CPUs.
fn nano_cpus(cpus: f64, what: &str) -> Result<i64, SwarmError> {
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 4096.0 {
        return Err(SwarmError::Spec(format!(
            "{what}: cpus must be a positive number of cores, got {cpus}"
        )));
    }
    Ok((cpus * 1e9).round() as i64)
}

/// The record's `resources` map as limits, by the one rule the registry
/// also applies at create time ([`crate::orchestrator::resources`]): the
/// registry refuses what this would refuse, so a stored record maps.
fn challenge_limits(resources: &BTreeMap<String, String>) -> Result<Option<Limit>, SwarmError> {
    let parsed = crate::orchestrator::resources::parse_resources(resources)
        .map_err(|e| SwarmError::Spec(e.to_string()))?;
    if parsed.is_empty() {
        return Ok(None);
    }
    Ok(Some(Limit {
        nano_cpus: parsed.nano_cpus,
        memory_bytes: parsed.memory_bytes,
        pids: parsed.pids,
    }))
}

/// The challenge's environment: the record's env, then the platform's
/// `CHALLENGE_*` variables (which the record may not set). Sorted, so the
/// spec — and its digest — is stable. Token values never appear: only the
/// paths of their files.
pub fn challenge_env(spec: &ChallengeSpec) -> Result<Vec<String>, SwarmError> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &spec.env {
        if !crate::model::is_settable_env(key) {
            return Err(SwarmError::Spec(format!(
                "env name '{}' is not a valid variable name",
                key.escape_debug()
            )));
        }
        if crate::model::is_reserved_env(key) {
            return Err(SwarmError::Spec(format!(
                "env name '{key}' is reserved: BASE_* and CHALLENGE_* are set by the platform"
            )));
        }
        env.insert(key.clone(), value.clone());
    }
    let platform = [
        ("CHALLENGE_SLUG", Some(spec.slug.to_string())),
        (
            "CHALLENGE_DATABASE_URL",
            Some(CHALLENGE_DATABASE_URL.to_string()),
        ),
        (
            "CHALLENGE_SHARED_TOKEN_FILE",
            Some(format!(
                "{SECRETS_DIR}/{}",
                SecretKind::Challenge.file_name()
            )),
        ),
        ("CHALLENGE_DOCKER_BROKER_URL", spec.broker_url.clone()),
        (
            "CHALLENGE_DOCKER_BROKER_TOKEN_FILE",
            Some(format!("{SECRETS_DIR}/{}", SecretKind::Broker.file_name())),
        ),
        ("CHALLENGE_VERSION", Some(spec.version.clone())),
    ];
    for (key, value) in platform {
        if let Some(value) = value {
            env.insert(key.to_string(), value);
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// A secret file mounted at `/run/secrets/base/<file>`, readable by any
/// user in the container (0444: BASE cannot know which user an image runs
/// as; the file exists only in this container's tmpfs).
fn secret_mount(secret: &SecretRef, kind: SecretKind) -> TaskSpecContainerSpecSecrets {
    TaskSpecContainerSpecSecrets {
        file: Some(TaskSpecContainerSpecFile {
            name: Some(format!("{SECRETS_DIR}/{}", kind.file_name())),
            uid: Some("0".to_string()),
            gid: Some("0".to_string()),
            mode: Some(0o444),
        }),
        secret_id: Some(secret.id.clone()),
        secret_name: Some(secret.name.clone()),
    }
}

/// The service of one challenge: one replica on a manager, read-only root,
/// `/data` volume, token files, `CHALLENGE_*` env, on the encrypted
/// challenges overlay, never published. Carries [`LABEL_SPEC_SHA256`] of
/// everything else, for [`needs_update`].
pub fn challenge_service(
    spec: &ChallengeSpec,
    secrets: &ChallengeSecretRefs,
    deployment: &DeploymentId,
) -> Result<ServiceSpec, SwarmError> {
    let name = service_name(&spec.slug)?;
    let mut labels = challenge_labels(&spec.slug, COMPONENT_CHALLENGE, deployment);
    labels.insert(LABEL_VERSION.to_string(), spec.version.clone());
    let limits = challenge_limits(&spec.resources)?;
    let container = TaskSpecContainerSpec {
        image: Some(spec.image.to_string()),
        labels: Some(challenge_labels(
            &spec.slug,
            COMPONENT_CHALLENGE,
            deployment,
        )),
        env: Some(challenge_env(spec)?),
        read_only: Some(true),
        init: Some(true),
        // Challenges serve on 8000 and need no capability at all.
        capability_drop: Some(vec!["ALL".to_string()]),
        // Only honoured by engines with API ≥ 1.46 (docs/swarm.md); older
        // engines drop the field, which the snapshot keeps visible.
        privileges: Some(TaskSpecContainerSpecPrivileges {
            no_new_privileges: Some(true),
            ..Default::default()
        }),
        mounts: Some(vec![
            Mount {
                target: Some("/data".to_string()),
                source: Some(volume_name(&spec.slug)),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                volume_options: Some(MountVolumeOptions {
                    labels: volume_spec(&spec.slug, deployment).labels,
                    ..Default::default()
                }),
                ..Default::default()
            },
            Mount {
                target: Some("/tmp".to_string()),
                typ: Some(MountType::TMPFS),
                tmpfs_options: Some(MountTmpfsOptions {
                    size_bytes: Some(CHALLENGE_TMP_BYTES),
                    mode: Some(0o1777),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        secrets: Some(vec![
            secret_mount(&secrets.challenge, SecretKind::Challenge),
            secret_mount(&secrets.broker, SecretKind::Broker),
        ]),
        stop_grace_period: Some(10_000_000_000),
        ..Default::default()
    };
    let task = TaskSpec {
        container_spec: Some(container),
        resources: limits.map(|l| TaskSpecResources {
            limits: Some(l),
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
            delay: Some(5_000_000_000),
            ..Default::default()
        }),
        placement: Some(TaskSpecPlacement {
            constraints: Some(vec!["node.role==manager".to_string()]),
            ..Default::default()
        }),
        networks: Some(vec![NetworkAttachmentConfig {
            target: Some(CHALLENGES_NETWORK.to_string()),
            aliases: Some(vec![name.clone()]),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut service = ServiceSpec {
        name: Some(name),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        // stop-first: two tasks must never share one SQLite file on /data.
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor: Some(10_000_000_000),
            ..Default::default()
        }),
        // DNS round-robin, not a virtual IP: `challenge-<slug>` resolves
        // straight to the task's overlay address. A VIP needs the kernel's
        // IPVS, which not every host has (the CI machine's kernel has no
        // ip_vs: VIP connections fail while task addresses answer, see
        // docs/swarm.md); one replica gains nothing from a VIP, and nothing
        // is published, which is the one case dnsrr cannot serve.
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: None,
        }),
        ..Default::default()
    };
    let digest = spec_digest(&service)?;
    if let Some(labels) = service.labels.as_mut() {
        labels.insert(LABEL_SPEC_SHA256.to_string(), digest);
    }
    Ok(service)
}

/// SHA-256 of the spec's JSON. `serde_json::Value` keeps maps sorted (the
/// `preserve_order` feature is off), so `HashMap` order does not leak in.
fn spec_digest(spec: &ServiceSpec) -> Result<String, SwarmError> {
    let value = serde_json::to_value(spec)
        .map_err(|e| SwarmError::Spec(format!("serializing service spec: {e}")))?;
    Ok(hex::encode(Sha256::digest(value.to_string().as_bytes())))
}

/// Whether the running service differs from the desired one (by digest, so
/// fields the engine fills in or drops do not cause endless updates).
pub fn needs_update(current: &Service, desired: &ServiceSpec) -> bool {
    let digest = |s: Option<&ServiceSpec>| {
        s.and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(LABEL_SPEC_SHA256))
            .cloned()
    };
    let current = digest(current.spec.as_ref());
    current.is_none() || current != digest(Some(desired))
}

/// Parses an engine timestamp (RFC 3339 with nanoseconds).
fn parse_time(raw: Option<&String>) -> Option<DateTime<Utc>> {
    raw.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The task that speaks for a service: the newest one meant to run, else
/// the newest one.
fn current_task(tasks: &[Task]) -> Option<&Task> {
    let index = |t: &&Task| t.version.as_ref().and_then(|v| v.index).unwrap_or(0);
    tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .max_by_key(index)
        .or_else(|| tasks.iter().max_by_key(index))
}

/// The detail the engine gives for a task's state (`err` first: it holds
/// the scheduler's "no suitable node (…)").
fn task_message(task: &Task) -> Option<String> {
    let status = task.status.as_ref()?;
    status
        .err
        .clone()
        .filter(|e| !e.is_empty())
        .or_else(|| status.message.clone().filter(|m| !m.is_empty()))
}

/// A challenge service's status from the service and its tasks.
pub fn service_status(slug: &Slug, service: &Service, tasks: &[Task]) -> ServiceStatus {
    let image = service
        .spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.clone());
    let task = current_task(tasks);
    let task_state = task.and_then(|t| t.status.as_ref()).and_then(|s| s.state);
    let state = match task_state {
        Some(TaskState::RUNNING) => ServiceState::Running,
        Some(TaskState::FAILED | TaskState::REJECTED | TaskState::ORPHANED) => ServiceState::Failed,
        // Shut down and not replaced yet, or every earlier state: on its way.
        _ => ServiceState::Starting,
    };
    let started_at = match state {
        ServiceState::Running => task
            .and_then(|t| t.status.as_ref())
            .and_then(|s| parse_time(s.timestamp.as_ref())),
        _ => None,
    };
    ServiceStatus {
        slug: slug.clone(),
        state,
        image,
        endpoint: Some(challenge_endpoint(slug)),
        message: task.and_then(task_message),
        started_at,
    }
}

/// `Missing`, for a slug with no service.
pub fn missing_status(slug: &Slug) -> ServiceStatus {
    ServiceStatus {
        slug: slug.clone(),
        state: ServiceState::Missing,
        image: None,
        endpoint: None,
        message: None,
        started_at: None,
    }
}

/// `path:opt,opt,size=512m,mode=1777` → a tmpfs mount. Swarm's API has
/// only size and mode before 1.46; flags (`noexec`, `nosuid`, `nodev`) go
/// to `Options`, which newer engines apply and 1.41 drops (docs/swarm.md).
fn tmpfs_mount(raw: &str) -> Result<Mount, SwarmError> {
    let (target, opts) = raw.split_once(':').unwrap_or((raw, ""));
    if !target.starts_with('/') {
        return Err(SwarmError::Spec(format!(
            "tmpfs '{raw}': the target must be an absolute path"
        )));
    }
    let mut tmpfs = MountTmpfsOptions::default();
    let mut flags = Vec::new();
    let mut read_only = false;
    for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("size", v)) => tmpfs.size_bytes = Some(parse_bytes(v)?),
            Some(("mode", v)) => {
                tmpfs.mode = Some(i64::from_str_radix(v, 8).map_err(|_| {
                    SwarmError::Spec(format!("tmpfs '{raw}': mode '{v}' is not octal"))
                })?)
            }
            Some((k, _)) => {
                return Err(SwarmError::Spec(format!(
                    "tmpfs '{raw}': option '{k}' is not supported (size, mode, flags)"
                )));
            }
            None if opt == "ro" => read_only = true,
            None if opt == "rw" => read_only = false,
            None => flags.push(vec![opt.to_string()]),
        }
    }
    if !flags.is_empty() {
        tmpfs.options = Some(flags);
    }
    Ok(Mount {
        target: Some(target.to_string()),
        typ: Some(MountType::TMPFS),
        read_only: Some(read_only),
        tmpfs_options: Some(tmpfs),
        ..Default::default()
    })
}

/// `name=soft:hard` (or `name=limit`) → a ulimit.
fn ulimit(raw: &str) -> Result<ResourcesUlimits, SwarmError> {
    let bad = || SwarmError::Spec(format!("ulimit '{raw}': expected name=soft[:hard]"));
    let (name, values) = raw.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = values.split_once(':').unwrap_or((values, values));
    Ok(ResourcesUlimits {
        name: Some(name.trim().to_string()),
        soft: Some(soft.trim().parse().map_err(|_| bad())?),
        hard: Some(hard.trim().parse().map_err(|_| bad())?),
    })
}

/// One file of a job's mounts, shipped to the job's node as one Swarm
/// config (a bind path on the manager does not exist on a worker; configs
/// travel with the task to whichever node runs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFile<'a> {
    /// The config's name ([`job_config_name`]).
    pub name: String,
    /// The absolute path of the file inside the job.
    pub target: String,
    /// Its contents.
    pub data: &'a [u8],
}

/// `base-job-<id>-<n>`, the name of the config of a job's `n`-th mounted
/// file. Config names are capped at 64 characters: an id too long for
/// that is cut and followed by 6 hex digits of its hash, so two long ids
/// sharing a prefix still get different names (the full id is in the
/// config's `base.job.id` label, which is what pruning reads).
pub fn job_config_name(id: &str, n: usize) -> String {
    let tail = format!("-{n}");
    let budget = MAX_CONFIG_NAME - JOB_PREFIX.len() - tail.len();
    let id_part = if id.len() <= budget {
        id.to_string()
    } else {
        let digest = hex::encode(Sha256::digest(id.as_bytes()));
        // Job ids are ASCII (job_service_name checks), so this cut is on a
        // character boundary.
        let keep = id.get(..budget - 7).unwrap_or(id);
        format!("{keep}-{}", &digest[..6])
    };
    format!("{JOB_PREFIX}{id_part}{tail}")
}

/// Whether `path` is a clean relative path: non-empty components, none of
/// them `.` or `..`, no leading or doubled `/` (the broker's archive check
/// already guarantees this; the mapping refuses rather than repairs).
fn clean_relative(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// The files of a job's mounts, one config each, in a stable order (mounts
/// as given, files by name), with every limit checked before anything is
/// created.
///
/// Refused with a message naming the mount (and file): a writable mount
/// (configs are read-only and nothing comes back from a worker), a mount
/// with no files (a config cannot make an empty directory), a target that
/// is not a clean absolute path, a file larger than
/// [`MAX_MOUNT_FILE_BYTES`], more than [`MAX_MOUNT_FILES`] files or
/// [`MAX_MOUNT_BYTES`] bytes in all, and two files landing on the same
/// path or one inside the other. The file name `""` places the file at the
/// mount's target itself (a single-file mount).
pub fn job_mount_files(spec: &JobSpec) -> Result<Vec<MountFile<'_>>, SwarmError> {
    let mut files = Vec::new();
    let mut total: usize = 0;
    let mut writable_index = 0usize;
    for mount in &spec.mounts {
        // `/in/` is `/in` (the broker accepts either spelling).
        let target = mount.target.trim_end_matches('/');
        let bad =
            |why: String| SwarmError::Spec(format!("mount '{}': {why}", target.escape_debug()));
        if !target.strip_prefix('/').is_some_and(clean_relative) {
            return Err(bad(
                "the target must be a clean absolute path other than / (no ., .. or empty parts)"
                    .to_string(),
            ));
        }
        if target == "/.base" || target.starts_with("/.base/") {
            return Err(bad("/.base is reserved for the platform".to_string()));
        }
        // A writable mount's files are seeds the shim copies into the
        // mount's tmpfs: they travel as configs under SEED_ROOT.
        let seed_dir = if mount.read_only {
            None
        } else {
            if mount.files.contains_key("") {
                return Err(bad(
                    "a writable mount must be a directory (source_type directory), not a single file"
                        .to_string(),
                ));
            }
            Some(format!("{SEED_ROOT}/{}", writable_index))
        };
        if !mount.read_only {
            writable_index += 1;
        }
        if mount.read_only && mount.files.is_empty() {
            return Err(bad(
                "the mount has no files, and the swarm orchestrator ships files as Swarm \
                 configs, which cannot create an empty directory"
                    .to_string(),
            ));
        }
        if mount.files.contains_key("") && mount.files.len() > 1 {
            return Err(bad(
                "the target is given both as a file (the name \"\") and as a directory".to_string(),
            ));
        }
        let base = seed_dir.as_deref().unwrap_or(target);
        for (rel, data) in &mount.files {
            let path = if rel.is_empty() {
                target.to_string()
            } else if clean_relative(rel) {
                format!("{base}/{rel}")
            } else {
                return Err(bad(format!(
                    "file '{}' is not a clean relative path",
                    rel.escape_debug()
                )));
            };
            if data.len() > MAX_MOUNT_FILE_BYTES {
                return Err(bad(format!(
                    "file '{}' is {} bytes; a mounted file may have at most {MAX_MOUNT_FILE_BYTES} \
                     bytes on Swarm (Docker's 500 KiB config limit)",
                    path.escape_debug(),
                    data.len()
                )));
            }
            total = total.saturating_add(data.len());
            if total > MAX_MOUNT_BYTES {
                return Err(bad(format!(
                    "the job's mounted files exceed {MAX_MOUNT_BYTES} bytes in all (at file '{}')",
                    path.escape_debug()
                )));
            }
            if files.len() == MAX_MOUNT_FILES {
                return Err(bad(format!(
                    "a job may mount at most {MAX_MOUNT_FILES} files on Swarm (one config each)"
                )));
            }
            files.push(MountFile {
                name: job_config_name(&spec.id, files.len()),
                target: path,
                data: data.as_slice(),
            });
        }
    }
    // No file may land on another, or inside another (a path cannot be a
    // file and a directory at once); sorted, a clash is with a neighbour.
    let targets: BTreeSet<&str> = files.iter().map(|f| f.target.as_str()).collect();
    if targets.len() != files.len() {
        let mut seen = HashSet::new();
        let dup = files
            .iter()
            .find(|f| !seen.insert(f.target.as_str()))
            .map_or("", |f| f.target.as_str());
        return Err(SwarmError::Spec(format!(
            "two mounted files would land on '{}'",
            dup.escape_debug()
        )));
    }
    let sorted: Vec<&str> = targets.into_iter().collect();
    for pair in sorted.windows(2) {
        if let [a, b] = pair
            && b.strip_prefix(a).is_some_and(|rest| rest.starts_with('/'))
        {
            return Err(SwarmError::Spec(format!(
                "mounted file '{}' would be a directory for '{}'",
                a.escape_debug(),
                b.escape_debug()
            )));
        }
    }
    // A writable mount is a tmpfs of its own: nothing else may land in it,
    // contain it, or be it.
    let writable = writable_targets(spec);
    let read_only_targets = spec
        .mounts
        .iter()
        .filter(|m| m.read_only)
        .map(|m| m.target.trim_end_matches('/'));
    let others: Vec<&str> = sorted.iter().copied().chain(read_only_targets).collect();
    for (i, w) in writable.iter().enumerate() {
        let nested = |a: &str, b: &str| {
            a == b
                || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'))
                || b.strip_prefix(a).is_some_and(|r| r.starts_with('/'))
        };
        let clash = others
            .iter()
            .filter(|o| !o.starts_with(SEED_ROOT))
            .chain(writable[..i].iter())
            .find(|o| nested(w, o));
        if let Some(other) = clash {
            return Err(SwarmError::Spec(format!(
                "writable mount '{}' overlaps '{}'",
                w.escape_debug(),
                other.escape_debug()
            )));
        }
    }
    Ok(files)
}

/// The targets of a job's writable mounts, in spec order (without a
/// trailing `/`): the mounts the shim fills, runs over and prints back.
pub fn writable_targets(spec: &JobSpec) -> Vec<&str> {
    spec.mounts
        .iter()
        .filter(|m| !m.read_only)
        .map(|m| m.target.trim_end_matches('/'))
        .collect()
}

/// The config carrying one mounted file, labelled so that it is found by
/// job and pruned once its job is gone. Empty files become a template that
/// renders to nothing (the engine refuses empty config data).
pub fn job_config_spec(
    spec: &JobSpec,
    file: &MountFile<'_>,
    deployment: &DeploymentId,
) -> ConfigSpec {
    let labels = HashMap::from([
        (LABEL_COMPONENT.to_string(), COMPONENT_JOB_MOUNT.to_string()),
        (LABEL_JOB_ID.to_string(), spec.id.clone()),
        (LABEL_CHALLENGE.to_string(), spec.slug.to_string()),
        (LABEL_DEPLOYMENT.to_string(), deployment.to_string()),
    ]);
    let (data, templating) = if file.data.is_empty() {
        (
            EMPTY_FILE_TEMPLATE.as_bytes(),
            Some(Driver {
                name: "golang".to_string(),
                options: None,
            }),
        )
    } else {
        (file.data, None)
    };
    ConfigSpec {
        name: Some(file.name.clone()),
        labels: Some(labels),
        data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
        templating,
    }
}

/// A config of a job mount that no job service uses any more, found by
/// [`orphaned_job_mounts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanConfig {
    /// Engine id.
    pub id: String,
    /// Name.
    pub name: String,
    /// The job it was made for.
    pub job_id: String,
}

/// The job-mount configs whose job has no service any more (a removal
/// that failed half-way, or a broker killed between creating the configs
/// and the service). Only configs labelled by BASE as job mounts of
/// `deployment` ([`is_ours`]), with a job id, count; and only those older
/// than `grace`, so a job being created right now (configs first, then its
/// service) keeps its files.
pub fn orphaned_job_mounts(
    configs: &[Config],
    live_jobs: &HashSet<String>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
    deployment: &DeploymentId,
) -> Vec<OrphanConfig> {
    let mut out: Vec<OrphanConfig> = configs
        .iter()
        .filter_map(|c| {
            let spec = c.spec.as_ref()?;
            let labels = spec.labels.as_ref()?;
            if labels.get(LABEL_COMPONENT).map(String::as_str) != Some(COMPONENT_JOB_MOUNT)
                || !is_ours(Some(labels), deployment)
            {
                return None;
            }
            let job_id = labels.get(LABEL_JOB_ID)?;
            if live_jobs.contains(job_id) {
                return None;
            }
            // An unreadable creation time is taken as old: the config is
            // BASE's and its job is gone either way.
            let young = parse_time(c.created_at.as_ref()).is_some_and(|t| now - t < grace);
            if young {
                return None;
            }
            Some(OrphanConfig {
                id: c.id.clone()?,
                name: spec.name.clone().unwrap_or_default(),
                job_id: job_id.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Attaches each mounted file's config (`ids`: config name → engine id).
fn config_mounts(
    files: &[MountFile<'_>],
    ids: &HashMap<String, String>,
) -> Result<Vec<TaskSpecContainerSpecConfigs>, SwarmError> {
    files
        .iter()
        .map(|f| {
            let id = ids.get(&f.name).ok_or_else(|| {
                SwarmError::Spec(format!(
                    "config {} of a mounted file was not created",
                    f.name
                ))
            })?;
            Ok(TaskSpecContainerSpecConfigs {
                file: Some(TaskSpecContainerSpecFile1 {
                    name: Some(f.target.clone()),
                    uid: Some("0".to_string()),
                    gid: Some("0".to_string()),
                    // Readable by whatever user the job runs as, writable
                    // by none.
                    mode: Some(0o444),
                }),
                runtime: None,
                config_id: Some(id.clone()),
                config_name: Some(f.name.clone()),
            })
        })
        .collect()
}

/// The shim's arguments: the job id as its output token, each writable
/// mount as `n=target`, then the image's entrypoint and the command.
fn shim_args(spec: &JobSpec, writable: &[&str], entrypoint: &[String]) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--token".to_string(),
        spec.id.clone(),
        "--seed-root".to_string(),
        SEED_ROOT.to_string(),
    ];
    for (n, target) in writable.iter().enumerate() {
        args.push("--mount".to_string());
        args.push(format!("{n}={target}"));
    }
    args.push("--".to_string());
    args.extend(entrypoint.iter().cloned());
    args.extend(spec.command.iter().cloned());
    args
}

/// A tmpfs per writable mount (writable by any user, since the job may run
/// as one; sticky like /tmp), and the shim, bind-mounted read-only from the
/// node.
fn writable_mounts(writable: &[&str], shim: Option<&JobShim>) -> Vec<Mount> {
    let (Some(shim), false) = (shim, writable.is_empty()) else {
        return Vec::new();
    };
    let mut mounts: Vec<Mount> = writable
        .iter()
        .map(|target| Mount {
            target: Some((*target).to_string()),
            typ: Some(MountType::TMPFS),
            read_only: Some(false),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: Some(WRITABLE_MOUNT_BYTES),
                mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    mounts.push(Mount {
        target: Some(SHIM_TARGET.to_string()),
        source: Some(shim.host_path.clone()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    });
    mounts
}

/// The replicated-job service of one evaluation job. Its mounted files are
/// the configs named by [`job_mount_files`], whose engine ids `config_ids`
/// maps from their names (every file needs one).
pub fn job_service(
    spec: &JobSpec,
    config_ids: &HashMap<String, String>,
    shim: Option<&JobShim>,
    deployment: &DeploymentId,
) -> Result<ServiceSpec, SwarmError> {
    let name = job_service_name(&spec.id)?;
    let files = job_mount_files(spec)?;
    let configs = config_mounts(&files, config_ids)?;
    if spec.command.is_empty() {
        return Err(SwarmError::Spec("a job needs a command".to_string()));
    }
    let writable = writable_targets(spec);
    let (command, args) = match (writable.is_empty(), shim) {
        (true, _) => (None, spec.command.clone()),
        (false, None) => {
            return Err(SwarmError::Spec(
                "writable mounts need the job shim on the worker nodes, and none is configured \
                 (BASE_SWARM_JOB_SHIM is empty; see docs/workers.md)"
                    .to_string(),
            ));
        }
        (false, Some(shim)) => (
            Some(vec![SHIM_TARGET.to_string()]),
            shim_args(spec, &writable, &shim.entrypoint),
        ),
    };
    let limits = &spec.limits;
    let mut labels: HashMap<String, String> = HashMap::new();
    for (k, v) in &spec.labels {
        if k.starts_with("base.") {
            return Err(SwarmError::Spec(format!(
                "label '{k}' is reserved: base.* labels are set by the platform"
            )));
        }
        labels.insert(k.clone(), v.clone());
    }
    labels.extend([
        (LABEL_COMPONENT.to_string(), COMPONENT_JOB.to_string()),
        (LABEL_CHALLENGE.to_string(), spec.slug.to_string()),
        (LABEL_JOB.to_string(), spec.job_id.clone()),
        (LABEL_JOB_ID.to_string(), spec.id.clone()),
        (
            LABEL_DEADLINE.to_string(),
            spec.deadline_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        (LABEL_TIMEOUT.to_string(), spec.timeout_seconds.to_string()),
        (LABEL_DEPLOYMENT.to_string(), deployment.to_string()),
    ]);
    if let Some(task) = &spec.task_id {
        labels.insert(LABEL_TASK.to_string(), task.clone());
    }

    let mut no_new_privileges = false;
    for opt in &limits.security_opt {
        match opt.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => {
                no_new_privileges = true
            }
            other => {
                return Err(SwarmError::Spec(format!(
                    "security option '{other}' cannot be expressed in a Swarm service"
                )));
            }
        }
    }
    let networks = match &limits.network {
        // Its own network, not a shared one: jobs on one internal overlay
        // could reach each other.
        JobNetwork::None => Some(vec![job_network_name(&spec.id)?]),
        JobNetwork::Default => None,
        JobNetwork::Named(n) if n == CHALLENGES_NETWORK || !n.starts_with("base_") => {
            return Err(SwarmError::Spec(format!(
                "network '{n}' is not a job network (use none, default or a base_* job network)"
            )));
        }
        JobNetwork::Named(n) => Some(vec![n.clone()]),
    };
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    let container = TaskSpecContainerSpec {
        image: Some(spec.image.to_string()),
        labels: Some(labels.clone()),
        // `args` (the image's CMD), not `command` (its ENTRYPOINT): the
        // broker's `command` has `docker run IMAGE COMMAND` semantics.
        // Under the shim, the shim is the entrypoint and runs the image's
        // own entrypoint with the command after it.
        command,
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        dir: spec.workdir.clone(),
        user: limits.user.clone(),
        read_only: Some(limits.read_only),
        init: Some(limits.init),
        capability_drop: (!limits.cap_drop.is_empty()).then(|| limits.cap_drop.clone()),
        ulimits: if limits.ulimits.is_empty() {
            None
        } else {
            Some(
                limits
                    .ulimits
                    .iter()
                    .map(|u| ulimit(u))
                    .collect::<Result<_, _>>()?,
            )
        },
        privileges: no_new_privileges.then(|| TaskSpecContainerSpecPrivileges {
            no_new_privileges: Some(true),
            ..Default::default()
        }),
        configs: (!configs.is_empty()).then_some(configs),
        mounts: {
            let mut mounts: Vec<Mount> = limits
                .tmpfs
                .iter()
                .map(|t| tmpfs_mount(t))
                .collect::<Result<_, _>>()?;
            mounts.extend(writable_mounts(&writable, shim));
            (!mounts.is_empty()).then_some(mounts)
        },
        ..Default::default()
    };
    let (constraint, reservations) = match limits.gpus {
        None => ("node.labels.base.workload==cpu", None),
        Some(0) => {
            return Err(SwarmError::Spec(
                "gpu_count must be at least 1 (or absent for CPU jobs)".to_string(),
            ));
        }
        Some(n) => (
            "node.labels.base.workload==gpu",
            Some(ResourceObject {
                generic_resources: Some(vec![GenericResourcesInner {
                    discrete_resource_spec: Some(GenericResourcesInnerDiscreteResourceSpec {
                        kind: Some(GPU_RESOURCE.to_string()),
                        value: Some(i64::from(n)),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        ),
    };
    if limits.memory_bytes <= 0 || limits.pids <= 0 {
        return Err(SwarmError::Spec(
            "memory and pids limits must be positive".to_string(),
        ));
    }
    let task = TaskSpec {
        container_spec: Some(container),
        resources: Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: Some(nano_cpus(limits.cpus, "limits.cpus")?),
                memory_bytes: Some(limits.memory_bytes),
                pids: Some(limits.pids),
            }),
            reservations,
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
            ..Default::default()
        }),
        placement: Some(TaskSpecPlacement {
            constraints: Some(vec![constraint.to_string()]),
            ..Default::default()
        }),
        networks: networks.map(|nets| {
            nets.into_iter()
                .map(|n| NetworkAttachmentConfig {
                    target: Some(n),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    };
    Ok(ServiceSpec {
        name: Some(name),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob {
                max_concurrent: Some(1),
                total_completions: Some(1),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Whether a job's tasks are all done or on their way out, so deleting its
/// service leaves nothing running: every task has ended, or is already
/// told to shut down or go. A job with no task yet is not settled (one may
/// be being created).
///
/// Docker 20.10 does not stop the running task of a replicated-job service
/// that is deleted (moby/moby#44312, fixed in 24.0): the container keeps
/// running with no service to see it by. `remove_job` therefore first
/// scales an unsettled job to nothing ([`stopped_job_spec`]), which makes
/// the engine set its tasks' desired state to `remove`, and deletes it then.
pub fn job_tasks_settled(tasks: &[Task]) -> bool {
    !tasks.is_empty()
        && tasks.iter().all(|t| {
            let ended = matches!(
                t.status.as_ref().and_then(|s| s.state),
                Some(
                    TaskState::COMPLETE
                        | TaskState::FAILED
                        | TaskState::REJECTED
                        | TaskState::SHUTDOWN
                        | TaskState::REMOVE
                        | TaskState::ORPHANED
                )
            );
            let leaving = matches!(
                t.desired_state,
                Some(TaskState::SHUTDOWN | TaskState::REMOVE)
            );
            ended || leaving
        })
}

/// A job service's spec scaled to nothing (`TotalCompletions: 0`,
/// `MaxConcurrent: 0`), everything else kept. The engine refuses an update
/// config on a job ("Jobs may not have an update config"), which some
/// clients add, so both update and rollback configs are dropped.
pub fn stopped_job_spec(mut spec: ServiceSpec) -> ServiceSpec {
    spec.mode = Some(ServiceSpecMode {
        replicated_job: Some(ServiceSpecModeReplicatedJob {
            max_concurrent: Some(0),
            total_completions: Some(0),
        }),
        ..Default::default()
    });
    spec.update_config = None;
    spec.rollback_config = None;
    spec
}

/// A job's status from its service's labels and tasks.
///
/// Task states map as: none yet, `new`…`accepted` → `Queued` (with the
/// scheduler's message, e.g. "no suitable node (insufficient resources on
/// 1 node)"); `preparing` (pulling) → `Pulling`; `ready`…`running` →
/// `Running`; `complete` → `Succeeded`; `failed`/`rejected` → `Failed`;
/// `shutdown`/`remove`/`orphaned` → `Cancelled`.
///
/// `None` when the labels name no valid challenge: only BASE creates
/// `base.component=job` services, always with one, so such a service is a
/// hand-made look-alike and not BASE's to report.
pub fn job_status(id: &str, labels: &HashMap<String, String>, tasks: &[Task]) -> Option<JobStatus> {
    let slug = Slug::parse(labels.get(LABEL_CHALLENGE)?).ok()?;
    let deadline_at = labels
        .get(LABEL_DEADLINE)
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc));
    let task = tasks
        .iter()
        .max_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0));
    let status = task.and_then(|t| t.status.as_ref());
    let task_state = status.and_then(|s| s.state);
    let state = match task_state {
        None
        | Some(
            TaskState::NEW
            | TaskState::ALLOCATED
            | TaskState::PENDING
            | TaskState::ASSIGNED
            | TaskState::ACCEPTED,
        ) => JobState::Queued,
        Some(TaskState::PREPARING) => JobState::Pulling,
        Some(TaskState::READY | TaskState::STARTING | TaskState::RUNNING) => JobState::Running,
        Some(TaskState::COMPLETE) => JobState::Succeeded,
        Some(TaskState::FAILED | TaskState::REJECTED) => JobState::Failed,
        Some(TaskState::SHUTDOWN | TaskState::REMOVE | TaskState::ORPHANED) => JobState::Cancelled,
    };
    let timestamp = status.and_then(|s| parse_time(s.timestamp.as_ref()));
    // The engine reports `ExitCode: 0` for a task that never had a
    // container (a rejected task: its image could not be pulled, a mount
    // was refused): only a container's own exit counts.
    let exit_code = status
        .and_then(|s| s.container_status.as_ref())
        .filter(|c| c.container_id.as_deref().is_some_and(|id| !id.is_empty()))
        .and_then(|c| c.exit_code)
        .filter(|_| {
            matches!(
                state,
                JobState::Succeeded | JobState::Failed | JobState::Cancelled
            ) && task_state != Some(TaskState::REJECTED)
        })
        .or_else(|| (state == JobState::Succeeded).then_some(0));
    Some(JobStatus {
        id: id.to_string(),
        slug,
        state,
        exit_code,
        node_id: task
            .and_then(|t| t.node_id.clone())
            .filter(|n| !n.is_empty()),
        started_at: (state == JobState::Running).then_some(timestamp).flatten(),
        finished_at: state.is_terminal().then_some(timestamp).flatten(),
        message: task.and_then(task_message),
        deadline_at,
        timeout_seconds: labels.get(LABEL_TIMEOUT).and_then(|t| t.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::ImageRef;
    use crate::orchestrator::{ChallengeSecrets, JobLimits, JobMount};
    use bollard::models::{ContainerStatus, ObjectVersion, TaskStatus};
    use serde_json::json;

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    /// The deployment the snapshots are taken for.
    fn dep() -> DeploymentId {
        DeploymentId::parse("snap").unwrap()
    }

    fn challenge() -> ChallengeSpec {
        ChallengeSpec {
            slug: slug("quiz"),
            image: ImageRef::parse("base.local/quiz-challenge:0.1.0").unwrap(),
            version: "0.1.0".into(),
            env: BTreeMap::from([("QUIZ_LEVEL".into(), "hard".into())]),
            resources: BTreeMap::from([
                ("cpus".into(), "1.5".into()),
                ("memory".into(), "512m".into()),
            ]),
            secrets: ChallengeSecrets {
                challenge_token: SecretString::from("challenge-token-cleartext-1234"),
                broker_token: SecretString::from("broker-token-cleartext-5678"),
            },
            broker_url: Some("http://base-broker:18082".into()),
        }
    }

    fn refs() -> ChallengeSecretRefs {
        ChallengeSecretRefs {
            challenge: SecretRef {
                id: "sec-c".into(),
                name: "base_quiz_challenge_token_0a1b2c3d".into(),
            },
            broker: SecretRef {
                id: "sec-b".into(),
                name: "base_quiz_broker_token_4e5f6a7b".into(),
            },
        }
    }

    fn job() -> JobSpec {
        JobSpec {
            id: "j-0001".into(),
            slug: slug("quiz"),
            job_id: "eval-42".into(),
            task_id: Some("task-7".into()),
            image: ImageRef::parse("base.local/quiz-challenge:0.1.0").unwrap(),
            command: vec!["exit".into(), "3".into()],
            workdir: Some("/work".into()),
            env: BTreeMap::from([("MODE".into(), "fast".into())]),
            labels: BTreeMap::from([("team".into(), "blue".into())]),
            limits: JobLimits {
                cpus: 2.0,
                memory_bytes: 4 << 30,
                pids: 512,
                gpus: None,
                network: JobNetwork::None,
                read_only: true,
                user: Some("65534:65534".into()),
                tmpfs: vec!["/tmp:rw,noexec,nosuid,size=512m".into()],
                ulimits: vec!["nofile=1024:1024".into()],
                cap_drop: vec!["ALL".into()],
                security_opt: vec!["no-new-privileges".into()],
                init: true,
            },
            mounts: vec![],
            timeout_seconds: 900,
            deadline_at: DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    fn fixture(name: &str) -> serde_json::Value {
        let path = format!("{}/tests/fixtures/swarm/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    /// Compares with a fixture; `BASE_UPDATE_FIXTURES=1` rewrites it.
    fn assert_snapshot(name: &str, actual: serde_json::Value) {
        if std::env::var_os("BASE_UPDATE_FIXTURES").is_some() {
            let path = format!("{}/tests/fixtures/swarm/{name}", env!("CARGO_MANIFEST_DIR"));
            let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
            std::fs::write(path, text).unwrap();
            return;
        }
        assert_eq!(
            actual,
            fixture(name),
            "snapshot {name} differs; rerun with BASE_UPDATE_FIXTURES=1 and review the diff"
        );
    }

    #[test]
    fn challenge_service_snapshot() {
        let s = challenge_service(&challenge(), &refs(), &dep()).unwrap();
        assert_snapshot("challenge_service.json", serde_json::to_value(&s).unwrap());
    }

    #[test]
    fn challenge_service_holds_no_token_and_no_control_plane_url() {
        let s = challenge_service(&challenge(), &refs(), &dep()).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        assert!(!text.contains("cleartext"), "{text}");
        assert!(!text.contains("BASE_DATABASE_URL"), "{text}");
        let env = s
            .task_template
            .unwrap()
            .container_spec
            .unwrap()
            .env
            .unwrap();
        assert!(env.contains(
            &"CHALLENGE_DATABASE_URL=sqlite+aiosqlite:////data/challenge.sqlite3".to_string()
        ));
        assert!(env.contains(
            &"CHALLENGE_SHARED_TOKEN_FILE=/run/secrets/base/challenge_token".to_string()
        ));
        assert!(env.contains(
            &"CHALLENGE_DOCKER_BROKER_TOKEN_FILE=/run/secrets/base/docker_broker_token".to_string()
        ));
    }

    #[test]
    fn broker_url_is_optional_and_reserved_env_is_refused() {
        let mut c = challenge();
        c.broker_url = None;
        let env = challenge_env(&c).unwrap();
        assert!(
            !env.iter()
                .any(|e| e.starts_with("CHALLENGE_DOCKER_BROKER_URL="))
        );
        assert!(
            env.iter()
                .any(|e| e.starts_with("CHALLENGE_DOCKER_BROKER_TOKEN_FILE="))
        );
        for bad in ["BASE_DATABASE_URL", "CHALLENGE_SLUG", "A=B", ""] {
            let mut c = challenge();
            c.env.insert(bad.into(), "x".into());
            assert!(challenge_env(&c).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_follows_every_change_and_only_changes() {
        let base = challenge_service(&challenge(), &refs(), &dep()).unwrap();
        let same = challenge_service(&challenge(), &refs(), &dep()).unwrap();
        let current = Service {
            spec: Some(base.clone()),
            ..Default::default()
        };
        assert!(!needs_update(&current, &same));
        let mut c = challenge();
        c.image = ImageRef::parse("base.local/quiz-challenge:0.1.1").unwrap();
        assert!(needs_update(
            &current,
            &challenge_service(&c, &refs(), &dep()).unwrap()
        ));
        let mut r = refs();
        r.challenge.name = "base_quiz_challenge_token_ffffffff".into();
        assert!(needs_update(
            &current,
            &challenge_service(&challenge(), &r, &dep()).unwrap()
        ));
        // A service BASE did not label is always brought to the spec.
        assert!(needs_update(&Service::default(), &same));
    }

    #[test]
    fn names() {
        assert_eq!(service_name(&slug("quiz")).unwrap(), "challenge-quiz");
        assert!(service_name(&slug(&"a".repeat(53))).is_ok());
        assert!(service_name(&slug(&"a".repeat(54))).is_err());
        assert_eq!(slug_of_service("challenge-quiz"), Some(slug("quiz")));
        assert_eq!(slug_of_service("other"), None);
        assert_eq!(volume_name(&slug("quiz")), "base_quiz_data");
        assert_eq!(
            challenge_endpoint(&slug("quiz")),
            "http://challenge-quiz:8000"
        );
        let hash = token_hash8(&SecretString::from("abc"));
        // SHA-256("abc") = ba7816bf…
        assert_eq!(hash, "ba7816bf");
        assert_eq!(
            secret_name(&slug("quiz"), SecretKind::Challenge, &hash),
            "base_quiz_challenge_token_ba7816bf"
        );
        assert_eq!(
            secret_name(&slug("quiz"), SecretKind::Broker, &hash),
            "base_quiz_broker_token_ba7816bf"
        );
        let long = slug(&format!("{}x", "a".repeat(62)));
        let long2 = slug(&format!("{}y", "a".repeat(62)));
        for kind in SecretKind::ALL {
            let n = secret_name(&long, kind, &hash);
            assert!(n.len() <= MAX_SECRET_NAME, "{n}");
            assert_ne!(n, secret_name(&long2, kind, &hash));
            assert!(n.ends_with(&format!("_{hash}")));
        }
        assert_eq!(job_service_name("j-1").unwrap(), "base-job-j-1");
        for bad in ["", "-a", "a-", "a b", "a/b", &"a".repeat(55)] {
            assert!(job_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_spec_carries_the_token_only_in_data() {
        let token = SecretString::from("tok-value");
        let s = secret_spec(&slug("quiz"), SecretKind::Broker, &token, &dep());
        assert_eq!(
            s.name.as_deref(),
            Some(secret_name(&slug("quiz"), SecretKind::Broker, &token_hash8(&token)).as_str())
        );
        assert_eq!(s.data.as_deref(), Some("dG9rLXZhbHVl"));
        let labels = s.labels.unwrap();
        assert_eq!(labels["base.challenge"], "quiz");
        assert_eq!(labels["base.secret"], "docker_broker_token");
        assert_eq!(labels["base.deployment"], "snap");
        assert!(!labels.values().any(|v| v.contains("tok-value")));
    }

    #[test]
    fn ownership_is_the_label_and_unlabelled_is_the_default_deployments() {
        let labelled = |id: &str| HashMap::from([(LABEL_DEPLOYMENT.to_string(), id.to_string())]);
        let none = HashMap::from([(LABEL_COMPONENT.to_string(), "challenge".to_string())]);
        let a = DeploymentId::parse("a").unwrap();
        let base = DeploymentId::default();
        assert_eq!(owner(Some(&labelled("a")), &a), Owner::Ours);
        assert_eq!(
            owner(Some(&labelled("b")), &a),
            Owner::Other {
                id: "b".into(),
                labelled: true
            }
        );
        // Objects from before deployment ids: the default deployment adopts
        // them, every other deployment leaves them to it.
        for unlabelled in [None, Some(&none)] {
            assert_eq!(owner(unlabelled, &base), Owner::Ours);
            assert_eq!(
                owner(unlabelled, &a),
                Owner::Other {
                    id: "base".into(),
                    labelled: false
                }
            );
        }
        // A label naming the default deployment is the default's, not
        // anyone's who happens to see it.
        assert!(!is_ours(Some(&labelled("base")), &a));
        assert!(is_ours(Some(&labelled("base")), &base));
        assert!(!is_ours(Some(&labelled("a")), &base));
        assert!(check_owner("service challenge-q", Some(&labelled("a")), &a).is_ok());
        let why = check_owner("service challenge-q", Some(&labelled("b")), &a)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("service challenge-q")
                && why.contains("deployment 'b'")
                && why.contains("'a'"),
            "{why}"
        );
        let why = check_owner("volume base_q_data", None, &a)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("volume base_q_data") && why.contains("deployment 'base'"),
            "{why}"
        );
    }

    #[test]
    fn every_object_carries_its_deployment() {
        let d = DeploymentId::parse("prod-7").unwrap();
        let want = Some("prod-7");
        fn get(l: Option<&HashMap<String, String>>) -> Option<&str> {
            l.and_then(|l| l.get(LABEL_DEPLOYMENT)).map(String::as_str)
        }
        let c = challenge_service(&challenge(), &refs(), &d).unwrap();
        assert_eq!(get(c.labels.as_ref()), want, "challenge service");
        let task = c.task_template.as_ref().unwrap();
        let container = task.container_spec.as_ref().unwrap();
        assert_eq!(get(container.labels.as_ref()), want, "challenge container");
        let data = &container.mounts.as_ref().unwrap()[0];
        assert_eq!(
            get(data.volume_options.as_ref().unwrap().labels.as_ref()),
            want,
            "volume created by a node"
        );
        let token = SecretString::from("t");
        for kind in SecretKind::ALL {
            assert_eq!(
                get(secret_spec(&slug("quiz"), kind, &token, &d).labels.as_ref()),
                want
            );
        }
        assert_eq!(get(volume_spec(&slug("quiz"), &d).labels.as_ref()), want);
        for net in BaseNetwork::ALL {
            assert_eq!(get(network_spec(net, &d).labels.as_ref()), want, "{net:?}");
        }
        let mut j = job();
        assert_eq!(get(job_network_spec(&j, &d).unwrap().labels.as_ref()), want);
        let js = job_service(&j, &HashMap::new(), None, &d).unwrap();
        assert_eq!(get(js.labels.as_ref()), want, "job service");
        let jc = js.task_template.unwrap().container_spec.unwrap();
        assert_eq!(get(jc.labels.as_ref()), want, "job container");
        j.mounts = vec![JobMount {
            target: "/in".into(),
            read_only: true,
            files: BTreeMap::from([("a".into(), b"x".to_vec())]),
        }];
        let files = job_mount_files(&j).unwrap();
        assert_eq!(
            get(job_config_spec(&j, &files[0], &d).labels.as_ref()),
            want
        );
    }

    #[test]
    fn a_job_cannot_claim_another_deployment() {
        let mut j = job();
        j.labels
            .insert(LABEL_DEPLOYMENT.to_string(), "someone-else".to_string());
        let e = job_service(&j, &HashMap::new(), None, &dep())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("base.deployment") && e.contains("reserved"),
            "{e}"
        );
    }

    #[test]
    fn networks_and_volume() {
        assert_eq!(
            serde_json::to_value(network_spec(BaseNetwork::Challenges, &dep())).unwrap(),
            json!({
                "Name": "base_challenges", "Driver": "overlay", "Scope": "swarm",
                "Internal": false, "Attachable": true,
                "Options": {"encrypted": "", "com.docker.network.driver.mtu": "1450"},
                "Labels": {"base.component": "network", "base.deployment": "snap"}
            })
        );
        assert_eq!(
            serde_json::to_value(network_spec(BaseNetwork::JobsInternal, &dep())).unwrap(),
            json!({
                "Name": "base_jobs_internal", "Driver": "overlay", "Scope": "swarm",
                "Internal": true, "Attachable": false,
                "Options": {"encrypted": "", "com.docker.network.driver.mtu": "1450"},
                "Labels": {"base.component": "network", "base.deployment": "snap"}
            })
        );
        assert_eq!(
            serde_json::to_value(volume_spec(&slug("quiz"), &dep())).unwrap(),
            json!({
                "Name": "base_quiz_data", "Driver": "local",
                "Labels": {"base.component": "challenge-data", "base.challenge": "quiz",
                           "base.challenge.slug": "quiz", "base.deployment": "snap"}
            })
        );
        let enc = HashMap::from([("encrypted".to_string(), String::new())]);
        let net = BaseNetwork::JobsInternal;
        assert!(
            network_mismatch(net, Some("overlay"), Some("swarm"), Some(true), Some(&enc)).is_none()
        );
        let why = network_mismatch(net, Some("overlay"), Some("swarm"), Some(false), None).unwrap();
        assert!(
            why.contains("not encrypted") && why.contains("internal is false"),
            "{why}"
        );
        assert!(
            network_mismatch(net, Some("bridge"), Some("local"), Some(true), Some(&enc)).is_some()
        );
    }

    #[test]
    fn job_service_snapshot_cpu() {
        let s = job_service(&job(), &HashMap::new(), None, &dep()).unwrap();
        assert_snapshot("job_cpu.json", serde_json::to_value(&s).unwrap());
    }

    #[test]
    fn job_service_gpu_and_networks() {
        let mut j = job();
        j.limits.gpus = Some(2);
        j.limits.network = JobNetwork::Default;
        let v =
            serde_json::to_value(job_service(&j, &HashMap::new(), None, &dep()).unwrap()).unwrap();
        assert_eq!(
            v["TaskTemplate"]["Placement"]["Constraints"],
            json!(["node.labels.base.workload==gpu"])
        );
        assert_eq!(
            v["TaskTemplate"]["Resources"]["Reservations"],
            json!({"GenericResources": [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}]})
        );
        assert!(v["TaskTemplate"].get("Networks").is_none());

        // `none`: the job's own network, never a shared one.
        j.limits.network = JobNetwork::None;
        let v =
            serde_json::to_value(job_service(&j, &HashMap::new(), None, &dep()).unwrap()).unwrap();
        assert_eq!(
            v["TaskTemplate"]["Networks"],
            json!([{"Target": format!("base-job-{}", j.id)}])
        );
        let mut other = job();
        other.id = "other-job".into();
        other.limits.network = JobNetwork::None;
        let w = serde_json::to_value(job_service(&other, &HashMap::new(), None, &dep()).unwrap())
            .unwrap();
        assert_ne!(
            v["TaskTemplate"]["Networks"], w["TaskTemplate"]["Networks"],
            "two none jobs of one challenge never share a network"
        );

        j.limits.network = JobNetwork::Named("base_eval_net".into());
        let v =
            serde_json::to_value(job_service(&j, &HashMap::new(), None, &dep()).unwrap()).unwrap();
        assert_eq!(
            v["TaskTemplate"]["Networks"],
            json!([{"Target": "base_eval_net"}])
        );
        for bad in ["base_challenges", "host", "bridge"] {
            j.limits.network = JobNetwork::Named(bad.into());
            assert!(
                job_service(&j, &HashMap::new(), None, &dep()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn job_service_refusals() {
        type Change = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<Change> = vec![
            Box::new(|j| j.limits.gpus = Some(0)),
            Box::new(|j| j.limits.cpus = 0.0),
            Box::new(|j| j.limits.cpus = f64::NAN),
            Box::new(|j| j.limits.memory_bytes = 0),
            Box::new(|j| j.limits.security_opt = vec!["seccomp=unconfined".into()]),
            Box::new(|j| j.limits.tmpfs = vec!["tmp:size=1m".into()]),
            Box::new(|j| j.limits.tmpfs = vec!["/tmp:uid=5".into()]),
            Box::new(|j| j.limits.ulimits = vec!["nofile".into()]),
            Box::new(|j| {
                j.labels.insert("base.component".into(), "challenge".into());
            }),
            Box::new(|j| j.command.clear()),
            Box::new(|j| j.id = "bad id".into()),
            Box::new(|j| {
                j.mounts.push(crate::orchestrator::JobMount {
                    target: "/in".into(),
                    read_only: true,
                    files: BTreeMap::new(),
                })
            }),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut j = job();
            change(&mut j);
            assert!(
                job_service(&j, &HashMap::new(), None, &dep()).is_err(),
                "case {i}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("4g").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        for bad in ["", "m", "-1m", "0", "12x", "1e400"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert!(challenge_limits(&BTreeMap::from([("gpu".into(), "1".into())])).is_err());
        assert!(challenge_limits(&BTreeMap::from([("pids".into(), "0".into())])).is_err());
        assert_eq!(challenge_limits(&BTreeMap::new()).unwrap(), None);
    }

    fn task(
        index: u64,
        state: TaskState,
        desired: TaskState,
        err: Option<&str>,
        exit: Option<i64>,
    ) -> Task {
        Task {
            version: Some(ObjectVersion { index: Some(index) }),
            node_id: Some("node-1".into()),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                timestamp: Some("2030-01-01T00:00:05.123456789Z".into()),
                state: Some(state),
                message: Some(format!("{state:?}").to_lowercase()),
                err: err.map(str::to_string),
                container_status: exit.map(|e| ContainerStatus {
                    container_id: Some("c0ffee".into()),
                    exit_code: Some(e),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn job_states_from_tasks() {
        let labels = job_service(&job(), &HashMap::new(), None, &dep())
            .unwrap()
            .labels
            .unwrap();
        let s = job_status("j-0001", &labels, &[]).unwrap();
        assert!(job_status("x", &HashMap::new(), &[]).is_none());
        assert_eq!((s.state, s.slug.as_str()), (JobState::Queued, "quiz"));
        assert_eq!(
            s.deadline_at.unwrap().to_rfc3339(),
            "2030-01-02T03:04:05+00:00"
        );

        let unscheduled = "no suitable node (insufficient resources on 1 node)";
        let s = job_status(
            "j",
            &labels,
            &[task(
                3,
                TaskState::PENDING,
                TaskState::RUNNING,
                Some(unscheduled),
                None,
            )],
        )
        .unwrap();
        assert_eq!(s.state, JobState::Queued);
        assert_eq!(s.message.as_deref(), Some(unscheduled));

        let s = job_status(
            "j",
            &labels,
            &[task(4, TaskState::RUNNING, TaskState::COMPLETE, None, None)],
        )
        .unwrap();
        assert_eq!(s.state, JobState::Running);
        assert!(s.started_at.is_some() && s.finished_at.is_none());

        let s = job_status(
            "j",
            &labels,
            &[task(
                5,
                TaskState::FAILED,
                TaskState::COMPLETE,
                Some("task: non-zero exit (3)"),
                Some(3),
            )],
        )
        .unwrap();
        assert_eq!((s.state, s.exit_code), (JobState::Failed, Some(3)));
        assert!(s.finished_at.is_some());
        assert_eq!(s.node_id.as_deref(), Some("node-1"));

        let s = job_status(
            "j",
            &labels,
            &[
                task(2, TaskState::PREPARING, TaskState::RUNNING, None, None),
                task(9, TaskState::COMPLETE, TaskState::COMPLETE, None, Some(0)),
            ],
        )
        .unwrap();
        assert_eq!((s.state, s.exit_code), (JobState::Succeeded, Some(0)));
        let s = job_status(
            "j",
            &labels,
            &[task(
                2,
                TaskState::PREPARING,
                TaskState::RUNNING,
                None,
                None,
            )],
        )
        .unwrap();
        assert_eq!(s.state, JobState::Pulling);
    }

    /// What Docker 20.10 reports for a job whose image cannot be pulled:
    /// `rejected`, `ExitCode: 0` and no container. That is a job that never
    /// ran, not one that exited 0.
    #[test]
    fn a_rejected_task_has_no_exit_code() {
        let labels = job_service(&job(), &HashMap::new(), None, &dep())
            .unwrap()
            .labels
            .unwrap();
        let mut rejected = task(
            1,
            TaskState::REJECTED,
            TaskState::SHUTDOWN,
            Some("No such image: base.local/nope:1"),
            Some(0),
        );
        if let Some(c) = rejected
            .status
            .as_mut()
            .and_then(|s| s.container_status.as_mut())
        {
            c.container_id = Some(String::new());
        }
        let s = job_status("j", &labels, &[rejected]).unwrap();
        assert_eq!((s.state, s.exit_code), (JobState::Failed, None));
        assert_eq!(
            s.message.as_deref(),
            Some("No such image: base.local/nope:1")
        );

        // A failed start (no container id at all) is no exit either.
        let mut failed = task(
            2,
            TaskState::FAILED,
            TaskState::SHUTDOWN,
            Some("starting container failed"),
            Some(0),
        );
        if let Some(c) = failed
            .status
            .as_mut()
            .and_then(|s| s.container_status.as_mut())
        {
            c.container_id = None;
        }
        let s = job_status("j", &labels, &[failed]).unwrap();
        assert_eq!((s.state, s.exit_code), (JobState::Failed, None));
    }

    #[test]
    fn service_states_from_tasks() {
        let spec = challenge_service(&challenge(), &refs(), &dep()).unwrap();
        let service = Service {
            spec: Some(spec),
            ..Default::default()
        };
        let q = slug("quiz");
        let s = service_status(&q, &service, &[]);
        assert_eq!(s.state, ServiceState::Starting);
        assert_eq!(s.image.as_deref(), Some("base.local/quiz-challenge:0.1.0"));
        assert_eq!(s.endpoint.as_deref(), Some("http://challenge-quiz:8000"));
        let s = service_status(
            &q,
            &service,
            &[
                task(1, TaskState::SHUTDOWN, TaskState::SHUTDOWN, None, Some(0)),
                task(2, TaskState::RUNNING, TaskState::RUNNING, None, None),
            ],
        );
        assert_eq!(s.state, ServiceState::Running);
        assert!(s.started_at.is_some());
        let s = service_status(
            &q,
            &service,
            &[task(
                3,
                TaskState::FAILED,
                TaskState::SHUTDOWN,
                Some("exit 1"),
                Some(1),
            )],
        );
        assert_eq!(
            (s.state, s.message.as_deref()),
            (ServiceState::Failed, Some("exit 1"))
        );
    }

    fn mount(target: &str, files: &[(&str, &[u8])]) -> JobMount {
        JobMount {
            target: target.into(),
            read_only: true,
            files: files
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.to_vec()))
                .collect(),
        }
    }

    /// A job with a directory mount (nested, and an empty file) and a
    /// single-file mount.
    fn job_with_mounts() -> JobSpec {
        let mut j = job();
        j.mounts = vec![
            mount(
                "/work/in/",
                &[
                    ("answer.txt", b"42\n"),
                    ("data/rows.json", b"[1,2,3]"),
                    ("empty", b""),
                ],
            ),
            mount("/etc/task.json", &[("", b"{\"task\":7}")]),
        ];
        j
    }

    fn ids_for(files: &[MountFile<'_>]) -> HashMap<String, String> {
        files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), format!("cfg-{i}")))
            .collect()
    }

    #[test]
    fn job_mounts_snapshot() {
        let j = job_with_mounts();
        let files = job_mount_files(&j).unwrap();
        let configs: Vec<ConfigSpec> = files
            .iter()
            .map(|f| job_config_spec(&j, f, &dep()))
            .collect();
        let service = job_service(&j, &ids_for(&files), None, &dep()).unwrap();
        assert_snapshot(
            "job_mounts.json",
            json!({"configs": configs, "service": service}),
        );
    }

    #[test]
    fn mounted_files_become_configs_at_their_paths() {
        let j = job_with_mounts();
        let files = job_mount_files(&j).unwrap();
        let seen: Vec<(&str, &str, &[u8])> = files
            .iter()
            .map(|f| (f.name.as_str(), f.target.as_str(), f.data))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("base-job-j-0001-0", "/work/in/answer.txt", &b"42\n"[..]),
                (
                    "base-job-j-0001-1",
                    "/work/in/data/rows.json",
                    &b"[1,2,3]"[..]
                ),
                ("base-job-j-0001-2", "/work/in/empty", &b""[..]),
                // "" is the mount's target itself.
                ("base-job-j-0001-3", "/etc/task.json", &b"{\"task\":7}"[..]),
            ]
        );
        let spec = job_config_spec(&j, &files[0], &dep());
        assert_eq!(spec.data.as_deref(), Some("NDIK"));
        assert_eq!(spec.templating, None);
        let labels = spec.labels.unwrap();
        assert_eq!(labels["base.component"], "job-mount");
        assert_eq!(labels["base.job.id"], "j-0001");
        assert_eq!(labels["base.challenge"], "quiz");
        // The engine refuses empty data: an empty file is a template that
        // renders to nothing.
        let empty = job_config_spec(&j, &files[2], &dep());
        assert_eq!(
            empty.templating.as_ref().map(|d| d.name.as_str()),
            Some("golang")
        );
        let template = base64::engine::general_purpose::STANDARD
            .decode(empty.data.unwrap())
            .unwrap();
        assert_eq!(template, EMPTY_FILE_TEMPLATE.as_bytes());

        let service = job_service(&j, &ids_for(&files), None, &dep()).unwrap();
        let configs = service
            .task_template
            .unwrap()
            .container_spec
            .unwrap()
            .configs
            .unwrap();
        assert_eq!(configs.len(), 4);
        for (c, f) in configs.iter().zip(&files) {
            let file = c.file.as_ref().unwrap();
            assert_eq!(file.name.as_deref(), Some(f.target.as_str()));
            assert_eq!(file.mode, Some(0o444));
            assert_eq!(
                (file.uid.as_deref(), file.gid.as_deref()),
                (Some("0"), Some("0"))
            );
            assert_eq!(c.config_name.as_deref(), Some(f.name.as_str()));
        }
        // Every file needs its created config.
        let mut missing = ids_for(&files);
        missing.remove("base-job-j-0001-3");
        let e = job_service(&j, &missing, None, &dep())
            .unwrap_err()
            .to_string();
        assert!(e.contains("base-job-j-0001-3"), "{e}");
        // No mounts, no configs.
        let plain = job_service(&job(), &HashMap::new(), None, &dep()).unwrap();
        assert!(
            plain
                .task_template
                .unwrap()
                .container_spec
                .unwrap()
                .configs
                .is_none()
        );
    }

    #[test]
    fn writable_mounts_run_under_the_shim_with_seeds_and_a_tmpfs() {
        let mut j = job();
        j.mounts = vec![
            JobMount {
                read_only: false,
                ..mount("/work/", &[("notes.txt", b"seed"), ("sub/a", b"")])
            },
            mount("/in", &[("x", b"ro")]),
            JobMount {
                read_only: false,
                ..mount("/out", &[])
            },
        ];
        let files = job_mount_files(&j).unwrap();
        let targets: Vec<&str> = files.iter().map(|f| f.target.as_str()).collect();
        assert_eq!(
            targets,
            ["/.base/seed/0/notes.txt", "/.base/seed/0/sub/a", "/in/x"]
        );
        let shim = JobShim {
            host_path: "/opt/base/base-shim".into(),
            entrypoint: vec!["/bin/entry".into(), "--flag".into()],
        };
        let service = job_service(&j, &ids_for(&files), Some(&shim), &dep()).unwrap();
        let c = service
            .task_template
            .and_then(|t| t.container_spec)
            .unwrap();
        assert_eq!(c.command, Some(vec![SHIM_TARGET.to_string()]));
        let mut want: Vec<String> = [
            "run",
            "--token",
            &j.id,
            "--seed-root",
            SEED_ROOT,
            "--mount",
            "0=/work",
            "--mount",
            "1=/out",
            "--",
            "/bin/entry",
            "--flag",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        want.extend(j.command.iter().cloned());
        assert_eq!(c.args, Some(want));
        let mounts = c.mounts.unwrap();
        let tmpfs: Vec<(&str, Option<i64>, Option<i64>)> = mounts
            .iter()
            .filter(|m| m.typ == Some(MountType::TMPFS))
            .map(|m| {
                let o = m.tmpfs_options.as_ref().unwrap();
                (m.target.as_deref().unwrap(), o.size_bytes, o.mode)
            })
            .collect();
        assert!(tmpfs.contains(&("/work", Some(WRITABLE_MOUNT_BYTES), Some(0o1777))));
        assert!(tmpfs.contains(&("/out", Some(WRITABLE_MOUNT_BYTES), Some(0o1777))));
        let bind = mounts
            .iter()
            .find(|m| m.typ == Some(MountType::BIND))
            .unwrap();
        assert_eq!(
            (
                bind.source.as_deref(),
                bind.target.as_deref(),
                bind.read_only
            ),
            (Some("/opt/base/base-shim"), Some(SHIM_TARGET), Some(true))
        );
        // No shim configured: refused, naming the setting.
        let err = job_service(&j, &ids_for(&files), None, &dep())
            .unwrap_err()
            .to_string();
        assert!(err.contains("BASE_SWARM_JOB_SHIM"), "{err}");
        // Read-only jobs never see the shim.
        let plain = job_service(&job(), &HashMap::new(), Some(&shim), &dep()).unwrap();
        let c = plain.task_template.and_then(|t| t.container_spec).unwrap();
        assert_eq!(c.command, None);
        assert_eq!(c.args, Some(job().command));
    }

    #[test]
    fn mount_refusals_name_the_mount_and_the_limit() {
        let big = vec![7u8; MAX_MOUNT_FILE_BYTES + 1];
        let at_cap = vec![7u8; MAX_MOUNT_FILE_BYTES];
        let cases: Vec<(Vec<JobMount>, &str)> = vec![
            (
                vec![JobMount {
                    read_only: false,
                    ..mount("/out", &[("", b"x")])
                }],
                "a writable mount must be a directory",
            ),
            (
                vec![
                    JobMount {
                        read_only: false,
                        ..mount("/work", &[])
                    },
                    mount("/work/in", &[("a", b"x")]),
                ],
                "writable mount '/work' overlaps '/work/in",
            ),
            (
                vec![
                    mount("/etc/a.json", &[("", b"x")]),
                    JobMount {
                        read_only: false,
                        ..mount("/etc", &[])
                    },
                ],
                "writable mount '/etc' overlaps '/etc/a.json'",
            ),
            (
                vec![
                    JobMount {
                        read_only: false,
                        ..mount("/w", &[])
                    },
                    JobMount {
                        read_only: false,
                        ..mount("/w/sub", &[])
                    },
                ],
                "writable mount '/w/sub' overlaps '/w'",
            ),
            (
                vec![mount("/.base/seed/0/x", &[("", b"x")])],
                "/.base is reserved",
            ),
            (vec![mount("/in", &[])], "no files"),
            (vec![mount("in", &[("a", b"x")])], "clean absolute path"),
            (vec![mount("/", &[("a", b"x")])], "clean absolute path"),
            (
                vec![mount("/a/../b", &[("a", b"x")])],
                "clean absolute path",
            ),
            (vec![mount("/a//b", &[("a", b"x")])], "clean absolute path"),
            (
                vec![mount("/in", &[("../x", b"x")])],
                "not a clean relative path",
            ),
            (
                vec![mount("/in", &[("/x", b"x")])],
                "not a clean relative path",
            ),
            (
                vec![mount("/in", &[("a//b", b"x")])],
                "not a clean relative path",
            ),
            (
                vec![mount("/in", &[("./a", b"x")])],
                "not a clean relative path",
            ),
            (
                vec![mount("/in", &[("", b"x"), ("a", b"y")])],
                "both as a file",
            ),
            (
                vec![mount("/in", &[("big.bin", &big)])],
                "file '/in/big.bin' is 512000 bytes; a mounted file may have at most 511999",
            ),
            (
                vec![mount("/a", &[("b", b"x")]), mount("/a/b", &[("", b"y")])],
                "two mounted files would land on '/a/b'",
            ),
            (
                vec![mount("/a", &[("b", b"x")]), mount("/a/b/c", &[("", b"y")])],
                "'/a/b' would be a directory for '/a/b/c'",
            ),
        ];
        for (i, (mounts, want)) in cases.into_iter().enumerate() {
            let mut j = job();
            j.mounts = mounts;
            let e = job_mount_files(&j).unwrap_err().to_string();
            assert!(e.contains(want), "case {i}: {e}");
            // job_service refuses the same, before any config exists.
            assert!(
                job_service(&j, &HashMap::new(), None, &dep()).is_err(),
                "case {i}"
            );
        }
        let mut j = job();
        j.mounts = vec![mount("/in", &[("cap.bin", &at_cap)])];
        assert_eq!(job_mount_files(&j).unwrap().len(), 1, "the cap itself fits");

        // Count and total caps.
        let many: Vec<(String, Vec<u8>)> = (0..=MAX_MOUNT_FILES)
            .map(|i| (format!("f{i:03}"), b"x".to_vec()))
            .collect();
        let mut j = job();
        j.mounts = vec![JobMount {
            target: "/in".into(),
            read_only: true,
            files: many[..MAX_MOUNT_FILES].iter().cloned().collect(),
        }];
        assert_eq!(job_mount_files(&j).unwrap().len(), MAX_MOUNT_FILES);
        j.mounts[0].files = many.into_iter().collect();
        let e = job_mount_files(&j).unwrap_err().to_string();
        assert!(e.contains("at most 256 files"), "{e}");

        let files = MAX_MOUNT_BYTES / MAX_MOUNT_FILE_BYTES + 1;
        let mut j = job();
        j.mounts = vec![JobMount {
            target: "/in".into(),
            read_only: true,
            files: (0..files)
                .map(|i| (format!("f{i:02}"), at_cap.clone()))
                .collect(),
        }];
        let e = job_mount_files(&j).unwrap_err().to_string();
        assert!(e.contains("exceed 16777216 bytes in all"), "{e}");
    }

    #[test]
    fn config_names_fit_swarm() {
        assert_eq!(job_config_name("j-1", 0), "base-job-j-1-0");
        assert_eq!(job_config_name("abc", 255), "base-job-abc-255");
        let long = "a".repeat(54);
        let long2 = format!("{}b", "a".repeat(53));
        for n in [0, 9, 255] {
            let name = job_config_name(&long, n);
            assert!(name.len() <= MAX_CONFIG_NAME, "{name}");
            assert!(name.ends_with(&format!("-{n}")), "{name}");
            assert_ne!(name, job_config_name(&long2, n));
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{name}"
            );
        }
        // Exactly at the budget: kept whole.
        let fits = "c".repeat(MAX_CONFIG_NAME - JOB_PREFIX.len() - 4);
        assert_eq!(job_config_name(&fits, 100), format!("base-job-{fits}-100"));
    }

    fn config(id: &str, labels: &[(&str, &str)], created: &str) -> Config {
        Config {
            id: Some(id.into()),
            created_at: Some(created.into()),
            spec: Some(ConfigSpec {
                name: Some(format!("name-{id}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn orphaned_mounts_are_old_base_configs_of_gone_jobs() {
        let now = DateTime::parse_from_rfc3339("2030-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let old = "2030-01-01T00:00:00.123456789Z";
        let young = "2030-01-01T00:09:30Z";
        fn mount_of(job: &str) -> Vec<(&str, &str)> {
            vec![
                ("base.component", "job-mount"),
                ("base.job.id", job),
                ("base.challenge", "quiz"),
                ("base.deployment", "snap"),
            ]
        }
        let other = [
            ("base.component", "job-mount"),
            ("base.job.id", "j-theirs"),
            ("base.deployment", "other"),
        ];
        let unlabelled = [("base.component", "job-mount"), ("base.job.id", "j-old")];
        let configs = vec![
            config("gone", &mount_of("j-gone"), old),
            config("live", &mount_of("j-live"), old),
            config("young", &mount_of("j-new"), young),
            config("unparsed", &mount_of("j-gone-2"), "yesterday"),
            config(
                "foreign",
                &[("base.component", "other"), ("base.job.id", "j-gone")],
                old,
            ),
            config("nolabel", &[("base.component", "job-mount")], old),
            config("theirs", &other, old),
            config("unlabelled", &unlabelled, old),
            Config::default(),
        ];
        let live = HashSet::from(["j-live".to_string()]);
        let minute = chrono::Duration::seconds(60);
        let orphans = orphaned_job_mounts(&configs, &live, now, minute, &dep());
        let ids: Vec<&str> = orphans.iter().map(|o| o.id.as_str()).collect();
        // Another deployment's config, and one from before deployment ids,
        // are not this (non-default) deployment's to prune.
        assert_eq!(ids, ["gone", "unparsed"]);
        // The default deployment adopts the unlabelled one, never the other
        // deployment's.
        let base = orphaned_job_mounts(&configs, &live, now, minute, &DeploymentId::default());
        let ids: Vec<&str> = base.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["unlabelled"]);
        assert_eq!(orphans[0].job_id, "j-gone");
        assert_eq!(orphans[0].name, "name-gone");
    }

    #[test]
    fn a_none_jobs_network_is_internal_and_its_own() {
        let j = job();
        let v = serde_json::to_value(job_network_spec(&j, &dep()).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({
                "Name": format!("base-job-{}", j.id), "Driver": "overlay", "Scope": "swarm",
                "Internal": true, "Attachable": false,
                "Options": {"com.docker.network.driver.mtu": "1450"},
                "Labels": {"base.component": "job-network", "base.job.id": j.id,
                           "base.challenge": j.slug.as_str(), "base.deployment": "snap"}
            })
        );
        let mut bad = job();
        bad.id = "../x".into();
        assert!(job_network_spec(&bad, &dep()).is_err());
    }

    #[test]
    fn orphaned_job_networks_are_old_base_networks_of_gone_jobs() {
        let now = DateTime::parse_from_rfc3339("2030-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let net = |name: &str, labels: &[(&str, &str)], created: &str| bollard::models::Network {
            name: Some(name.to_string()),
            created: Some(created.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let of = |job: &'static str| {
            [
                ("base.component", "job-network"),
                ("base.job.id", job),
                ("base.deployment", "snap"),
            ]
        };
        let old = "2030-01-01T00:09:00Z";
        let networks = vec![
            net("base-job-gone", &of("gone"), old),
            net("base-job-live", &of("live"), old),
            net("base-job-young", &of("young"), "2030-01-01T00:09:55Z"),
            net("base-job-unparsed", &of("unparsed"), "yesterday"),
            net("base_challenges", &[("base.component", "network")], old),
            net("foreign", &[("base.job.id", "gone")], old),
            net(
                "base-job-theirs",
                &[
                    ("base.component", "job-network"),
                    ("base.job.id", "theirs"),
                    ("base.deployment", "other"),
                ],
                old,
            ),
            net(
                "base-job-old",
                &[("base.component", "job-network"), ("base.job.id", "old")],
                old,
            ),
            bollard::models::Network::default(),
        ];
        let live = HashSet::from(["live".to_string()]);
        let grace = chrono::Duration::seconds(15);
        assert_eq!(
            orphaned_job_networks(&networks, &live, now, grace, &dep()),
            ["base-job-gone", "base-job-unparsed"]
        );
        assert_eq!(
            orphaned_job_networks(&networks, &live, now, grace, &DeploymentId::default()),
            ["base-job-old"],
            "the default deployment adopts unlabelled job networks only"
        );
    }

    mod mount_props {
        use super::*;
        use proptest::prelude::*;

        /// Sizes around every limit (kept few, so cases stay cheap).
        fn size() -> impl Strategy<Value = usize> {
            prop_oneof![
                Just(0),
                Just(3),
                Just(MAX_MOUNT_FILE_BYTES),
                Just(MAX_MOUNT_FILE_BYTES + 1),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Well-formed mounts are accepted exactly when every file, the
            /// count and the total are within the limits; an accepted plan
            /// has one config per file, each under its mount's target.
            #[test]
            fn the_limits_decide_and_nothing_else(
                mounts in proptest::collection::vec(
                    proptest::collection::vec(size(), 1..20), 1..4),
            ) {
                let mut j = job();
                j.mounts = mounts
                    .iter()
                    .enumerate()
                    .map(|(m, sizes)| JobMount {
                        target: format!("/m{m}"),
                        read_only: true,
                        files: sizes
                            .iter()
                            .enumerate()
                            .map(|(i, n)| (format!("d/f{i}"), vec![1u8; *n]))
                            .collect(),
                    })
                    .collect();
                let all: Vec<usize> = mounts.iter().flatten().copied().collect();
                let fits = all.iter().all(|n| *n <= MAX_MOUNT_FILE_BYTES)
                    && all.iter().sum::<usize>() <= MAX_MOUNT_BYTES
                    && all.len() <= MAX_MOUNT_FILES;
                match job_mount_files(&j) {
                    Ok(files) => {
                        prop_assert!(fits);
                        prop_assert_eq!(files.len(), all.len());
                        for f in &files {
                            prop_assert!(f.data.len() <= MAX_MOUNT_FILE_BYTES);
                            prop_assert!(f.name.len() <= MAX_CONFIG_NAME);
                            let under = j.mounts.iter().any(|m| f.target.starts_with(&format!("{}/", m.target)));
                            prop_assert!(under, "{}", f.target);
                        }
                        let names: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
                        prop_assert_eq!(names.len(), files.len());
                    }
                    Err(e) => prop_assert!(!fits, "refused within the limits: {}", e),
                }
            }

            /// A job's orphans never include a config whose job still has a
            /// service, one younger than the grace, one BASE did not label
            /// as a job mount, or one of another deployment (owner 0: this
            /// deployment's label, 1: another's, 2: none — the default
            /// deployment's).
            #[test]
            fn pruning_spares_live_young_and_foreign_configs(
                entries in proptest::collection::vec(
                    (0u8..6, any::<bool>(), 0i64..600, any::<bool>(), 0u8..3), 0..20),
                default_deployment in any::<bool>(),
            ) {
                let deployment = if default_deployment {
                    DeploymentId::default()
                } else {
                    dep()
                };
                let mine = |owner: u8| if default_deployment { owner == 2 } else { owner == 0 };
                let now = DateTime::parse_from_rfc3339("2030-01-01T01:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc);
                let grace = chrono::Duration::seconds(60);
                let configs: Vec<Config> = entries
                    .iter()
                    .enumerate()
                    .map(|(i, (job, ours, age, _, owner))| {
                        let job = format!("j{job}");
                        let component = if *ours { "job-mount" } else { "job" };
                        let created = (now - chrono::Duration::seconds(*age))
                            .to_rfc3339_opts(SecondsFormat::Nanos, true);
                        let mut labels = vec![("base.component", component), ("base.job.id", &job)];
                        match owner {
                            0 => labels.push(("base.deployment", "snap")),
                            1 => labels.push(("base.deployment", "other")),
                            _ => {}
                        }
                        config(&format!("c{i}"), &labels, &created)
                    })
                    .collect();
                let live: HashSet<String> = entries
                    .iter()
                    .filter(|e| e.3)
                    .map(|e| format!("j{}", e.0))
                    .collect();
                let orphans = orphaned_job_mounts(&configs, &live, now, grace, &deployment);
                for o in &orphans {
                    let i: usize = o.id[1..].parse().unwrap();
                    let (job, ours, age, _, owner) = entries[i];
                    prop_assert!(ours);
                    prop_assert!(mine(owner));
                    let job_id = format!("j{job}");
                    prop_assert!(!live.contains(&job_id));
                    prop_assert!(age >= 60);
                }
                // And every config that is none of those is pruned.
                let expected = entries
                    .iter()
                    .filter(|(job, ours, age, _, owner)| {
                        *ours && mine(*owner) && *age >= 60 && !live.contains(&format!("j{job}"))
                    })
                    .count();
                prop_assert_eq!(orphans.len(), expected);
            }
        }
    }

    #[test]
    fn a_job_is_settled_once_every_task_ended_or_leaves() {
        use TaskState as S;
        let t = |state, desired| task(1, state, desired, None, None);
        assert!(!job_tasks_settled(&[]), "no task yet: one may be coming");
        // A running job task's desired state is `complete`.
        assert!(!job_tasks_settled(&[t(S::RUNNING, S::COMPLETE)]));
        assert!(!job_tasks_settled(&[t(S::PENDING, S::COMPLETE)]));
        assert!(!job_tasks_settled(&[t(S::PREPARING, S::RUNNING)]));
        assert!(job_tasks_settled(&[t(S::RUNNING, S::REMOVE)]));
        assert!(job_tasks_settled(&[t(S::STARTING, S::SHUTDOWN)]));
        for ended in [
            S::COMPLETE,
            S::FAILED,
            S::REJECTED,
            S::SHUTDOWN,
            S::ORPHANED,
        ] {
            assert!(job_tasks_settled(&[t(ended, S::COMPLETE)]), "{ended:?}");
        }
        assert!(!job_tasks_settled(&[
            t(S::FAILED, S::COMPLETE),
            t(S::RUNNING, S::COMPLETE)
        ]));
        assert!(!job_tasks_settled(&[Task::default()]));
    }

    #[test]
    fn a_stopped_job_spec_asks_for_nothing_and_keeps_the_rest() {
        let mut spec = job_service(&job(), &HashMap::new(), None, &dep()).unwrap();
        spec.update_config = Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            ..Default::default()
        });
        let stopped = stopped_job_spec(spec.clone());
        assert_eq!(
            serde_json::to_value(&stopped.mode).unwrap(),
            json!({"ReplicatedJob": {"MaxConcurrent": 0, "TotalCompletions": 0}})
        );
        assert!(stopped.update_config.is_none() && stopped.rollback_config.is_none());
        assert_eq!(stopped.task_template, spec.task_template);
        assert_eq!(stopped.labels, spec.labels);
        assert_eq!(stopped.name, spec.name);
    }
}
