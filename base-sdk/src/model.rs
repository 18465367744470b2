//! Wire and domain types shared by every BASE component.
//!
//! These shapes are the compatibility promises of `shared/CONTRACTS.md`: the
//! serde attributes here decide what challenge images, submitters and
//! operators' scripts see, so a change to a field name is a breaking change.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::registry::image::ImageRef;
use crate::registry::image::ImageRefError;

/// The current time at the precision every store keeps (microseconds), so a
/// record reads back equal to what was written.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// A challenge's identifier: lowercase ASCII letters, digits and inner dashes,
/// at least two characters, at most 63 (a DNS label, since it names Swarm
/// services and volumes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slug(String);

/// Why a string is not a [`Slug`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slug '{0}': must match ^[a-z0-9][a-z0-9-]*[a-z0-9]$ and be at most 63 characters")]
pub struct SlugError(pub String);

impl Slug {
    /// The longest slug accepted (a DNS label).
    pub const MAX_LEN: usize = 63;

    /// Parses and lowercases `raw`; surrounding white space is an error, not
    /// something silently trimmed, because slugs end up in service names.
    pub fn parse(raw: &str) -> Result<Self, SlugError> {
        let lower = raw.to_ascii_lowercase();
        let bytes = lower.as_bytes();
        let ok_inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let valid = bytes.len() >= 2
            && bytes.len() <= Self::MAX_LEN
            && bytes.iter().all(ok_inner)
            && bytes.first().is_some_and(ok_edge)
            && bytes.last().is_some_and(ok_edge);
        if valid {
            Ok(Self(lower))
        } else {
            Err(SlugError(raw.to_string()))
        }
    }

    /// The slug as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slug({})", self.0)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Slug {
    type Err = SlugError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Slug {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Slug::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Which BASE deployment owns a Docker object: every object BASE creates on
/// a Swarm carries it as the `base.deployment` label, and the reconciler,
/// the broker's reaper and the orphan sweeps act only on their own
/// deployment's objects, so two deployments (or a test beside a running
/// master) can share one Swarm. Lowercase ASCII letters, digits and inner
/// dashes, 1 to 32 characters: it also prefixes the installer's service
/// names, so it must fit in a DNS label with room to spare.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentId(String);

/// Why a string is not a [`DeploymentId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid deployment id '{0}': use 1 to 32 lowercase letters, digits and inner dashes \
     (^[a-z0-9]([a-z0-9-]*[a-z0-9])?$)"
)]
pub struct DeploymentIdError(pub String);

impl DeploymentId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 32;
    /// The deployment of an install that never chose one; it also owns the
    /// objects created before deployment ids existed (they carry no label).
    pub const DEFAULT: &'static str = "base";

    /// Checks `raw` against the rule. Nothing is lowercased or trimmed: the
    /// id is compared with labels byte for byte, so what the operator wrote
    /// is what must match.
    pub fn parse(raw: &str) -> Result<Self, DeploymentIdError> {
        let bytes = raw.as_bytes();
        let ok_inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes.iter().all(ok_inner)
            && bytes.first().is_some_and(ok_edge)
            && bytes.last().is_some_and(ok_edge);
        if valid {
            Ok(Self(raw.to_string()))
        } else {
            Err(DeploymentIdError(raw.to_string()))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default deployment ([`DeploymentId::DEFAULT`]),
    /// which adopts unlabelled objects.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for DeploymentId {
    fn default() -> Self {
        Self(Self::DEFAULT.to_string())
    }
}

impl fmt::Debug for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeploymentId({})", self.0)
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeploymentId {
    type Err = DeploymentIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for DeploymentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeploymentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        DeploymentId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Environment variable names the platform sets for a challenge; a record
/// or job spec may not use them, or it could point a challenge at the
/// control plane.
pub const RESERVED_ENV_PREFIXES: [&str; 2] = ["BASE_", "CHALLENGE_"];

/// A portable variable name: a letter or `_`, then letters, digits or `_`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `name` is one the platform sets ([`RESERVED_ENV_PREFIXES`]).
pub fn is_reserved_env(name: &str) -> bool {
    RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether any process could be given `name` (non-empty, no `=` or NUL).
pub fn is_settable_env(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// Lifecycle of a challenge record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeStatus {
    /// Registered but not public and not run.
    #[default]
    Draft,
    /// Public, run by the orchestrator, and weighted every epoch.
    Active,
    /// Public in the registry but stopped and unweighted.
    Inactive,
    /// Stopped by an operator for cause; public but unweighted.
    Disabled,
}

impl ChallengeStatus {
    /// The lowercase name stored in the database and used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Disabled => "disabled",
        }
    }
}

impl FromStr for ChallengeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "draft" => Ok(Self::Draft),
            "active" => Ok(Self::Active),
            "inactive" => Ok(Self::Inactive),
            "disabled" => Ok(Self::Disabled),
            other => Err(format!(
                "invalid status '{other}': expected draft, active, inactive or disabled"
            )),
        }
    }
}

/// A relative emission share. It is a float in memory and a JSON string such
/// as `"40.0"` on the wire (the Python platform serialized a `Decimal`);
/// numbers are accepted on input too.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct EmissionPercent(pub f64);

impl Serialize for EmissionPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        // Always keep a decimal point so "40" reads back as the same Decimal.
        let text = if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{v:.1}")
        } else {
            format!("{v}")
        };
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for EmissionPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Num(n) => n,
            Raw::Text(t) => t.trim().parse::<f64>().map_err(|_| {
                serde::de::Error::custom(format!("emission_percent '{t}' is not a number"))
            })?,
        };
        if !v.is_finite() {
            return Err(serde::de::Error::custom("emission_percent must be finite"));
        }
        Ok(Self(v))
    }
}

/// Per-challenge limits on what the broker will run for it (issue: broker).
/// Every field is optional: `None` means the broker's global default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerPolicy {
    /// Image prefixes this challenge may run, on top of the global allowlist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_images: Vec<String>,
    /// The escape hatch for privileged jobs; off unless set by an operator.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_privileged: bool,
    /// Most jobs running at once for this challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_jobs: Option<u32>,
    /// Most CPUs one job may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<f64>,
    /// Most memory one job may ask for, in Docker's notation (`"8g"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<String>,
    /// Most processes one job may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pids: Option<u32>,
    /// Longest timeout one job may ask for, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_seconds: Option<u64>,
    /// Most GPUs one job may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u32>,
}

/// A registered challenge, as the control plane stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    /// Immutable identifier.
    pub slug: Slug,
    /// Display name.
    pub name: String,
    /// Free text shown in the registry.
    pub description: String,
    /// The image reference as given (`registry/repo:tag@sha256:…`).
    pub image: ImageRef,
    /// The digest the image is pinned to, when known (from the reference or
    /// resolved by the image updater).
    pub image_digest: Option<String>,
    /// The challenge's own version; readiness requires `/version` to match.
    pub version: String,
    /// Relative share of the subnet's emission.
    pub emission_percent: EmissionPercent,
    /// Lifecycle state.
    pub status: ChallengeStatus,
    /// Contract version the challenge speaks.
    pub api_version: String,
    /// Where the master reaches the challenge (never public).
    pub internal_base_url: String,
    /// Capabilities `/version` must advertise before the challenge is ready.
    pub required_capabilities: Vec<String>,
    /// Resource requests for the challenge service (`cpus`, `memory`, …).
    pub resources: BTreeMap<String, String>,
    /// Extra volumes (`name` → container path) beside `/data`.
    pub volumes: BTreeMap<String, String>,
    /// Environment given to the challenge service (never public).
    pub env: BTreeMap<String, String>,
    /// Names of operator-managed secrets mounted into the service (never public).
    pub secrets: Vec<String>,
    /// Free-form metadata; only [`PUBLIC_METADATA_KEYS`] are public.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Broker limits for this challenge's jobs.
    pub broker: BrokerPolicy,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
}

/// Metadata keys that the public registry shows; everything else stays private.
pub const PUBLIC_METADATA_KEYS: &[&str] = &[
    "tagline",
    "summary",
    "docs_url",
    "miner_docs_url",
    "validator_docs_url",
    "repository_url",
    "website_url",
    "banner_url",
    "icon_url",
    "category",
    "difficulty",
    "benchmark_label",
    "submission_format",
    "evaluation_timeout_seconds",
    "rate_limit_label",
];

/// The public view of a challenge served by `GET /v1/registry`: no env
/// values, no secret names, no tokens, no internal URL, no broker policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicChallenge {
    /// Identifier.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Image reference.
    pub image: String,
    /// Challenge version.
    pub version: String,
    /// Relative emission share.
    pub emission_percent: EmissionPercent,
    /// Lifecycle state.
    pub status: ChallengeStatus,
    /// Contract version.
    pub api_version: String,
    /// Capabilities required for readiness.
    pub required_capabilities: Vec<String>,
    /// The public subset of the metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Challenge {
    /// The public projection of this record.
    pub fn public_view(&self) -> PublicChallenge {
        let metadata = self
            .metadata
            .iter()
            .filter(|(k, _)| PUBLIC_METADATA_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        PublicChallenge {
            slug: self.slug.to_string(),
            name: self.name.clone(),
            description: self.description.clone(),
            image: self.image.to_string(),
            version: self.version.clone(),
            emission_percent: self.emission_percent,
            status: self.status,
            api_version: self.api_version.clone(),
            required_capabilities: self.required_capabilities.clone(),
            metadata,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// Which of a challenge's two tokens a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// The master presents it to the challenge (`get_weights`, bridge).
    Challenge,
    /// The challenge presents it to the broker.
    DockerBroker,
}

impl TokenKind {
    /// Both kinds, in a fixed order.
    pub const ALL: [TokenKind; 2] = [TokenKind::Challenge, TokenKind::DockerBroker];

    /// Name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Challenge => "challenge",
            Self::DockerBroker => "docker_broker",
        }
    }
}

impl FromStr for TokenKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "challenge" => Ok(Self::Challenge),
            "docker_broker" | "broker" => Ok(Self::DockerBroker),
            other => Err(format!(
                "invalid token kind '{other}': expected challenge or docker_broker"
            )),
        }
    }
}

/// What the store keeps of a token: never the cleartext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The challenge the token belongs to.
    pub slug: Slug,
    /// Which token.
    pub kind: TokenKind,
    /// Hex SHA-256 of the cleartext.
    pub hash: String,
    /// `abcd…wxyz`, enough for an operator to tell tokens apart.
    pub hint: String,
    /// The cleartext sealed under the master's key (never serialized).
    #[serde(skip_serializing, default)]
    pub sealed: Option<String>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
}

/// One admin write, kept for accountability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Store-assigned id (0 before insertion).
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it (`admin` plus the token hint, or a component name).
    pub actor: String,
    /// What was done (`challenge.create`, `challenge.rotate_token`, …).
    pub action: String,
    /// The challenge it concerned, if any.
    pub slug: Option<String>,
    /// Details (never secrets).
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// A new entry stamped now.
    pub fn new(actor: &str, action: &str, slug: Option<&Slug>, detail: serde_json::Value) -> Self {
        Self {
            id: 0,
            at: now(),
            actor: actor.to_string(),
            action: action.to_string(),
            slug: slug.map(|s| s.to_string()),
            detail,
        }
    }
}

/// The scope a miner nonce is unique in: (netuid, slug, hotkey, nonce).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NonceKey {
    /// Subnet id.
    pub netuid: u16,
    /// Challenge.
    pub slug: Slug,
    /// Miner hotkey (ss58).
    pub hotkey: String,
    /// The nonce the miner chose.
    pub nonce: String,
}

/// One challenge's part in an epoch's weights, as reported in
/// `source_challenges`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceChallenge {
    /// Challenge.
    pub slug: String,
    /// Its configured emission share.
    pub emission_percent: EmissionPercent,
    /// The raw weights it returned (empty when it failed).
    pub weights: BTreeMap<String, f64>,
    /// Whether it answered.
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
}

/// The vector published every epoch (`GET /v1/weights/latest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsSnapshot {
    /// Subnet id.
    pub netuid: u16,
    /// The chain endpoint the vector is meant for.
    pub chain_endpoint: String,
    /// Uids, ascending.
    pub uids: Vec<u16>,
    /// Weights, one per uid, summing to 1.
    pub weights: Vec<f64>,
    /// Combined score per hotkey before the uid mapping.
    pub hotkey_weights: BTreeMap<String, f64>,
    /// When the vector was computed.
    #[serde(with = "rfc3339_z")]
    pub computed_at: DateTime<Utc>,
    /// After this, submitters must not use it.
    #[serde(with = "rfc3339_z")]
    pub expires_at: DateTime<Utc>,
    /// Each challenge's contribution.
    pub source_challenges: Vec<SourceChallenge>,
    /// When the metagraph used was read.
    #[serde(with = "rfc3339_z::option")]
    pub metagraph_updated_at: Option<DateTime<Utc>>,
    /// What this vector is: a fresh epoch's, the last good one kept over a
    /// failed epoch, or the burn vector (additive field; absent reads `ok`).
    #[serde(default)]
    pub status: SnapshotStatus,
    /// How the latest epoch went, when it is not the one that computed
    /// this vector's weights (additive field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_epoch: Option<EpochReport>,
}

/// Why the served vector is the one it is (`status` of a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Computed by the latest epoch, from at least one challenge that
    /// answered (or from no active challenge at all).
    #[default]
    Ok,
    /// The latest epoch failed (every active challenge failed); this is the
    /// last good vector, served until its own `expires_at`.
    Kept,
    /// The latest epoch failed and no unexpired good vector exists: the
    /// burn vector.
    Burn,
}

/// The outcome of the latest epoch, reported beside a vector it did not
/// compute (or a burn vector it fell back to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// When the epoch ran.
    #[serde(with = "rfc3339_z")]
    pub at: DateTime<Utc>,
    /// Whether it produced a vector from the challenges.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// RFC 3339 timestamps in UTC with a `Z` suffix, as CONTRACTS.md §5 requires.
pub mod rfc3339_z {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as `2026-01-01T00:00:00.000000Z`.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    /// Accepts any RFC 3339 timestamp and converts it to UTC.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The same for optional timestamps.
    pub mod option {
        use super::*;

        /// Serializes `None` as `null`.
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        /// Accepts `null` or an RFC 3339 timestamp.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            let raw = Option::<String>::deserialize(d)?;
            raw.map(|r| {
                DateTime::parse_from_rfc3339(&r)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse()
            .map_err(|e: ImageRefError| serde::de::Error::custom(e))
    }
}

/// What came back from one writable mount of a finished job: its contents
/// as an archive in the same format as a mount's input (`archive_b64`:
/// base64 of a gzip tar), or why there is none. Exactly one of the two is
/// set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutput {
    /// The mount's target inside the job.
    pub target: String,
    /// The mount's contents after the job, checked like an input archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_b64: Option<String>,
    /// Why the contents did not come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The broker's record of one evaluation job: what was asked, where it is,
/// and (once it ended) how it ended with the tail of its output. Kept in
/// the store so `GET /v1/jobs/{id}` and the reaper survive a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The broker's unique id (the Swarm service is `base-job-<id>`).
    pub id: String,
    /// The challenge that submitted it; it alone may see or cancel it.
    pub slug: Slug,
    /// The challenge's own job id (several records may share one).
    pub job_id: String,
    /// The challenge's task id.
    pub task_id: Option<String>,
    /// The image it runs.
    pub image: String,
    /// Where it is in its life.
    pub state: crate::orchestrator::JobState,
    /// The request as accepted, without mount contents (labels, limits,
    /// command), for listing and audit.
    pub spec: serde_json::Value,
    /// The node its task ran on.
    pub node_id: Option<String>,
    /// GPUs leased for it (0 for a CPU job).
    pub gpu_count: u32,
    /// The process's exit code; 124 when it timed out.
    pub exit_code: Option<i64>,
    /// Why it failed to start or was stopped, when there is more to say.
    pub error: Option<String>,
    /// The last bytes of its stdout (tail-capped), once it ended.
    pub stdout_tail: String,
    /// The last bytes of its stderr (tail-capped), once it ended.
    pub stderr_tail: String,
    /// When the broker accepted it.
    pub created_at: DateTime<Utc>,
    /// When its process started (the timeout counts from here).
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// When it is removed at the latest, started or not.
    pub deadline_at: Option<DateTime<Utc>>,
}

/// A GPU capacity lease: held from before a GPU job's service is created
/// until the job's record turns terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuLease {
    /// The job ([`JobRecord::id`]) holding it.
    pub job_ref: String,
    /// The job's challenge.
    pub slug: Slug,
    /// GPUs held.
    pub gpus: u32,
    /// When it was taken.
    pub acquired_at: DateTime<Utc>,
}

/// The store's answer to admitting a new job (record and lease together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Recorded, with its lease when it asked for GPUs.
    Admitted,
    /// The challenge already has `active` unfinished jobs, its maximum.
    TooManyJobs {
        /// Unfinished jobs of the challenge.
        active: u32,
        /// Its `max_concurrent_jobs`.
        max: u32,
    },
    /// Not enough GPUs are free.
    NoGpuCapacity {
        /// GPUs the job asked for.
        requested: u32,
        /// GPUs leased to other jobs.
        leased: u32,
        /// GPUs the cluster advertises.
        capacity: u32,
    },
}

/// Which job records to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this challenge's.
    pub slug: Option<Slug>,
    /// Only records with this challenge job id.
    pub job_id: Option<String>,
    /// Only unfinished ones (queued, pulling, running).
    pub active_only: bool,
    /// At most this many, newest first (`None`: all).
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_name_rules() {
        for ok in ["A", "_x", "QUIZ_SEED", "a1"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
        assert!(is_reserved_env("BASE_DATABASE_URL") && is_reserved_env("CHALLENGE_SLUG"));
        assert!(!is_reserved_env("BASEX") && !is_reserved_env("MY_BASE_URL"));
        assert!(is_settable_env("a-b") && !is_settable_env("a=b") && !is_settable_env(""));
    }

    #[test]
    fn slug_rules() {
        assert_eq!(Slug::parse("Term-Bench").unwrap().as_str(), "term-bench");
        for bad in ["", "a", "-ab", "ab-", "a_b", "a b", " ab", "ab\n", "ünï"] {
            assert!(Slug::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Slug::parse(&"a".repeat(63)).is_ok());
        assert!(Slug::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn deployment_id_rules() {
        for ok in ["base", "a", "7", "prod-2", "a--b", &"x".repeat(32)] {
            assert_eq!(DeploymentId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "Base",
            "a_b",
            "a b",
            " a",
            "a\n",
            "é",
            &"x".repeat(33),
        ] {
            let e = DeploymentId::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
        assert!(DeploymentId::default().is_default());
        assert_eq!(DeploymentId::default().as_str(), "base");
        assert!(!DeploymentId::parse("base2").unwrap().is_default());
        let id: DeploymentId = serde_json::from_str("\"prod\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"prod\"");
        assert!(serde_json::from_str::<DeploymentId>("\"Prod\"").is_err());
    }

    proptest::proptest! {
        /// Accepted exactly when the string matches the documented rule,
        /// checked against a regular expression written independently.
        #[test]
        fn deployment_id_accepts_exactly_the_rule(raw in "[a-zA-Z0-9_ -]{0,40}|[a-z0-9-]{0,34}") {
            let rule = regex::Regex::new("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$").unwrap();
            let expected = raw.len() <= 32 && rule.is_match(&raw);
            proptest::prop_assert_eq!(DeploymentId::parse(&raw).is_ok(), expected);
        }
    }

    #[test]
    fn emission_percent_is_a_string_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&EmissionPercent(40.0)).unwrap(),
            "\"40.0\""
        );
        assert_eq!(
            serde_json::to_string(&EmissionPercent(12.5)).unwrap(),
            "\"12.5\""
        );
        let n: EmissionPercent = serde_json::from_str("40").unwrap();
        let s: EmissionPercent = serde_json::from_str("\"40.0\"").unwrap();
        assert_eq!(n, s);
        assert!(serde_json::from_str::<EmissionPercent>("\"forty\"").is_err());
    }

    #[test]
    fn public_view_keeps_only_public_metadata() {
        let mut metadata = serde_json::Map::new();
        metadata.insert("tagline".into(), "hi".into());
        metadata.insert("internal_notes".into(), "secret".into());
        let now = Utc::now();
        let c = Challenge {
            slug: Slug::parse("ab").unwrap(),
            name: "n".into(),
            description: String::new(),
            image: "ghcr.io/x/y:1".parse().unwrap(),
            image_digest: None,
            version: "1".into(),
            emission_percent: EmissionPercent(1.0),
            status: ChallengeStatus::Active,
            api_version: "1.0".into(),
            internal_base_url: "http://challenge-ab:8000".into(),
            required_capabilities: vec![],
            resources: BTreeMap::new(),
            volumes: BTreeMap::new(),
            env: BTreeMap::from([("K".into(), "V".into())]),
            secrets: vec!["s".into()],
            metadata,
            broker: BrokerPolicy::default(),
            created_at: now,
            updated_at: now,
        };
        let text = serde_json::to_string(&c.public_view()).unwrap();
        assert!(text.contains("tagline"));
        for leaked in ["internal_notes", "challenge-ab:8000", "\"K\"", "\"s\""] {
            assert!(!text.contains(leaked), "{leaked} leaked: {text}");
        }
    }
}
