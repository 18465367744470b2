//! The broker's wire types and request rules (CONTRACTS.md §4), as pure
//! functions.
//!
//! Existing challenge images speak the Python platform's broker protocol,
//! so the serde shapes here are byte-compatible with it, and every job a
//! challenge asks for is untrusted: [`validate`] decides, before anything
//! is created, whether a [`BrokerRunRequest`] may run at all and turns it
//! into a [`ValidatedJob`] whose limits the orchestrator can apply as they
//! are. Nothing here touches the network, the clock or the cluster.
//!
//! Decisions worth knowing:
//! - **Unknown fields are ignored**, as pydantic's default (`extra="ignore"`)
//!   did on the Python platform. Every default is the hardened value, so a
//!   misspelt or unsupported field (`"read_onyl": false`, `"cap_add"`) can
//!   only leave a job *more* restricted, never less; rejecting them would
//!   break images written against the Python broker for no safety gain.
//! - **Shape errors vs. rule errors**: a wrong JSON type or a missing
//!   required field fails deserialization (the HTTP layer's 422, as
//!   pydantic answered); every range, syntax and policy rule is checked by
//!   [`validate`] and answered 400/403 with a message naming the field.
//! - **`job_id`/`task_id` charset** is `[A-Za-z0-9._-]` (the Python broker
//!   only bounded their length): they become Swarm labels and log fields.
//! - **`privileged`** did not exist on the Python broker (it was silently
//!   ignored); it is honoured here only with the per-challenge escape hatch.
//! - **Allowlist matching** is by prefix on the image string, at a name
//!   boundary (see [`image_allowed`]).
//! - The response's `container_name` is `base-job-<id>` for the broker's
//!   own job id (see [`container_name`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::model::{BrokerPolicy, ImageRef, Slug};
use crate::orchestrator::{JobLimits, JobMount, JobNetwork, JobSpec};

/// Longest `job_id` accepted.
pub const MAX_JOB_ID_LEN: usize = 128;
/// Longest `task_id` accepted.
pub const MAX_TASK_ID_LEN: usize = 256;
/// Longest `timeout_seconds` accepted (one day).
pub const MAX_TIMEOUT_SECONDS: i64 = 86_400;
/// `timeout_seconds` when the request leaves it out.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 900;
/// Smallest memory limit accepted (Docker refuses less than 6 MiB).
pub const MIN_MEMORY_BYTES: i64 = 6 * 1024 * 1024;
/// Label prefix reserved for the broker's own labels.
pub const RESERVED_LABEL_PREFIX: &str = "base.";

/// Why a broker request was refused; the `Display` text is the message the
/// challenge receives and [`BrokerError::status`] the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The request is malformed or asks for something no job may have (400).
    #[error("{0}")]
    Invalid(String),
    /// The request is well formed but this challenge may not do it (403).
    #[error("{0}")]
    Forbidden(String),
    /// The challenge has too many jobs running right now (429).
    #[error("{0}")]
    TooManyJobs(String),
    /// The operator's policy for the challenge is itself unusable (500).
    #[error("{0}")]
    Policy(String),
    /// The caller is not who it claims to be (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The job asked about is not the caller's, or does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The store or the cluster failed; retrying later may work (503).
    #[error("{0}")]
    Unavailable(String),
}

impl BrokerError {
    /// The HTTP status the broker answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::Forbidden(_) => 403,
            Self::TooManyJobs(_) => 429,
            Self::Policy(_) => 500,
            Self::Unauthorized(_) => 401,
            Self::NotFound(_) => 404,
            Self::Unavailable(_) => 503,
        }
    }
}

fn invalid(msg: impl Into<String>) -> BrokerError {
    BrokerError::Invalid(msg.into())
}

/// When the worker fetches the job's image (`image_pull_policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagePullPolicy {
    /// Always pull.
    Always,
    /// Pull only when the node lacks the image (the default).
    #[default]
    IfNotPresent,
    /// Never pull; the image must already be on the node.
    Never,
}

/// `POST /v1/docker/run`: one job a challenge wants run to completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerRunRequest {
    /// The challenge's id for the job (1..128 of `[A-Za-z0-9._-]`).
    pub job_id: String,
    /// The challenge's task id (≤256 of `[A-Za-z0-9._-]`).
    #[serde(default)]
    pub task_id: Option<String>,
    /// The image to run (must be on the allowlist).
    pub image: String,
    /// When to pull the image; `null` or absent means `IfNotPresent`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub image_pull_policy: ImagePullPolicy,
    /// argv (at least one item).
    pub command: Vec<String>,
    /// Working directory (absolute).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra labels (never `base.*`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Limits and hardening; absent means every default.
    #[serde(default)]
    pub limits: Limits,
    /// Archives to unpack into the job.
    #[serde(default)]
    pub mounts: Vec<MountRequest>,
    /// How long the job may run (1..86400 seconds).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: i64,
}

fn default_timeout_seconds() -> i64 {
    DEFAULT_TIMEOUT_SECONDS
}

/// Reads `null` as the type's default (pydantic's `X | None = None` fields
/// whose `None` the broker treats as the default).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A job's resource limits and hardening, with CONTRACTS.md §4 defaults
/// for every field left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// CPU cores (> 0); default 2.0.
    pub cpus: f64,
    /// Memory limit, Docker notation; default `"4g"`.
    pub memory: String,
    /// Memory plus swap, Docker notation; default `"4g"`; `null` = unset.
    pub memory_swap: Option<String>,
    /// Process limit (≥ 1); default 512.
    pub pids_limit: i64,
    /// GPUs; `null` (default) = CPU only, else an integer ≥ 1.
    pub gpu_count: Option<i64>,
    /// `none` (default), `default` or a `base_*` job network.
    pub network: String,
    /// Read-only root filesystem; must stay `true`.
    pub read_only: bool,
    /// `uid[:gid]` or `name[:group]` to run as; default the image's.
    pub user: Option<String>,
    /// tmpfs mounts, `path[:options]`.
    pub tmpfs: Vec<String>,
    /// Ulimits, `name=soft[:hard]`.
    pub ulimits: Vec<String>,
    /// Capabilities dropped; must include `ALL`.
    pub cap_drop: Vec<String>,
    /// Security options; must include `no-new-privileges`.
    pub security_opt: Vec<String>,
    /// Run an init as PID 1; must stay `true`.
    pub init: bool,
    /// Privileged container; only with the per-challenge escape hatch.
    pub privileged: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpus: 2.0,
            memory: "4g".to_string(),
            memory_swap: Some("4g".to_string()),
            pids_limit: 512,
            gpu_count: None,
            network: "none".to_string(),
            read_only: true,
            user: None,
            tmpfs: vec!["/tmp:rw,noexec,nosuid,size=512m".to_string()],
            ulimits: vec!["nofile=1024:1024".to_string()],
            cap_drop: vec!["ALL".to_string()],
            security_opt: vec!["no-new-privileges".to_string()],
            init: true,
            privileged: false,
        }
    }
}

/// What an archive mount holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// A directory of the archive (the default).
    #[default]
    Directory,
    /// One file of the archive.
    File,
}

/// One archive to unpack into a job (`mounts[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountRequest {
    /// Absolute path inside the job.
    pub target: String,
    /// Mounted read-only; default `true`.
    #[serde(default = "default_true")]
    pub read_only: bool,
    /// Directory or single file.
    #[serde(default)]
    pub source_type: SourceType,
    /// Which member of the archive, relative; default `"."`.
    #[serde(default = "default_source_name")]
    pub source_name: String,
    /// Base64 of a gzip tar (checked by the archive module, not here).
    /// Required, as in the Python platform; a writable mount may give `""`
    /// and then starts as an empty directory.
    pub archive_b64: String,
}

fn default_true() -> bool {
    true
}

fn default_source_name() -> String {
    ".".to_string()
}

/// The answer to `POST /v1/docker/run`, once the job has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRunResponse {
    /// `base-job-<id>` (see [`container_name`]).
    pub container_name: String,
    /// Tail of stdout.
    #[serde(default)]
    pub stdout: String,
    /// Tail of stderr.
    #[serde(default)]
    pub stderr: String,
    /// Exit code; 124 when the job timed out.
    pub returncode: i64,
    /// Whether the job was stopped at its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// What came back from the job's writable mounts, in mount order (a
    /// BASE extension; absent when the job had none, so the Python
    /// platform's shape is unchanged for every existing caller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<crate::model::JobOutput>,
}

/// The exit code reported for a job stopped at its timeout.
pub const TIMEOUT_RETURNCODE: i64 = 124;

/// `POST /v1/docker/cleanup`: remove a job of the calling challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupRequest {
    /// The challenge's job id.
    pub job_id: String,
}

/// The answer to a cleanup: always `{"status":"ok"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupResponse {
    /// `"ok"`.
    pub status: String,
}

impl CleanupResponse {
    /// `{"status":"ok"}`.
    pub fn ok() -> Self {
        Self {
            status: "ok".to_string(),
        }
    }
}

/// `POST /v1/docker/list`: the calling challenge's jobs, optionally one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// Only this job id, when set.
    #[serde(default)]
    pub job_id: Option<String>,
}

/// The answer to a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// The challenge's jobs.
    #[serde(default)]
    pub containers: Vec<ContainerInfo>,
}

/// One job in a [`ListResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The cluster's id for it.
    pub container_id: String,
    /// `base-job-<id>`.
    pub container_name: String,
    /// Its image.
    #[serde(default)]
    pub image: String,
    /// Its state, as text.
    #[serde(default)]
    pub status: String,
    /// The challenge's job id.
    #[serde(default)]
    pub job_id: Option<String>,
    /// The challenge's task id.
    #[serde(default)]
    pub task_id: Option<String>,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The name a job is reported under: `base-job-<id>`, where `id` is the
/// broker's own unique job id (the Swarm service carries the same name),
/// never the challenge's `job_id`, which need not be unique.
pub fn container_name(id: &str) -> String {
    format!("base-job-{id}")
}

/// What [`validate`] checks a request against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationContext {
    /// Image prefixes every challenge may run.
    pub global_allowed_images: Vec<String>,
    /// The calling challenge's own limits and extra prefixes.
    pub policy: BrokerPolicy,
    /// Networks jobs may never join (e.g. `base_challenges`).
    pub control_plane_networks: Vec<String>,
}

/// A request that passed every rule, with its sizes parsed; the only way
/// to get one is [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJob {
    job_id: String,
    task_id: Option<String>,
    image: ImageRef,
    image_pull_policy: ImagePullPolicy,
    command: Vec<String>,
    workdir: Option<String>,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    limits: JobLimits,
    memory_swap_bytes: Option<i64>,
    privileged: bool,
    mounts: Vec<MountRequest>,
    timeout_seconds: u64,
}

impl ValidatedJob {
    /// The challenge's job id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The challenge's task id.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// The parsed image.
    pub fn image(&self) -> &ImageRef {
        &self.image
    }

    /// When to pull the image.
    pub fn image_pull_policy(&self) -> ImagePullPolicy {
        self.image_pull_policy
    }

    /// The limits the orchestrator applies.
    pub fn limits(&self) -> &JobLimits {
        &self.limits
    }

    /// `limits.memory_swap` in bytes (`None` when the request sent `null`).
    /// Swarm has no swap setting, so this is checked and kept, not applied.
    pub fn memory_swap_bytes(&self) -> Option<i64> {
        self.memory_swap_bytes
    }

    /// Whether the job asked to be privileged (and was allowed to).
    pub fn privileged(&self) -> bool {
        self.privileged
    }

    /// The mount requests, for the archive module to check and extract.
    pub fn mounts(&self) -> &[MountRequest] {
        &self.mounts
    }

    /// How long the job may run.
    pub fn timeout_seconds(&self) -> u64 {
        self.timeout_seconds
    }

    /// The orchestrator's spec for this job: `id` is the broker's unique id,
    /// `mounts` the extracted archives (in request order), and the deadline
    /// `now + timeout_seconds`.
    pub fn into_job_spec(
        self,
        id: String,
        slug: Slug,
        mounts: Vec<JobMount>,
        now: DateTime<Utc>,
    ) -> JobSpec {
        // `validate` bounds the timeout to one day, so this never saturates.
        let secs = i64::try_from(self.timeout_seconds)
            .unwrap_or(MAX_TIMEOUT_SECONDS)
            .min(MAX_TIMEOUT_SECONDS);
        JobSpec {
            id,
            slug,
            job_id: self.job_id,
            task_id: self.task_id,
            image: self.image,
            command: self.command,
            workdir: self.workdir,
            env: self.env,
            labels: self.labels,
            limits: self.limits,
            mounts,
            timeout_seconds: self.timeout_seconds,
            deadline_at: now + TimeDelta::seconds(secs),
        }
    }
}

/// Refuses a new job when the challenge already runs its
/// `max_concurrent_jobs` (429); no limit in the policy means no
/// per-challenge limit.
pub fn check_concurrency(
    slug: &Slug,
    running: usize,
    policy: &BrokerPolicy,
) -> Result<(), BrokerError> {
    match policy.max_concurrent_jobs {
        Some(max) if running >= usize::try_from(max).unwrap_or(usize::MAX) => {
            Err(BrokerError::TooManyJobs(format!(
                "challenge '{slug}' has reached its concurrent job limit ({max})"
            )))
        }
        _ => Ok(()),
    }
}

/// Checks a request against every broker rule; the first failing rule
/// wins, in this order: ids, timeout and command; privileged (403);
/// hardening; image and allowlist (403); network; sizes and the
/// challenge's maxima; user, tmpfs and ulimits; env and labels; mounts.
pub fn validate(
    req: &BrokerRunRequest,
    ctx: &ValidationContext,
) -> Result<ValidatedJob, BrokerError> {
    check_job_id(&req.job_id)?;
    if let Some(task) = &req.task_id
        && (task.len() > MAX_TASK_ID_LEN || !task.chars().all(id_char))
    {
        return Err(invalid(
            "task_id must be at most 256 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&req.timeout_seconds) {
        return Err(invalid("timeout_seconds must be between 1 and 86400"));
    }
    if req.command.is_empty() {
        return Err(invalid("command must have at least one item"));
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(invalid("command items may not contain NUL bytes"));
    }
    if let Some(dir) = &req.workdir
        && !absolute_path(dir)
    {
        return Err(invalid(
            "workdir must be an absolute path without .. components",
        ));
    }

    let l = &req.limits;
    if l.privileged && !ctx.policy.allow_privileged {
        return Err(BrokerError::Forbidden(
            "privileged broker jobs require the allowlisted escape hatch".to_string(),
        ));
    }
    check_hardening(l)?;

    let image = ImageRef::parse(&req.image).map_err(|e| {
        invalid(format!(
            "image '{}' is not a valid image reference: {e}",
            req.image
        ))
    })?;
    let allowed = ctx
        .global_allowed_images
        .iter()
        .chain(&ctx.policy.allowed_images);
    if !allowed.into_iter().any(|p| image_allowed(&req.image, p)) {
        return Err(BrokerError::Forbidden(format!(
            "image '{}' is not in the broker allowlist",
            req.image
        )));
    }

    let network = map_network(&l.network, &ctx.control_plane_networks)?;

    let (memory_bytes, memory_swap_bytes, gpus) = check_sizes(req, &ctx.policy)?;

    if let Some(user) = &l.user
        && !valid_user(user)
    {
        return Err(invalid(format!(
            "limits.user '{user}' must be uid[:gid] or name[:group]"
        )));
    }
    if let Some(bad) = l.tmpfs.iter().find(|t| !valid_tmpfs(t)) {
        return Err(invalid(format!(
            "limits.tmpfs entry '{bad}' must be an absolute path other than / optionally followed by :options"
        )));
    }
    if let Some(bad) = l.ulimits.iter().find(|u| !valid_ulimit(u)) {
        return Err(invalid(format!(
            "limits.ulimits entry '{bad}' must be name=soft[:hard] with a known name and soft <= hard"
        )));
    }

    check_env_and_labels(req)?;
    check_mounts(&req.mounts)?;

    Ok(ValidatedJob {
        job_id: req.job_id.clone(),
        task_id: req.task_id.clone(),
        image,
        image_pull_policy: req.image_pull_policy,
        command: req.command.clone(),
        workdir: req.workdir.clone(),
        env: req.env.clone(),
        labels: req.labels.clone(),
        limits: JobLimits {
            cpus: l.cpus,
            memory_bytes,
            pids: l.pids_limit,
            gpus,
            network,
            read_only: l.read_only,
            user: l.user.clone(),
            tmpfs: l.tmpfs.clone(),
            ulimits: l.ulimits.clone(),
            cap_drop: l.cap_drop.clone(),
            security_opt: l.security_opt.clone(),
            init: l.init,
        },
        memory_swap_bytes,
        privileged: l.privileged,
        mounts: req.mounts.clone(),
        // The range check above makes this lossless.
        timeout_seconds: req.timeout_seconds.unsigned_abs(),
    })
}

/// Checks a `job_id` (also for cleanup and list): 1..128 characters of
/// `[A-Za-z0-9._-]`.
pub fn check_job_id(job_id: &str) -> Result<(), BrokerError> {
    if job_id.is_empty() || job_id.len() > MAX_JOB_ID_LEN || !job_id.chars().all(id_char) {
        return Err(invalid(
            "job_id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(())
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_hardening(l: &Limits) -> Result<(), BrokerError> {
    if !l.read_only {
        return Err(invalid(
            "broker Docker jobs require a read-only root filesystem",
        ));
    }
    if !l.init {
        return Err(invalid(
            "broker Docker jobs require Docker init for process cleanup",
        ));
    }
    if !l.cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        return Err(invalid(
            "broker Docker jobs must drop all Linux capabilities",
        ));
    }
    if let Some(bad) = l.security_opt.iter().find(|o| !no_new_privileges(o)) {
        return Err(invalid(format!(
            "limits.security_opt entry '{bad}' is not allowed for broker jobs (only no-new-privileges)"
        )));
    }
    if l.security_opt.is_empty() {
        return Err(invalid("broker Docker jobs require no-new-privileges"));
    }
    Ok(())
}

/// `no-new-privileges`, `no-new-privileges:true` or `no-new-privileges=true`.
fn no_new_privileges(opt: &str) -> bool {
    matches!(
        opt.strip_prefix("no-new-privileges"),
        Some("" | ":true" | "=true")
    )
}

/// Whether `image` falls under the allowlist entry `prefix`. An entry that
/// ends in `/`, `:` or `@` admits anything that starts with it; any other
/// entry admits itself exactly or followed by `/`, `:` or `@`, so
/// `ghcr.io/org` admits `ghcr.io/org/x` but never `ghcr.io/orgevil/x`.
/// Empty entries admit nothing.
pub fn image_allowed(image: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let Some(rest) = image.strip_prefix(prefix) else {
        return false;
    };
    prefix.ends_with(['/', ':', '@']) || rest.is_empty() || rest.starts_with(['/', ':', '@'])
}

/// Maps `limits.network`: `none`, `default`, or a `base_*` network that is
/// not one of `control_plane`.
pub fn map_network(name: &str, control_plane: &[String]) -> Result<JobNetwork, BrokerError> {
    match name {
        "none" => Ok(JobNetwork::None),
        "default" => Ok(JobNetwork::Default),
        _ if control_plane.iter().any(|c| c == name) => Err(invalid(format!(
            "limits.network '{name}' is a control-plane network and is never available to broker jobs"
        ))),
        _ if name.strip_prefix("base_").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }) =>
        {
            Ok(JobNetwork::Named(name.to_string()))
        }
        _ => Err(invalid(format!(
            "limits.network '{name}' is not allowed: use none, default or a base_* job network"
        ))),
    }
}

/// Parses a Docker memory size to bytes: a number (decimals allowed) and
/// an optional unit `b`, `k`, `m`, `g`, `t` or `p` (powers of 1024),
/// optionally followed by `i` and/or `b` (`2gb`, `2GiB`); case-insensitive,
/// surrounding white space ignored. `"0"` parses; the caller decides what
/// is too small.
pub fn parse_memory(raw: &str) -> Result<i64, BrokerError> {
    memory_bytes(raw).map_err(|why| invalid(format!("'{raw}' is not a memory size: {why}")))
}

fn memory_bytes(raw: &str) -> Result<i64, &'static str> {
    const EXPECTED: &str = "expected bytes or a number with k, m, g or t (e.g. 512m)";
    let s = raw.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim_start();
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        "p" | "pb" | "pi" | "pib" => 50,
        _ => return Err(EXPECTED),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || (number.contains('.') && frac.is_empty()) || frac.contains('.') {
        return Err(EXPECTED);
    }
    if int.len() > 20 || frac.len() > 18 {
        return Err("too large or too precise");
    }
    let too_large = "larger than the largest size accepted";
    let int: u128 = int.parse().map_err(|_| EXPECTED)?;
    let mut bytes = int.checked_mul(1u128 << shift).ok_or(too_large)?;
    if !frac.is_empty() {
        let frac_value: u128 = frac.parse().map_err(|_| EXPECTED)?;
        let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| EXPECTED)?);
        bytes += (frac_value << shift) / scale;
    }
    i64::try_from(bytes).map_err(|_| too_large)
}

/// Parses sizes and checks them against their ranges and the challenge's
/// maxima: (memory bytes, memory+swap bytes, GPUs).
fn check_sizes(
    req: &BrokerRunRequest,
    policy: &BrokerPolicy,
) -> Result<(i64, Option<i64>, Option<u32>), BrokerError> {
    let l = &req.limits;
    if !(l.cpus.is_finite() && l.cpus > 0.0) {
        return Err(invalid(
            "limits.cpus must be a finite number greater than 0",
        ));
    }
    let memory = memory_bytes(&l.memory).map_err(|why| {
        invalid(format!(
            "limits.memory '{}' is not a memory size: {why}",
            l.memory
        ))
    })?;
    if memory < MIN_MEMORY_BYTES {
        return Err(invalid(format!(
            "limits.memory must be at least 6m (got '{}')",
            l.memory
        )));
    }
    let swap = l
        .memory_swap
        .as_deref()
        .map(|raw| {
            memory_bytes(raw).map_err(|why| {
                invalid(format!(
                    "limits.memory_swap '{raw}' is not a memory size: {why}"
                ))
            })
        })
        .transpose()?;
    if l.pids_limit < 1 {
        return Err(invalid("limits.pids_limit must be at least 1"));
    }
    let gpus =
        match l.gpu_count {
            None => None,
            Some(n) => Some(u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                invalid("limits.gpu_count must be null or an integer of at least 1")
            })?),
        };

    if let Some(max) = policy.max_cpus
        && l.cpus > max
    {
        return Err(invalid(format!(
            "limits.cpus {} exceeds this challenge's maximum of {max}",
            l.cpus
        )));
    }
    if let Some(max_raw) = &policy.max_memory {
        let max = memory_bytes(max_raw).map_err(|why| {
            BrokerError::Policy(format!(
                "broker policy max_memory '{max_raw}' is not a memory size: {why}"
            ))
        })?;
        if memory > max {
            return Err(invalid(format!(
                "limits.memory '{}' exceeds this challenge's maximum of '{max_raw}'",
                l.memory
            )));
        }
    }
    if let Some(max) = policy.max_pids
        && l.pids_limit > i64::from(max)
    {
        return Err(invalid(format!(
            "limits.pids_limit {} exceeds this challenge's maximum of {max}",
            l.pids_limit
        )));
    }
    if let Some(max) = policy.max_timeout_seconds
        && req.timeout_seconds.unsigned_abs() > max
    {
        return Err(invalid(format!(
            "timeout_seconds {} exceeds this challenge's maximum of {max}",
            req.timeout_seconds
        )));
    }
    if let (Some(max), Some(n)) = (policy.max_gpus, gpus)
        && n > max
    {
        return Err(invalid(format!(
            "limits.gpu_count {n} exceeds this challenge's maximum of {max}"
        )));
    }
    Ok((memory, swap, gpus))
}

/// An absolute path with no `..` component, NUL or control character.
fn absolute_path(p: &str) -> bool {
    p.starts_with('/') && !p.chars().any(char::is_control) && !p.split('/').any(|c| c == "..")
}

/// `uid`, `name`, `uid:gid` or `name:group`, each of `[A-Za-z0-9._-]`.
fn valid_user(user: &str) -> bool {
    let mut parts = user.split(':');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.chars().all(id_char));
    let first = ok(parts.next());
    match (parts.next(), parts.next()) {
        (None, _) => first,
        (Some(g), None) => first && ok(Some(g)),
        _ => false,
    }
}

/// `path[:options]`: an absolute path other than `/`, then comma-separated
/// options of `[A-Za-z0-9=._-]` (e.g. `rw,noexec,nosuid,size=512m`).
fn valid_tmpfs(entry: &str) -> bool {
    let (path, options) = entry.split_once(':').unwrap_or((entry, ""));
    let path_ok = absolute_path(path) && !path.trim_end_matches('/').is_empty();
    let options_ok = entry.find(':').is_none()
        || options.split(',').all(|o| {
            !o.is_empty()
                && o.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | '.' | '_' | '-'))
        });
    path_ok && options_ok
}

/// Ulimit names Docker knows.
const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// `name=soft[:hard]` with a known name and non-negative integers,
/// `soft <= hard` (no `-1`/unlimited).
fn valid_ulimit(entry: &str) -> bool {
    let Some((name, values)) = entry.split_once('=') else {
        return false;
    };
    let num = |s: &str| {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (num(s), num(h)),
        None => (num(values), num(values)),
    };
    ULIMIT_NAMES.contains(&name) && matches!((soft, hard), (Some(s), Some(h)) if s <= h)
}

fn check_env_and_labels(req: &BrokerRunRequest) -> Result<(), BrokerError> {
    for (name, value) in &req.env {
        if !crate::model::is_env_name(name) {
            return Err(invalid(format!(
                "env name '{name}' must be a letter or underscore followed by letters, digits or underscores"
            )));
        }
        check_env_name_allowed(name)?;
        if value.contains('\0') {
            return Err(invalid(format!("env '{name}' value contains a NUL byte")));
        }
    }
    for (name, value) in &req.labels {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(invalid(format!(
                "label name '{}' must be non-empty without control characters",
                name.escape_debug()
            )));
        }
        let reserved = name
            .get(..RESERVED_LABEL_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_LABEL_PREFIX));
        if reserved {
            return Err(invalid(format!(
                "label '{name}' uses the reserved base. prefix"
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!("label '{name}' value contains a NUL byte")));
        }
    }
    Ok(())
}

/// Env name prefixes a job may not set (compared ignoring ASCII case):
/// container runtimes and the scheduler read them to decide which devices
/// and resources a container gets.
/// - `NVIDIA_`: nvidia-container-runtime's `NVIDIA_VISIBLE_DEVICES`,
///   `NVIDIA_DRIVER_CAPABILITIES`, `NVIDIA_REQUIRE_*`,
///   `NVIDIA_MIG_*_DEVICES`… select the GPUs and driver features mounted
///   into the container.
/// - `DOCKER_RESOURCE_`: Swarm exports the generic resources it assigned a
///   task as `DOCKER_RESOURCE_<KIND>`, and the NVIDIA runtime's
///   `swarm-resource` setting reads the GPU ids from there.
pub const RESERVED_ENV_PREFIXES: &[&str] = &["NVIDIA_", "DOCKER_RESOURCE_"];

/// Env name suffixes a job may not set (ignoring ASCII case): every
/// runtime's or library's device selector — `AMD_VISIBLE_DEVICES` (AMD
/// container toolkit), `HABANA_VISIBLE_DEVICES` (Habana runtime),
/// `CUDA_`/`HIP_`/`ROCR_VISIBLE_DEVICES`. The GPUs a job may use are the
/// ones its lease gave it; it may not choose others.
pub const RESERVED_ENV_SUFFIXES: &[&str] = &["_VISIBLE_DEVICES"];

/// Whole env names a job may not set (ignoring ASCII case): ROCm's OpenCL
/// device selector.
pub const RESERVED_ENV_NAMES: &[&str] = &["GPU_DEVICE_ORDINAL"];

/// Whether a job env name is reserved for the platform because it could
/// widen the job's GPU access or scheduling ([`RESERVED_ENV_PREFIXES`],
/// [`RESERVED_ENV_SUFFIXES`], [`RESERVED_ENV_NAMES`]).
///
/// Linux env names are case-sensitive and the runtimes read the upper-case
/// spellings only, but the comparison ignores ASCII case anyway: a
/// lower-case twin has no legitimate use, and refusing it costs nothing if
/// some tool ever reads names case-insensitively.
pub fn env_name_reserved(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    RESERVED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
        || RESERVED_ENV_SUFFIXES.iter().any(|s| upper.ends_with(s))
        || RESERVED_ENV_NAMES.contains(&upper.as_str())
}

/// Refuses (400, naming the variable) an env name [`env_name_reserved`]
/// reserves.
pub fn check_env_name_allowed(name: &str) -> Result<(), BrokerError> {
    if env_name_reserved(name) {
        return Err(invalid(format!(
            "env '{name}' is reserved: it selects GPUs or scheduled resources, which the broker assigns"
        )));
    }
    Ok(())
}

/// Bounds on all the mounts of one job together. Each archive also has its
/// own [`ArchiveLimits`](super::archive::ArchiveLimits); without these, a
/// job could bring as many archives as its body holds, each inflating to
/// the per-archive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountBudget {
    /// Most mounts one job may have (`BASE_BROKER_MAX_MOUNTS`).
    pub max_mounts: usize,
    /// Most base64 text across all of a job's archives, checked before
    /// anything is decoded.
    pub max_encoded_bytes: usize,
    /// Most files across all of a job's mounts: on Swarm each becomes one
    /// config object in the managers' Raft store.
    pub max_files: usize,
    /// Most bytes of files across all of a job's mounts
    /// (`BASE_BROKER_MAX_JOB_MOUNT_BYTES`): on Swarm, the config bytes one
    /// job may create, replicated to every manager. Archives are inflated
    /// no further than this allows.
    pub max_file_bytes: usize,
}

/// Default [`MountBudget::max_mounts`].
pub const DEFAULT_MAX_MOUNTS: usize = 16;
/// Default [`MountBudget::max_encoded_bytes`]: 24 MiB, what the default
/// 16 MiB of files can take as base64 of a gzip tar even when they do not
/// compress (× 4/3 for base64, plus tar headers).
pub const DEFAULT_MAX_MOUNT_ENCODED_BYTES: usize = 24 << 20;

impl Default for MountBudget {
    fn default() -> Self {
        Self {
            max_mounts: DEFAULT_MAX_MOUNTS,
            max_encoded_bytes: DEFAULT_MAX_MOUNT_ENCODED_BYTES,
            // The Swarm orchestrator's own limits, so a job that runs under
            // the process orchestrator in development also runs on Swarm.
            max_files: crate::orchestrator::swarm::MAX_MOUNT_FILES,
            max_file_bytes: crate::orchestrator::swarm::MAX_MOUNT_BYTES,
        }
    }
}

/// Checks the number of mounts and the total length of their base64 text
/// against `budget` — from the request alone, before any archive is
/// decoded (400 naming the limit).
pub fn check_mount_budget(
    mounts: &[MountRequest],
    budget: &MountBudget,
) -> Result<(), BrokerError> {
    if mounts.len() > budget.max_mounts {
        return Err(invalid(format!(
            "a job may have at most {} mounts ({} given)",
            budget.max_mounts,
            mounts.len()
        )));
    }
    let encoded = mounts
        .iter()
        .map(|m| m.archive_b64.trim().len())
        .fold(0usize, usize::saturating_add);
    if encoded > budget.max_encoded_bytes {
        return Err(invalid(format!(
            "the job's mount archives are {encoded} bytes of base64 in all; at most {} are accepted",
            budget.max_encoded_bytes
        )));
    }
    Ok(())
}

/// Checks what a job's decoded mounts hold against `budget` (400 naming
/// the limit): the files and bytes the orchestrator will have to create.
pub fn check_mount_contents(mounts: &[JobMount], budget: &MountBudget) -> Result<(), BrokerError> {
    let files: usize = mounts.iter().map(|m| m.files.len()).sum();
    if files > budget.max_files {
        return Err(invalid(format!(
            "the job's mounts hold {files} files; at most {} are accepted per job \
             (on Swarm each is a config object)",
            budget.max_files
        )));
    }
    let bytes = mounts
        .iter()
        .flat_map(|m| m.files.values())
        .map(Vec::len)
        .fold(0usize, usize::saturating_add);
    if bytes > budget.max_file_bytes {
        return Err(invalid(format!(
            "the job's mounted files are {bytes} bytes in all; at most {} are accepted per job \
             (on Swarm they are configs, replicated to every manager)",
            budget.max_file_bytes
        )));
    }
    Ok(())
}

fn check_mounts(mounts: &[MountRequest]) -> Result<(), BrokerError> {
    let mut targets = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        if !absolute_path(&m.target) || m.target.trim_end_matches('/').is_empty() {
            return Err(invalid(format!(
                "mounts[{i}].target must be an absolute path other than / without .. components"
            )));
        }
        if !targets.insert(m.target.trim_end_matches('/')) {
            return Err(invalid(format!(
                "mounts[{i}].target '{}' is used by another mount",
                m.target
            )));
        }
        let name_ok = !m.source_name.is_empty()
            && !m.source_name.starts_with('/')
            && !m.source_name.chars().any(char::is_control)
            && !m.source_name.split('/').any(|c| c == "..");
        if !name_ok {
            return Err(invalid(format!(
                "mounts[{i}].source_name must be a relative path without .. components"
            )));
        }
        // A writable mount may start empty (an output directory).
        if m.archive_b64.is_empty() && m.read_only {
            return Err(invalid(format!(
                "mounts[{i}].archive_b64 must not be empty (only a writable mount may start empty)"
            )));
        }
        if !m.read_only && m.source_type == SourceType::File {
            return Err(invalid(format!(
                "mounts[{i}]: a writable mount must be a directory (source_type directory): \
                 its contents come back as an archive of that directory"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const IMAGE: &str = "ghcr.io/platformnetwork/x:1";

    fn minimal() -> BrokerRunRequest {
        serde_json::from_value(json!({"job_id":"j","image":IMAGE,"command":["true"]})).unwrap()
    }

    fn ctx() -> ValidationContext {
        ValidationContext {
            global_allowed_images: vec!["ghcr.io/platformnetwork/".to_string()],
            policy: BrokerPolicy::default(),
            control_plane_networks: vec!["base_challenges".to_string()],
        }
    }

    fn slug() -> Slug {
        Slug::parse("term-bench").unwrap()
    }

    /// Validates `req` with `ctx()` and returns (status, message).
    fn refuse(req: &BrokerRunRequest) -> (u16, String) {
        refuse_with(req, &ctx())
    }

    fn refuse_with(req: &BrokerRunRequest, ctx: &ValidationContext) -> (u16, String) {
        let e = validate(req, ctx).unwrap_err();
        (e.status(), e.to_string())
    }

    fn with(f: impl FnOnce(&mut BrokerRunRequest)) -> BrokerRunRequest {
        let mut r = minimal();
        f(&mut r);
        r
    }

    #[test]
    fn omitted_fields_take_every_contract_default() {
        let r = minimal();
        assert_eq!(r.job_id, "j");
        assert_eq!(r.task_id, None);
        assert_eq!(r.image, IMAGE);
        assert_eq!(r.image_pull_policy, ImagePullPolicy::IfNotPresent);
        assert_eq!(r.command, vec!["true"]);
        assert_eq!(r.workdir, None);
        assert!(r.env.is_empty());
        assert!(r.labels.is_empty());
        assert!(r.mounts.is_empty());
        assert_eq!(r.timeout_seconds, 900);
        let l = &r.limits;
        assert_eq!(l.cpus, 2.0);
        assert_eq!(l.memory, "4g");
        assert_eq!(l.memory_swap.as_deref(), Some("4g"));
        assert_eq!(l.pids_limit, 512);
        assert_eq!(l.gpu_count, None);
        assert_eq!(l.network, "none");
        assert!(l.read_only);
        assert_eq!(l.user, None);
        assert_eq!(l.tmpfs, vec!["/tmp:rw,noexec,nosuid,size=512m"]);
        assert_eq!(l.ulimits, vec!["nofile=1024:1024"]);
        assert_eq!(l.cap_drop, vec!["ALL"]);
        assert_eq!(l.security_opt, vec!["no-new-privileges"]);
        assert!(l.init);
        assert!(!l.privileged);
        // A partial `limits` object fills in the rest the same way.
        let p: BrokerRunRequest = serde_json::from_value(
            json!({"job_id":"j","image":IMAGE,"command":["true"],"limits":{"cpus":1}}),
        )
        .unwrap();
        assert_eq!(
            p.limits,
            Limits {
                cpus: 1.0,
                ..Limits::default()
            }
        );
    }

    #[test]
    fn mount_defaults_nulls_and_unknown_fields() {
        let r: BrokerRunRequest = serde_json::from_value(json!({
            "job_id": "j", "image": IMAGE, "command": ["true"],
            "image_pull_policy": null, "task_id": null,
            "limits": {"memory_swap": null, "gpu_count": null, "cap_add": ["SYS_ADMIN"]},
            "mounts": [{"target": "/work", "archive_b64": "AAAA"}],
            "network_mode": "host"
        }))
        .unwrap();
        assert_eq!(r.image_pull_policy, ImagePullPolicy::IfNotPresent);
        assert_eq!(r.limits.memory_swap, None);
        let m = &r.mounts[0];
        assert!(m.read_only);
        assert_eq!(m.source_type, SourceType::Directory);
        assert_eq!(m.source_name, ".");
        let job = validate(&r, &ctx()).unwrap();
        assert_eq!(job.memory_swap_bytes(), None);

        for (policy, want) in [
            ("Always", ImagePullPolicy::Always),
            ("Never", ImagePullPolicy::Never),
            ("IfNotPresent", ImagePullPolicy::IfNotPresent),
        ] {
            let r: BrokerRunRequest = serde_json::from_value(
                json!({"job_id":"j","image":IMAGE,"command":["true"],"image_pull_policy":policy}),
            )
            .unwrap();
            assert_eq!(r.image_pull_policy, want);
        }
        let file: MountRequest = serde_json::from_value(
            json!({"target":"/a","source_type":"file","source_name":"x.py","read_only":false,"archive_b64":"A"}),
        )
        .unwrap();
        assert_eq!(file.source_type, SourceType::File);
        assert!(!file.read_only);
    }

    #[test]
    fn shape_errors_fail_deserialization() {
        for bad in [
            json!({"image":IMAGE,"command":["true"]}),
            json!({"job_id":"j","command":["true"]}),
            json!({"job_id":"j","image":IMAGE}),
            json!({"job_id":"j","image":IMAGE,"command":["true"],"image_pull_policy":"Sometimes"}),
            json!({"job_id":"j","image":IMAGE,"command":["true"],"limits":{"gpu_count":1.5}}),
            json!({"job_id":"j","image":IMAGE,"command":["true"],"mounts":[{"target":"/a"}]}),
            json!({"job_id":"j","image":IMAGE,"command":["true"],"mounts":[{"target":"/a","archive_b64":"A","source_type":"socket"}]}),
        ] {
            assert!(
                serde_json::from_value::<BrokerRunRequest>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_validate_into_a_hardened_job_spec() {
        let job = validate(&minimal(), &ctx()).unwrap();
        assert_eq!(job.job_id(), "j");
        assert_eq!(job.image().to_string(), IMAGE);
        assert_eq!(job.memory_swap_bytes(), Some(4 << 30));
        assert!(!job.privileged());
        assert_eq!(job.timeout_seconds(), 900);
        let now = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mount = JobMount {
            target: "/work".into(),
            read_only: true,
            files: BTreeMap::new(),
        };
        let spec = job.into_job_spec("abc".into(), slug(), vec![mount.clone()], now);
        assert_eq!(spec.id, "abc");
        assert_eq!(spec.slug, slug());
        assert_eq!(spec.job_id, "j");
        assert_eq!(spec.task_id, None);
        assert_eq!(spec.command, vec!["true"]);
        assert_eq!(spec.mounts, vec![mount]);
        assert_eq!(spec.timeout_seconds, 900);
        assert_eq!(spec.deadline_at, now + TimeDelta::seconds(900));
        assert_eq!(
            spec.limits,
            JobLimits {
                cpus: 2.0,
                memory_bytes: 4 << 30,
                pids: 512,
                gpus: None,
                network: JobNetwork::None,
                read_only: true,
                user: None,
                tmpfs: vec!["/tmp:rw,noexec,nosuid,size=512m".into()],
                ulimits: vec!["nofile=1024:1024".into()],
                cap_drop: vec!["ALL".into()],
                security_opt: vec!["no-new-privileges".into()],
                init: true,
            }
        );
    }

    #[test]
    fn privileged_needs_the_escape_hatch() {
        let r = with(|r| r.limits.privileged = true);
        assert_eq!(
            refuse(&r),
            (
                403,
                "privileged broker jobs require the allowlisted escape hatch".into()
            )
        );
        let mut c = ctx();
        c.policy.allow_privileged = true;
        assert!(validate(&r, &c).unwrap().privileged());
    }

    #[test]
    fn hardening_rules() {
        let cases: Vec<(BrokerRunRequest, &str)> = vec![
            (
                with(|r| r.limits.read_only = false),
                "broker Docker jobs require a read-only root filesystem",
            ),
            (
                with(|r| r.limits.init = false),
                "broker Docker jobs require Docker init for process cleanup",
            ),
            (
                with(|r| r.limits.cap_drop = vec!["NET_RAW".into()]),
                "broker Docker jobs must drop all Linux capabilities",
            ),
            (
                with(|r| r.limits.cap_drop = vec![]),
                "broker Docker jobs must drop all Linux capabilities",
            ),
            (
                with(|r| r.limits.security_opt = vec![]),
                "broker Docker jobs require no-new-privileges",
            ),
            (
                with(|r| {
                    r.limits.security_opt =
                        vec!["no-new-privileges".into(), "seccomp=unconfined".into()]
                }),
                "limits.security_opt entry 'seccomp=unconfined' is not allowed for broker jobs (only no-new-privileges)",
            ),
            (
                with(|r| r.limits.security_opt = vec!["no-new-privileges:false".into()]),
                "limits.security_opt entry 'no-new-privileges:false' is not allowed for broker jobs (only no-new-privileges)",
            ),
        ];
        for (req, msg) in cases {
            assert_eq!(refuse(&req), (400, msg.to_string()));
        }
        let ok = with(|r| {
            r.limits.cap_drop = vec!["all".into()];
            r.limits.security_opt = vec!["no-new-privileges:true".into()];
        });
        assert!(validate(&ok, &ctx()).is_ok());
    }

    #[test]
    fn images_must_parse_and_be_allowlisted() {
        let bad = with(|r| r.image = "ghcr.io/platformnetwork/X Y".into());
        let (status, msg) = refuse(&bad);
        assert_eq!(status, 400);
        assert!(
            msg.starts_with("image 'ghcr.io/platformnetwork/X Y' is not a valid image reference: "),
            "{msg}"
        );
        assert_eq!(refuse(&with(|r| r.image = String::new())).0, 400);

        let evil = with(|r| r.image = "ghcr.io/platformnetworkevil/x".into());
        assert_eq!(
            refuse(&evil),
            (
                403,
                "image 'ghcr.io/platformnetworkevil/x' is not in the broker allowlist".into()
            )
        );
        // The challenge's own prefixes add to the global ones.
        let other = with(|r| r.image = "docker.io/library/python:3.12".into());
        assert_eq!(refuse(&other).0, 403);
        let mut c = ctx();
        c.policy.allowed_images = vec!["docker.io/library/python".into()];
        assert!(validate(&other, &c).is_ok());
        // No allowlist at all admits nothing.
        c.global_allowed_images.clear();
        c.policy.allowed_images.clear();
        assert_eq!(refuse_with(&minimal(), &c).0, 403);
    }

    #[test]
    fn allowlist_prefixes_stop_at_name_boundaries() {
        let table = [
            (
                "ghcr.io/platformnetwork/x:1",
                "ghcr.io/platformnetwork/",
                true,
            ),
            (
                "ghcr.io/platformnetworkevil/x",
                "ghcr.io/platformnetwork/",
                false,
            ),
            (
                "ghcr.io/platformnetwork/x:1",
                "ghcr.io/platformnetwork",
                true,
            ),
            (
                "ghcr.io/platformnetworkevil/x",
                "ghcr.io/platformnetwork",
                false,
            ),
            ("ghcr.io/platformnetwork", "ghcr.io/platformnetwork", true),
            ("python:3.12", "python", true),
            ("python:3.12", "python:", true),
            ("pythonevil:1", "python", false),
            ("python@sha256:ab", "python", true),
            ("ghcr.io/a/x", "", false),
            ("ghcr.io/a/x", "ghcr.io/a/x:1", false),
        ];
        for (image, prefix, want) in table {
            assert_eq!(image_allowed(image, prefix), want, "{image} vs {prefix}");
        }
    }

    #[test]
    fn network_mapping() {
        let cp = vec!["base_challenges".to_string()];
        assert_eq!(map_network("none", &cp).unwrap(), JobNetwork::None);
        assert_eq!(map_network("default", &cp).unwrap(), JobNetwork::Default);
        assert_eq!(
            map_network("base_jobs_egress", &cp).unwrap(),
            JobNetwork::Named("base_jobs_egress".into())
        );
        let e = map_network("base_challenges", &cp).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.to_string(),
            "limits.network 'base_challenges' is a control-plane network and is never available to broker jobs"
        );
        for bad in [
            "host",
            "bridge",
            "None",
            "base_",
            "base_a b",
            "other_net",
            "",
        ] {
            let e = map_network(bad, &cp).unwrap_err();
            assert_eq!(e.status(), 400);
            assert_eq!(
                e.to_string(),
                format!(
                    "limits.network '{bad}' is not allowed: use none, default or a base_* job network"
                )
            );
        }
        let r = with(|r| r.limits.network = "base_jobs_egress".into());
        assert_eq!(
            validate(&r, &ctx()).unwrap().limits().network,
            JobNetwork::Named("base_jobs_egress".into())
        );
        assert_eq!(
            refuse(&with(|r| r.limits.network = "base_challenges".into())).0,
            400
        );
    }

    #[test]
    fn memory_parsing_table() {
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("1048576", 1 << 20),
            ("1024b", 1024),
            ("1024k", 1 << 20),
            ("1024K", 1 << 20),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("4g", 4 << 30),
            ("2gb", 2 << 30),
            ("2GB", 2 << 30),
            ("2GiB", 2 << 30),
            ("1t", 1 << 40),
            ("1.5g", 3 << 29),
            (" 64m ", 64 << 20),
            ("64 m", 64 << 20),
        ];
        for (raw, want) in table {
            assert_eq!(parse_memory(raw).unwrap(), *want, "{raw}");
        }
        for bad in [
            "",
            "g",
            "-1",
            "4x",
            "4gbb",
            "1.2.3g",
            "1.g",
            ".5g",
            "4 g b",
            "99999999999p",
            "1e9",
            "0x10",
            "4g4",
        ] {
            let e = parse_memory(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert!(
                e.to_string()
                    .starts_with(&format!("'{bad}' is not a memory size: "))
            );
        }
    }

    #[test]
    fn size_rules() {
        let cases: Vec<(BrokerRunRequest, String)> = vec![
            (
                with(|r| r.limits.memory = "4x".into()),
                "limits.memory '4x' is not a memory size: expected bytes or a number with k, m, g or t (e.g. 512m)".into(),
            ),
            (
                with(|r| r.limits.memory = "1m".into()),
                "limits.memory must be at least 6m (got '1m')".into(),
            ),
            (
                with(|r| r.limits.memory_swap = Some("lots".into())),
                "limits.memory_swap 'lots' is not a memory size: expected bytes or a number with k, m, g or t (e.g. 512m)".into(),
            ),
            (
                with(|r| r.limits.cpus = 0.0),
                "limits.cpus must be a finite number greater than 0".into(),
            ),
            (
                with(|r| r.limits.cpus = -1.0),
                "limits.cpus must be a finite number greater than 0".into(),
            ),
            (
                with(|r| r.limits.pids_limit = 0),
                "limits.pids_limit must be at least 1".into(),
            ),
            (
                with(|r| r.limits.gpu_count = Some(0)),
                "limits.gpu_count must be null or an integer of at least 1".into(),
            ),
            (
                with(|r| r.timeout_seconds = 0),
                "timeout_seconds must be between 1 and 86400".into(),
            ),
            (
                with(|r| r.timeout_seconds = 86_401),
                "timeout_seconds must be between 1 and 86400".into(),
            ),
        ];
        for (req, msg) in cases {
            assert_eq!(refuse(&req), (400, msg));
        }
        let gpu = validate(&with(|r| r.limits.gpu_count = Some(2)), &ctx()).unwrap();
        assert_eq!(gpu.limits().gpus, Some(2));
        assert!(validate(&with(|r| r.timeout_seconds = 86_400), &ctx()).is_ok());
    }

    #[test]
    fn challenge_maxima_are_400() {
        let mut c = ctx();
        c.policy = BrokerPolicy {
            max_cpus: Some(1.0),
            max_memory: Some("1g".into()),
            max_pids: Some(100),
            max_timeout_seconds: Some(60),
            max_gpus: Some(1),
            ..BrokerPolicy::default()
        };
        let within = with(|r| {
            r.limits.cpus = 1.0;
            r.limits.memory = "1024m".into();
            r.limits.pids_limit = 100;
            r.timeout_seconds = 60;
            r.limits.gpu_count = Some(1);
        });
        assert!(validate(&within, &c).is_ok());
        let cases: Vec<(BrokerRunRequest, &str)> = vec![
            (
                with(|r| {
                    r.limits.cpus = 2.5;
                    r.timeout_seconds = 60;
                }),
                "limits.cpus 2.5 exceeds this challenge's maximum of 1",
            ),
            (
                with(|r| {
                    r.limits.cpus = 1.0;
                    r.limits.memory = "2g".into();
                }),
                "limits.memory '2g' exceeds this challenge's maximum of '1g'",
            ),
            (
                with(|r| {
                    r.limits.cpus = 1.0;
                    r.limits.memory = "1g".into();
                }),
                "limits.pids_limit 512 exceeds this challenge's maximum of 100",
            ),
            (
                with(|r| {
                    r.limits.cpus = 1.0;
                    r.limits.memory = "1g".into();
                    r.limits.pids_limit = 1;
                }),
                "timeout_seconds 900 exceeds this challenge's maximum of 60",
            ),
            (
                with(|r| {
                    r.limits.cpus = 1.0;
                    r.limits.memory = "1g".into();
                    r.limits.pids_limit = 1;
                    r.timeout_seconds = 1;
                    r.limits.gpu_count = Some(2);
                }),
                "limits.gpu_count 2 exceeds this challenge's maximum of 1",
            ),
        ];
        for (req, msg) in cases {
            assert_eq!(refuse_with(&req, &c), (400, msg.to_string()));
        }
        c.policy.max_memory = Some("big".into());
        let (status, msg) = refuse_with(&within, &c);
        assert_eq!(status, 500);
        assert!(
            msg.starts_with("broker policy max_memory 'big' is not a memory size"),
            "{msg}"
        );
    }

    #[test]
    fn concurrency_is_429() {
        let policy = BrokerPolicy {
            max_concurrent_jobs: Some(3),
            ..BrokerPolicy::default()
        };
        assert!(check_concurrency(&slug(), 2, &policy).is_ok());
        let e = check_concurrency(&slug(), 3, &policy).unwrap_err();
        assert_eq!(e.status(), 429);
        assert_eq!(
            e.to_string(),
            "challenge 'term-bench' has reached its concurrent job limit (3)"
        );
        assert!(check_concurrency(&slug(), 10_000, &BrokerPolicy::default()).is_ok());
        let zero = BrokerPolicy {
            max_concurrent_jobs: Some(0),
            ..BrokerPolicy::default()
        };
        assert_eq!(
            check_concurrency(&slug(), 0, &zero).unwrap_err().status(),
            429
        );
    }

    #[test]
    fn tmpfs_ulimit_and_user_syntax() {
        for ok in [
            "/tmp",
            "/tmp:rw,noexec,nosuid,size=512m",
            "/run/x:mode=1777,uid=1000",
        ] {
            assert!(valid_tmpfs(ok), "{ok}");
        }
        for bad in [
            "tmp",
            "/",
            "/:rw",
            "/tmp:",
            "/tmp:rw,,x",
            "/tmp:rw x",
            "/a/../b:rw",
            "",
        ] {
            assert!(!valid_tmpfs(bad), "{bad}");
        }
        for ok in [
            "nofile=1024:1024",
            "nproc=64",
            "core=0:0",
            "stack=8192:16384",
        ] {
            assert!(valid_ulimit(ok), "{ok}");
        }
        for bad in [
            "nofile",
            "nofile=",
            "nofile=2048:1024",
            "bogus=1:1",
            "nofile=-1",
            "nofile=1:2:3",
            "nofile=a",
        ] {
            assert!(!valid_ulimit(bad), "{bad}");
        }
        for ok in ["1000", "1000:1000", "nobody", "app:app"] {
            assert!(valid_user(ok), "{ok}");
        }
        for bad in ["", ":", "1000:", "a:b:c", "a b"] {
            assert!(!valid_user(bad), "{bad}");
        }
        assert_eq!(
            refuse(&with(|r| r.limits.tmpfs = vec!["tmp".into()])),
            (400, "limits.tmpfs entry 'tmp' must be an absolute path other than / optionally followed by :options".into())
        );
        assert_eq!(
            refuse(&with(|r| r.limits.ulimits = vec!["nofile=2:1".into()])),
            (400, "limits.ulimits entry 'nofile=2:1' must be name=soft[:hard] with a known name and soft <= hard".into())
        );
        assert_eq!(
            refuse(&with(|r| r.limits.user = Some("a b".into()))),
            (
                400,
                "limits.user 'a b' must be uid[:gid] or name[:group]".into()
            )
        );
    }

    #[test]
    fn env_labels_ids_command_and_workdir() {
        let cases: Vec<(BrokerRunRequest, &str)> = vec![
            (
                with(|r| {
                    r.env.insert("1BAD".into(), "x".into());
                }),
                "env name '1BAD' must be a letter or underscore followed by letters, digits or underscores",
            ),
            (
                with(|r| {
                    r.env.insert("A-B".into(), "x".into());
                }),
                "env name 'A-B' must be a letter or underscore followed by letters, digits or underscores",
            ),
            (
                with(|r| {
                    r.env.insert("A".into(), "x\0".into());
                }),
                "env 'A' value contains a NUL byte",
            ),
            (
                with(|r| {
                    r.labels.insert("base.challenge".into(), "other".into());
                }),
                "label 'base.challenge' uses the reserved base. prefix",
            ),
            (
                with(|r| {
                    r.labels.insert("BASE.job".into(), "x".into());
                }),
                "label 'BASE.job' uses the reserved base. prefix",
            ),
            (
                with(|r| {
                    r.labels.insert(String::new(), "x".into());
                }),
                "label name '' must be non-empty without control characters",
            ),
            (
                with(|r| r.job_id = String::new()),
                "job_id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ),
            (
                with(|r| r.job_id = "a/b".into()),
                "job_id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ),
            (
                with(|r| r.job_id = "a".repeat(129)),
                "job_id must be 1 to 128 characters of A-Z a-z 0-9 . _ -",
            ),
            (
                with(|r| r.task_id = Some("a".repeat(257))),
                "task_id must be at most 256 characters of A-Z a-z 0-9 . _ -",
            ),
            (
                with(|r| r.task_id = Some("t 1".into())),
                "task_id must be at most 256 characters of A-Z a-z 0-9 . _ -",
            ),
            (
                with(|r| r.command.clear()),
                "command must have at least one item",
            ),
            (
                with(|r| r.command.push("a\0b".into())),
                "command items may not contain NUL bytes",
            ),
            (
                with(|r| r.workdir = Some("work".into())),
                "workdir must be an absolute path without .. components",
            ),
        ];
        for (req, msg) in cases {
            assert_eq!(refuse(&req), (400, msg.to_string()));
        }
        let ok = with(|r| {
            r.job_id = "A-z_0.9".repeat(18);
            r.task_id = Some("t".repeat(256));
            r.env.insert("_PATH2".into(), "".into());
            r.labels.insert("my.base.label".into(), "x".into());
            r.workdir = Some("/work".into());
        });
        assert_eq!(ok.job_id.len(), 126);
        assert!(validate(&ok, &ctx()).is_ok());
        assert!(check_job_id("a".repeat(128).as_str()).is_ok());
    }

    #[test]
    fn mount_rules() {
        let mount = |target: &str, name: &str, b64: &str| MountRequest {
            target: target.into(),
            read_only: true,
            source_type: SourceType::Directory,
            source_name: name.into(),
            archive_b64: b64.into(),
        };
        let cases = [
            (
                vec![mount("work", ".", "A")],
                "mounts[0].target must be an absolute path other than / without .. components",
            ),
            (
                vec![mount("/", ".", "A")],
                "mounts[0].target must be an absolute path other than / without .. components",
            ),
            (
                vec![mount("/a/../etc", ".", "A")],
                "mounts[0].target must be an absolute path other than / without .. components",
            ),
            (
                vec![mount("/a", ".", "A"), mount("/a/", ".", "A")],
                "mounts[1].target '/a/' is used by another mount",
            ),
            (
                vec![mount("/a", "/etc", "A")],
                "mounts[0].source_name must be a relative path without .. components",
            ),
            (
                vec![mount("/a", "x/../../y", "A")],
                "mounts[0].source_name must be a relative path without .. components",
            ),
            (
                vec![mount("/a", ".", "")],
                "mounts[0].archive_b64 must not be empty (only a writable mount may start empty)",
            ),
        ];
        for (mounts, msg) in cases {
            assert_eq!(refuse(&with(|r| r.mounts = mounts)), (400, msg.to_string()));
        }
        let ok = with(|r| r.mounts = vec![mount("/a", "src/x.py", "A"), mount("/b", ".", "A")]);
        assert_eq!(validate(&ok, &ctx()).unwrap().mounts().len(), 2);
    }

    #[test]
    fn response_shapes_are_the_contracts() {
        let run = BrokerRunResponse {
            container_name: container_name("abc"),
            stdout: "out".into(),
            stderr: "err".into(),
            returncode: TIMEOUT_RETURNCODE,
            timed_out: true,
            outputs: Vec::new(),
        };
        // Without writable mounts: exactly the Python platform's shape.
        assert_eq!(
            serde_json::to_value(&run).unwrap(),
            json!({"container_name":"base-job-abc","stdout":"out","stderr":"err","returncode":124,"timed_out":true})
        );
        // With them, one extra key.
        let with_outputs = BrokerRunResponse {
            outputs: vec![crate::model::JobOutput {
                target: "/out".into(),
                archive_b64: None,
                error: Some("why".into()),
            }],
            ..run.clone()
        };
        assert_eq!(
            serde_json::to_value(&with_outputs).unwrap()["outputs"],
            json!([{"target":"/out","error":"why"}])
        );
        let min: BrokerRunResponse =
            serde_json::from_value(json!({"container_name":"c","returncode":0})).unwrap();
        assert_eq!(
            (min.stdout.as_str(), min.stderr.as_str(), min.timed_out),
            ("", "", false)
        );

        assert_eq!(
            serde_json::to_value(CleanupResponse::ok()).unwrap(),
            json!({"status":"ok"})
        );
        let cleanup: CleanupRequest = serde_json::from_value(json!({"job_id":"j"})).unwrap();
        assert_eq!(cleanup.job_id, "j");
        let list: ListRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(list.job_id, None);

        let listed = ListResponse {
            containers: vec![ContainerInfo {
                container_id: "svc1".into(),
                container_name: "base-job-abc".into(),
                image: IMAGE.into(),
                status: "running".into(),
                job_id: Some("j".into()),
                task_id: None,
                created: Some("2025-01-01T00:00:00Z".into()),
                labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
            }],
        };
        assert_eq!(
            serde_json::to_value(&listed).unwrap(),
            json!({"containers":[{
                "container_id":"svc1","container_name":"base-job-abc","image":IMAGE,
                "status":"running","job_id":"j","task_id":null,
                "created":"2025-01-01T00:00:00Z","labels":{"k":"v"}
            }]})
        );
    }

    #[test]
    fn request_round_trips_through_json() {
        let r = with(|r| {
            r.task_id = Some("t".into());
            r.mounts = vec![MountRequest {
                target: "/a".into(),
                read_only: false,
                source_type: SourceType::File,
                source_name: "x".into(),
                archive_b64: "AAAA".into(),
            }];
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["image_pull_policy"], "IfNotPresent");
        assert_eq!(v["mounts"][0]["source_type"], "file");
        let back: BrokerRunRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn gpu_and_scheduling_env_names_are_refused_by_name() {
        for name in [
            "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_DRIVER_CAPABILITIES",
            "NVIDIA_REQUIRE_CUDA",
            "NVIDIA_MIG_CONFIG_DEVICES",
            "nvidia_visible_devices",
            "DOCKER_RESOURCE_GPU",
            "DOCKER_RESOURCE_NVIDIA_GPU",
            "CUDA_VISIBLE_DEVICES",
            "HIP_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES",
            "AMD_VISIBLE_DEVICES",
            "HABANA_VISIBLE_DEVICES",
            "GPU_DEVICE_ORDINAL",
        ] {
            let r = with(|r| {
                r.env.insert(name.into(), "all".into());
            });
            let e = validate(&r, &ctx()).unwrap_err();
            assert_eq!(e.status(), 400, "{name}");
            assert_eq!(
                e.to_string(),
                format!(
                    "env '{name}' is reserved: it selects GPUs or scheduled resources, which the broker assigns"
                )
            );
        }
        for name in [
            "NVIDIA",
            "MY_NVIDIA_TOKEN",
            "CUDA_HOME",
            "VISIBLE_DEVICES_X",
            "PATH",
        ] {
            let r = with(|r| {
                r.env.insert(name.into(), "x".into());
            });
            assert!(validate(&r, &ctx()).is_ok(), "{name}");
        }
    }

    fn mount_of(len: usize) -> MountRequest {
        MountRequest {
            target: "/a".into(),
            read_only: true,
            source_type: SourceType::Directory,
            source_name: ".".into(),
            archive_b64: "A".repeat(len),
        }
    }

    #[test]
    fn mount_budget_counts_mounts_and_base64_before_decoding() {
        let budget = MountBudget {
            max_mounts: 2,
            max_encoded_bytes: 10,
            max_files: 3,
            max_file_bytes: 5,
        };
        assert!(check_mount_budget(&[mount_of(5), mount_of(5)], &budget).is_ok());
        let e = check_mount_budget(&[mount_of(1), mount_of(1), mount_of(1)], &budget).unwrap_err();
        assert_eq!(e.to_string(), "a job may have at most 2 mounts (3 given)");
        let e = check_mount_budget(&[mount_of(5), mount_of(6)], &budget).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the job's mount archives are 11 bytes of base64 in all; at most 10 are accepted"
        );
        assert_eq!(e.status(), 400);

        let m = |files: &[(&str, usize)]| JobMount {
            target: "/a".into(),
            read_only: true,
            files: files
                .iter()
                .map(|(k, n)| ((*k).to_string(), vec![0; *n]))
                .collect(),
        };
        assert!(check_mount_contents(&[m(&[("a", 2), ("b", 3)])], &budget).is_ok());
        let e = check_mount_contents(&[m(&[("a", 3)]), m(&[("b", 3)])], &budget).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the job's mounted files are 6 bytes in all; at most 5"),
            "{e}"
        );
        let e = check_mount_contents(
            &[m(&[("a", 0), ("b", 0)]), m(&[("c", 0), ("d", 0)])],
            &budget,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the job's mounts hold 4 files; at most 3"),
            "{e}"
        );
    }

    proptest! {
        /// Any env name with a reserved prefix or suffix, in any ASCII
        /// case, is refused naming it; names without one pass the rule.
        #[test]
        fn reserved_env_names_are_refused_in_any_case(
            middle in "[A-Za-z0-9_]{0,12}",
            kind in 0usize..3,
            flips in prop::collection::vec(any::<bool>(), 40),
        ) {
            let raw = match kind {
                0 => format!("NVIDIA_{middle}"),
                1 => format!("DOCKER_RESOURCE_{middle}"),
                _ => format!("X{middle}_VISIBLE_DEVICES"),
            };
            let name: String = raw
                .chars()
                .zip(flips.iter().chain(std::iter::repeat(&false)))
                .map(|(c, up)| if *up { c.to_ascii_lowercase() } else { c })
                .collect();
            let e = check_env_name_allowed(&name).unwrap_err();
            prop_assert_eq!(e.status(), 400);
            let quoted = format!("'{name}'");
            prop_assert!(e.to_string().contains(&quoted));
        }

        #[test]
        fn other_env_names_pass_the_gpu_rule(name in "[A-Z_][A-Z0-9_]{0,20}") {
            let upper = name.to_ascii_uppercase();
            let reserved = upper.starts_with("NVIDIA_")
                || upper.starts_with("DOCKER_RESOURCE_")
                || upper.ends_with("_VISIBLE_DEVICES")
                || upper == "GPU_DEVICE_ORDINAL";
            prop_assert_eq!(check_env_name_allowed(&name).is_err(), reserved);
        }

        /// The budget check is exactly "count ≤ max and base64 ≤ max".
        #[test]
        fn mount_budget_is_count_and_length(
            lens in prop::collection::vec(0usize..40, 0..8),
            max_mounts in 0usize..8,
            max_encoded in 0usize..200,
        ) {
            let mounts: Vec<MountRequest> = lens.iter().map(|n| mount_of(*n)).collect();
            let budget = MountBudget {
                max_mounts,
                max_encoded_bytes: max_encoded,
                ..MountBudget::default()
            };
            let fits = lens.len() <= max_mounts && lens.iter().sum::<usize>() <= max_encoded;
            prop_assert_eq!(check_mount_budget(&mounts, &budget).is_ok(), fits);
        }

        #[test]
        fn memory_round_trips_n_times_unit(
            n in 0u64..1_000_000,
            unit in prop::sample::select(vec![
                ("", 0u32), ("b", 0), ("k", 10), ("kb", 10), ("m", 20), ("mb", 20),
                ("g", 30), ("gb", 30), ("gib", 30), ("t", 40), ("tb", 40),
            ]),
            upper in any::<bool>(),
        ) {
            let (suffix, shift) = unit;
            let suffix = if upper { suffix.to_ascii_uppercase() } else { suffix.to_string() };
            let raw = format!("{n}{suffix}");
            let want = i64::try_from(n << shift).unwrap();
            prop_assert_eq!(parse_memory(&raw).unwrap(), want);
        }

        #[test]
        fn memory_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse_memory(&s);
        }

        #[test]
        fn validation_never_panics(
            image in "\\PC{0,60}",
            network in "\\PC{0,20}",
            memory in "[0-9a-zA-Z. ]{0,12}",
            tmpfs in "\\PC{0,30}",
            ulimit in "\\PC{0,30}",
        ) {
            let r = with(|r| {
                r.image = image;
                r.limits.network = network;
                r.limits.memory = memory;
                r.limits.tmpfs = vec![tmpfs];
                r.limits.ulimits = vec![ulimit];
            });
            let _ = validate(&r, &ctx());
        }
    }
}
