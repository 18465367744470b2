//! Operator settings, layered: defaults, then a TOML file, then `BASE_*`
//! environment variables, then `*_FILE` variants (Docker secrets).
//!
//! Secrets are [`SecretString`]s, so neither `Debug` output nor logs can
//! show them; the database URL prints with its password masked.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong shape (names the key).
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A `*_FILE` setting names a file that cannot be read.
    #[error("cannot read {key} from '{path}': {source}")]
    SecretFile {
        /// The setting.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Which rules are in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Local work: SQLite and the process orchestrator allowed.
    #[default]
    Development,
    /// Like production.
    Staging,
    /// Production policy on.
    Production,
}

impl Environment {
    /// Whether production policy applies.
    pub fn is_strict(self) -> bool {
        matches!(self, Self::Staging | Self::Production)
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }
}

/// Where challenge services run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrchestratorKind {
    /// Docker Swarm through the Engine API.
    Swarm,
    /// Local processes (development only).
    Process,
    /// Challenges run elsewhere; their `internal_base_url` is used as given.
    None,
}

impl FromStr for OrchestratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "swarm" => Ok(Self::Swarm),
            "process" => Ok(Self::Process),
            "none" => Ok(Self::None),
            o => Err(format!(
                "invalid orchestrator '{o}': expected swarm, process or none"
            )),
        }
    }
}

/// A database URL that never prints its password.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL with credentials, for the one place that connects.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with every credential replaced by `***` ([`redact_url`]).
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose_secret())
    }

    /// Whether this names PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        let raw = self.0.expose_secret();
        raw.starts_with("postgres://") || raw.starts_with("postgresql://")
    }
}

/// The one rule for printing a URL that may carry credentials (database
/// URLs above all): the userinfo password, and the value of every query
/// parameter whose name looks like a credential (`password`,
/// `sslpassword`, `pass`, `pwd`, `secret`, `token`, `key`, `auth`, …;
/// libpq and sqlx accept `?password=`), become `***`; the fragment is
/// dropped; a string that does not parse as a URL is not shown at all.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut u) = url::Url::parse(raw.trim()) else {
        return "<unparseable URL>".to_string();
    };
    if u.password().is_some() {
        // Only fails for URLs that cannot carry credentials, which have none.
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_credential_param(&k) {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.set_fragment(None);
    u.to_string()
}

fn is_credential_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
    ]
    .iter()
    .any(|w| n.contains(w))
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(String::deserialize(d)?))
    }
}

/// Everything an operator can set. Field names are the env var names
/// without `BASE_`, lowercased.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Master API address (`BASE_LISTEN`).
    pub listen: SocketAddr,
    /// Threads (and `SO_REUSEPORT` sockets) the master's API listens
    /// with (`BASE_LISTEN_THREADS`); default one per available core.
    #[serde(default)]
    pub listen_threads: Option<usize>,
    /// Broker address (`BASE_BROKER_LISTEN`).
    pub broker_listen: SocketAddr,
    /// Control-plane database (`BASE_DATABASE_URL`); defaults to a SQLite
    /// file in the data dir outside production.
    pub database_url: Option<DatabaseUrl>,
    /// Where embedded defaults keep files (`BASE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Development, staging or production (`BASE_ENVIRONMENT`).
    pub environment: Environment,
    /// Admin token (`BASE_ADMIN_TOKEN` / `BASE_ADMIN_TOKEN_FILE`); none
    /// means admin routes fail closed.
    pub admin_token: Option<SecretString>,
    /// Key sealing the tokens the master presents (`BASE_SECRET_KEY` /
    /// `BASE_SECRET_KEY_FILE`, 32 bytes as base64 or hex); generated into
    /// the data dir outside production.
    pub secret_key: Option<SecretString>,
    /// Where challenges run (`BASE_ORCHESTRATOR`).
    pub orchestrator: Option<OrchestratorKind>,
    /// Weight epoch interval (`BASE_EPOCH_SECONDS`).
    pub epoch_seconds: u64,
    /// Subnet id (`BASE_NETUID`).
    pub netuid: u16,
    /// Interval of the reconciler's full pass (`BASE_RECONCILE_SECONDS`);
    /// admin writes also wake it at once.
    pub reconcile_seconds: u64,
    /// Image prefixes the broker accepts (`BASE_BROKER_ALLOWED_IMAGES`, comma-separated).
    #[serde(deserialize_with = "comma_list")]
    pub broker_allowed_images: Vec<String>,
    /// File metagraph (`BASE_METAGRAPH_FILE`).
    pub metagraph_file: Option<PathBuf>,
    /// Chain endpoint the published vector is meant for (`BASE_CHAIN_ENDPOINT`).
    pub chain_endpoint: String,
    /// Whether `master` also runs the broker (`BASE_BROKER_ENABLED`).
    pub broker_enabled: bool,
    /// GPUs the broker may lease in all (`BASE_BROKER_GPU_CAPACITY`); by
    /// default the sum the cluster's GPU workers advertise.
    #[serde(default)]
    pub broker_gpu_capacity: Option<u32>,
    /// Seconds a job may wait to start on top of its timeout before the
    /// reaper removes it (`BASE_BROKER_START_GRACE_SECONDS`).
    pub broker_start_grace_seconds: u64,
    /// Hours what comes back from jobs' writable mounts is kept
    /// (`BASE_BROKER_OUTPUT_RETENTION_HOURS`).
    #[serde(default = "default_output_retention")]
    pub broker_output_retention_hours: u64,
    /// Days the records of finished jobs are kept
    /// (`BASE_BROKER_JOB_RETENTION_DAYS`).
    #[serde(default = "default_job_retention")]
    pub broker_job_retention_days: u64,
    /// Where every worker node keeps the job shim `base-shim`, which jobs
    /// with writable mounts run under (`BASE_SWARM_JOB_SHIM`; empty
    /// refuses writable mounts). See docs/workers.md.
    #[serde(default = "default_job_shim")]
    pub swarm_job_shim: String,
    /// Largest request body the public proxy and the upload bridge accept,
    /// in bytes (`BASE_PROXY_MAX_BODY_BYTES`).
    pub proxy_max_body_bytes: u64,
    /// Seconds a challenge may take to start answering a proxied request
    /// (`BASE_PROXY_UPSTREAM_TIMEOUT_SECONDS`); streaming bodies may last longer.
    pub proxy_upstream_timeout_seconds: u64,
    /// Concurrent proxied requests per challenge
    /// (`BASE_PROXY_MAX_CONCURRENT_PER_CHALLENGE`); more get 503.
    pub proxy_max_concurrent_per_challenge: usize,
    /// Proxied requests per minute per client IP (`BASE_PROXY_RATE_LIMIT_PER_MINUTE`; 0 = off).
    pub proxy_rate_limit_per_minute: u32,
    /// Requests a client may send in a burst (`BASE_PROXY_RATE_LIMIT_BURST`).
    pub proxy_rate_limit_burst: u32,
    /// Whether loopback clients are rate limited and held to the per-client
    /// caps too (`BASE_PROXY_RATE_LIMIT_LOOPBACK`).
    pub proxy_rate_limit_loopback: bool,
    /// Whether the public listener serves plain passthrough requests on
    /// its byte-level fast path (`BASE_PROXY_FAST_PATH`, default true;
    /// false sends every request through the general HTTP server).
    pub proxy_fast_path: bool,
    /// Accepted clock difference of a miner signature, ± seconds
    /// (`BASE_BRIDGE_SIGNATURE_WINDOW_SECONDS`).
    pub bridge_signature_window_seconds: u32,
    /// Uids that may not use the upload bridge (`BASE_BRIDGE_BLOCKED_UIDS`,
    /// comma-separated; default the owner's uid 0).
    #[serde(deserialize_with = "comma_uids")]
    pub bridge_blocked_uids: Vec<u16>,
    /// Hours a used miner nonce is remembered (`BASE_BRIDGE_NONCE_RETENTION_HOURS`).
    pub bridge_nonce_retention_hours: u32,
    /// Where the master's metagraph comes from (`BASE_METAGRAPH`: `file`
    /// or `chain`); by default the file when `BASE_METAGRAPH_FILE` is set,
    /// else none (weights disabled).
    #[serde(default)]
    pub metagraph: Option<MetagraphKind>,
    /// How long the chain metagraph is cached (`BASE_METAGRAPH_TTL_SECONDS`).
    #[serde(default = "default_metagraph_ttl")]
    pub metagraph_ttl_seconds: u64,
    /// Bittensor wallets directory (`BASE_WALLET_PATH`; default
    /// `~/.bittensor/wallets`).
    #[serde(default)]
    pub wallet_path: Option<PathBuf>,
    /// Wallet (coldkey) name (`BASE_WALLET_NAME`).
    #[serde(default = "default_wallet")]
    pub wallet_name: String,
    /// Hotkey name (`BASE_WALLET_HOTKEY`).
    #[serde(default = "default_wallet")]
    pub wallet_hotkey: String,
    /// The master the submitter reads (`BASE_SUBMITTER_MASTER`).
    #[serde(default = "default_submitter_master")]
    pub submitter_master: String,
    /// Seconds between submitter rounds (`BASE_SUBMITTER_INTERVAL_SECONDS`).
    #[serde(default = "default_submitter_interval")]
    pub submitter_interval_seconds: u64,
    /// Oldest vector the submitter accepts, by `computed_at`
    /// (`BASE_SUBMITTER_MAX_AGE_SECONDS`).
    #[serde(default = "default_submitter_max_age")]
    pub submitter_max_age_seconds: u64,
    /// The pending-commit file (`BASE_SUBMITTER_STATE_FILE`; default
    /// `<data_dir>/submitter/pending-commit.json`).
    #[serde(default)]
    pub submitter_state_file: Option<PathBuf>,
    /// Count an extrinsic as done once in a best block instead of finalized
    /// (`BASE_SUBMITTER_IN_BLOCK`).
    #[serde(default)]
    pub submitter_in_block: bool,
    /// Seconds the upload bridge waits for a whole signed upload body
    /// (`BASE_BRIDGE_BODY_TIMEOUT_SECONDS`); slower is 408.
    #[serde(default = "default_bridge_body_timeout")]
    pub bridge_body_timeout_seconds: u64,
    /// Signed uploads in progress at once, all miners together
    /// (`BASE_BRIDGE_MAX_CONCURRENT_UPLOADS`); more get 503.
    #[serde(default = "default_bridge_max_uploads")]
    pub bridge_max_concurrent_uploads: usize,
    /// Signed uploads one hotkey may have in progress
    /// (`BASE_BRIDGE_MAX_CONCURRENT_UPLOADS_PER_HOTKEY`); more get 429.
    #[serde(default = "default_bridge_max_uploads_per_hotkey")]
    pub bridge_max_concurrent_uploads_per_hotkey: usize,
    /// Admin requests per minute per client IP
    /// (`BASE_ADMIN_RATE_LIMIT_PER_MINUTE`; 0 = off); loopback included.
    #[serde(default = "default_admin_rate_per_minute")]
    pub admin_rate_limit_per_minute: u32,
    /// Admin requests a client may send in a burst (`BASE_ADMIN_RATE_LIMIT_BURST`).
    #[serde(default = "default_admin_rate_burst")]
    pub admin_rate_limit_burst: u32,
    /// Failed admin authentications a client IP may make before it is
    /// locked out (`BASE_ADMIN_MAX_FAILURES`).
    #[serde(default = "default_admin_max_failures")]
    pub admin_max_failures: u32,
    /// Longest admin lockout, seconds (`BASE_ADMIN_LOCKOUT_MAX_SECONDS`):
    /// lockouts double from 1 s with each further failure up to this.
    #[serde(default = "default_admin_lockout_max")]
    pub admin_lockout_max_seconds: u64,
    /// Proxied requests one client may have in flight, all challenges
    /// together (`BASE_PROXY_MAX_REQUESTS_PER_CLIENT`; 0 = no cap); more get 429.
    #[serde(default = "default_requests_per_client")]
    pub proxy_max_requests_per_client: u32,
    /// Proxied requests one client may have in flight to one challenge
    /// (`BASE_PROXY_MAX_REQUESTS_PER_CLIENT_PER_CHALLENGE`; 0 = no cap).
    #[serde(default = "default_requests_per_client_per_challenge")]
    pub proxy_max_requests_per_client_per_challenge: u32,
    /// Open event streams (`text/event-stream` answers) per client
    /// (`BASE_PROXY_MAX_STREAMS_PER_CLIENT`; 0 = no cap).
    #[serde(default = "default_streams_per_client")]
    pub proxy_max_streams_per_client: u32,
    /// Open connections per client IP on the API port
    /// (`BASE_PROXY_MAX_CONNECTIONS_PER_CLIENT`; 0 = no cap; trusted
    /// proxies exempt).
    #[serde(default = "default_connections_per_client")]
    pub proxy_max_connections_per_client: u32,
    /// Open connections on the API port in all (`BASE_PROXY_MAX_CONNECTIONS`;
    /// 0 = no cap); more get 503.
    #[serde(default = "default_connections_total")]
    pub proxy_max_connections: u32,
    /// Slowest request body accepted after the grace period, bytes/s
    /// (`BASE_PROXY_MIN_BODY_RATE`; 0 = no minimum); slower gets 408.
    #[serde(default = "default_min_rate")]
    pub proxy_min_body_rate: u64,
    /// Slowest a client may read an answer after the grace period, bytes/s
    /// (`BASE_PROXY_MIN_SEND_RATE`; 0 = no minimum); slower is disconnected.
    #[serde(default = "default_min_rate")]
    pub proxy_min_send_rate: u64,
    /// The grace period of both minimum rates, seconds
    /// (`BASE_PROXY_MIN_RATE_GRACE_SECONDS`).
    #[serde(default = "default_min_rate_grace")]
    pub proxy_min_rate_grace_seconds: u64,
    /// Seconds a relayed answer's body may go without a byte from the
    /// challenge (`BASE_PROXY_RELAY_IDLE_TIMEOUT_SECONDS`; event streams
    /// must send at least a comment this often).
    #[serde(default = "default_relay_idle")]
    pub proxy_relay_idle_timeout_seconds: u64,
    /// Reverse proxies whose `X-Forwarded-For` / `X-Real-IP` are believed
    /// (`BASE_TRUSTED_PROXIES`, comma-separated addresses and CIDRs;
    /// default none).
    #[serde(default, deserialize_with = "trusted_proxies")]
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// The master's weights signing key (`BASE_WEIGHTS_KEY` /
    /// `BASE_WEIGHTS_KEY_FILE`): a 32-byte sr25519 seed as hex or base64.
    /// Required by `master`; `dev` generates one into the data dir.
    #[serde(default)]
    pub weights_key: Option<SecretString>,
    /// The master's weights public key the submitter verifies every vector
    /// against (`BASE_MASTER_PUBKEY`: `0x` + 64 hex, or ss58). Required
    /// in staging/production; without it a development submitter warns.
    #[serde(default)]
    pub master_pubkey: Option<String>,
    /// A PEM CA certificate the submitter trusts, besides the system's
    /// roots, for an HTTPS master (`BASE_SUBMITTER_CA_FILE`).
    #[serde(default)]
    pub submitter_ca_file: Option<PathBuf>,
    /// Where challenges submit evaluation jobs (`BASE_CHALLENGE_BROKER_URL`),
    /// handed to every challenge as `CHALLENGE_DOCKER_BROKER_URL`: on Swarm,
    /// the broker's address as the challenge overlay reaches it. Unset,
    /// `dev` gives its own broker's loopback address and `master` gives
    /// none (a challenge then cannot run jobs).
    #[serde(default)]
    pub challenge_broker_url: Option<String>,
    /// Unfinished broker jobs of all challenges together
    /// (`BASE_BROKER_MAX_JOBS`; 0 = no cap); more get 429.
    #[serde(default = "default_broker_max_jobs")]
    pub broker_max_jobs: u32,
    /// Unfinished broker jobs per challenge when its broker policy sets no
    /// `max_concurrent_jobs` (`BASE_BROKER_MAX_JOBS_PER_CHALLENGE`; 0 = no
    /// default cap); more get 429.
    #[serde(default = "default_broker_max_jobs_per_challenge")]
    pub broker_max_jobs_per_challenge: u32,
    /// Seconds a job may stay queued with no node taking it before it ends
    /// failed (`BASE_BROKER_SCHEDULE_TIMEOUT_SECONDS`; the job's own
    /// timeout if shorter).
    #[serde(default = "default_broker_schedule_timeout")]
    pub broker_schedule_timeout_seconds: u64,
    /// Most mounts one job may have (`BASE_BROKER_MAX_MOUNTS`).
    #[serde(default = "default_broker_max_mounts")]
    pub broker_max_mounts: usize,
    /// Most bytes of files all the mounts of one job may hold together
    /// (`BASE_BROKER_MAX_JOB_MOUNT_BYTES`): on Swarm, the config bytes one
    /// job may create.
    #[serde(default = "default_broker_max_job_mount_bytes")]
    pub broker_max_job_mount_bytes: usize,
    /// Which deployment this process is (`BASE_DEPLOYMENT`, TOML
    /// `deployment`; default `base`): every Swarm object it creates is
    /// labelled `base.deployment=<id>`, and its reconciler, reaper and
    /// orphan sweeps touch only objects of this deployment (docs/swarm.md,
    /// "Deployments").
    #[serde(default)]
    pub deployment: crate::model::DeploymentId,
}

fn default_bridge_body_timeout() -> u64 {
    120
}
fn default_bridge_max_uploads() -> usize {
    32
}
fn default_bridge_max_uploads_per_hotkey() -> usize {
    2
}
fn default_admin_rate_per_minute() -> u32 {
    60
}
fn default_admin_rate_burst() -> u32 {
    30
}
fn default_admin_max_failures() -> u32 {
    5
}
fn default_admin_lockout_max() -> u64 {
    900
}

/// Source of the master's hotkey → uid mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetagraphKind {
    /// `BASE_METAGRAPH_FILE`.
    File,
    /// `SubtensorModule` storage at `BASE_CHAIN_ENDPOINT`.
    Chain,
}

fn default_broker_max_jobs() -> u32 {
    crate::broker::service::DEFAULT_MAX_JOBS
}
fn default_broker_max_jobs_per_challenge() -> u32 {
    crate::broker::service::DEFAULT_MAX_JOBS_PER_CHALLENGE
}
fn default_broker_schedule_timeout() -> u64 {
    crate::broker::service::DEFAULT_SCHEDULE_TIMEOUT_SECONDS
}
fn default_broker_max_mounts() -> usize {
    crate::broker::request::DEFAULT_MAX_MOUNTS
}
fn default_broker_max_job_mount_bytes() -> usize {
    crate::orchestrator::swarm::MAX_MOUNT_BYTES
}
fn default_output_retention() -> u64 {
    24
}
fn default_job_retention() -> u64 {
    14
}
fn default_job_shim() -> String {
    crate::orchestrator::swarm::DEFAULT_SHIM_HOST_PATH.into()
}
fn default_metagraph_ttl() -> u64 {
    300
}
fn default_wallet() -> String {
    "default".into()
}
fn default_submitter_master() -> String {
    "http://127.0.0.1:18080".into()
}
fn default_submitter_interval() -> u64 {
    120
}
fn default_submitter_max_age() -> u64 {
    1800
}
fn default_requests_per_client() -> u32 {
    crate::proxy::ClientCaps::default().requests
}
fn default_requests_per_client_per_challenge() -> u32 {
    crate::proxy::ClientCaps::default().requests_per_challenge
}
fn default_streams_per_client() -> u32 {
    crate::proxy::ClientCaps::default().streams
}
fn default_connections_per_client() -> u32 {
    crate::proxy::ClientCaps::default().connections
}
fn default_connections_total() -> u32 {
    crate::proxy::ClientCaps::default().connections_total
}
fn default_min_rate() -> u64 {
    crate::proxy::ProxyConfig::default()
        .body_min_rate
        .bytes_per_second
}
fn default_min_rate_grace() -> u64 {
    crate::proxy::ProxyConfig::default()
        .body_min_rate
        .grace
        .as_secs()
}
fn default_relay_idle() -> u64 {
    crate::proxy::ProxyConfig::default()
        .relay_idle_timeout
        .as_secs()
}

fn trusted_proxies<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<crate::proxy::TrustedProxies, D::Error> {
    comma_list(d)?
        .join(",")
        .parse()
        .map_err(serde::de::Error::custom)
}

#[derive(Serialize)]
struct Defaults {
    listen: &'static str,
    broker_listen: &'static str,
    data_dir: &'static str,
    environment: Environment,
    epoch_seconds: u64,
    netuid: u16,
    reconcile_seconds: u64,
    broker_allowed_images: &'static str,
    chain_endpoint: &'static str,
    broker_enabled: bool,
    broker_start_grace_seconds: u64,
    proxy_max_body_bytes: u64,
    proxy_upstream_timeout_seconds: u64,
    proxy_max_concurrent_per_challenge: usize,
    proxy_rate_limit_per_minute: u32,
    proxy_rate_limit_burst: u32,
    proxy_rate_limit_loopback: bool,
    proxy_fast_path: bool,
    bridge_signature_window_seconds: u32,
    bridge_blocked_uids: &'static str,
    bridge_nonce_retention_hours: u32,
}

const DEFAULTS: Defaults = Defaults {
    listen: "0.0.0.0:18080",
    broker_listen: "0.0.0.0:18082",
    data_dir: "./.base",
    environment: Environment::Development,
    epoch_seconds: 360,
    netuid: 100,
    reconcile_seconds: 10,
    broker_allowed_images: "ghcr.io/platformnetwork/",
    chain_endpoint: "wss://entrypoint-finney.opentensor.ai:443",
    broker_enabled: true,
    broker_start_grace_seconds: 600,
    proxy_max_body_bytes: 7_500_000,
    proxy_upstream_timeout_seconds: 60,
    proxy_max_concurrent_per_challenge: 256,
    proxy_rate_limit_per_minute: 600,
    proxy_rate_limit_burst: 120,
    proxy_rate_limit_loopback: false,
    proxy_fast_path: true,
    bridge_signature_window_seconds: 300,
    bridge_blocked_uids: "0",
    bridge_nonce_retention_hours: 24,
};

/// Settings whose value may come from a file named by `<key>_file`.
const FILE_KEYS: &[&str] = &["admin_token", "database_url", "secret_key", "weights_key"];

fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(s) => s.split(',').map(str::to_string).collect(),
        Raw::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

fn comma_uids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(u16),
        Text(String),
        Many(Vec<u16>),
    }
    match Raw::deserialize(d)? {
        Raw::One(u) => Ok(vec![u]),
        Raw::Many(v) => Ok(v),
        Raw::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<u16>()
                    .map_err(|_| serde::de::Error::custom(format!("'{t}' is not a uid (0-65535)")))
            })
            .collect(),
    }
}

impl Settings {
    /// The broker URL challenges are given: `BASE_CHALLENGE_BROKER_URL`
    /// when set (it must be an `http(s)` URL), else `local_default` — the
    /// address of a broker this process runs itself, if any.
    pub fn challenge_broker_url(
        &self,
        local_default: Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        let Some(given) = &self.challenge_broker_url else {
            return Ok(local_default);
        };
        match url::Url::parse(given) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Ok(Some(given.clone()))
            }
            _ => Err(ConfigError::Invalid(format!(
                "BASE_CHALLENGE_BROKER_URL must be an http(s) URL with a host, got '{}'",
                redact_url(given)
            ))),
        }
    }

    /// The public proxy's settings.
    pub fn proxy_config(&self) -> crate::proxy::ProxyConfig {
        use std::time::Duration;
        crate::proxy::ProxyConfig {
            netuid: self.netuid,
            max_body_bytes: self.proxy_max_body_bytes,
            upstream_timeout: Duration::from_secs(self.proxy_upstream_timeout_seconds),
            max_concurrent_per_challenge: self.proxy_max_concurrent_per_challenge,
            rate_limit: crate::proxy::RateLimit {
                per_minute: self.proxy_rate_limit_per_minute,
                burst: self.proxy_rate_limit_burst,
                include_loopback: self.proxy_rate_limit_loopback,
            },
            signature_window_seconds: i64::from(self.bridge_signature_window_seconds),
            nonce_retention: Duration::from_secs(
                u64::from(self.bridge_nonce_retention_hours) * 3600,
            ),
            blocked_uids: self.bridge_blocked_uids.clone(),
            fast_path: self.proxy_fast_path,
            upload_body_timeout: Duration::from_secs(self.bridge_body_timeout_seconds),
            max_concurrent_uploads: self.bridge_max_concurrent_uploads,
            max_concurrent_uploads_per_hotkey: self.bridge_max_concurrent_uploads_per_hotkey,
            client_caps: crate::proxy::ClientCaps {
                requests: self.proxy_max_requests_per_client,
                requests_per_challenge: self.proxy_max_requests_per_client_per_challenge,
                streams: self.proxy_max_streams_per_client,
                connections: self.proxy_max_connections_per_client,
                connections_total: self.proxy_max_connections,
                // One loopback rule for every per-client limit.
                include_loopback: self.proxy_rate_limit_loopback,
            },
            body_min_rate: crate::proxy::MinRate {
                bytes_per_second: self.proxy_min_body_rate,
                grace: Duration::from_secs(self.proxy_min_rate_grace_seconds),
            },
            send_min_rate: crate::proxy::MinRate {
                bytes_per_second: self.proxy_min_send_rate,
                grace: Duration::from_secs(self.proxy_min_rate_grace_seconds),
            },
            relay_idle_timeout: Duration::from_secs(self.proxy_relay_idle_timeout_seconds),
            trusted_proxies: self.trusted_proxies.clone(),
            ..crate::proxy::ProxyConfig::default()
        }
    }

    /// The admin routes' rate limit and failed-authentication lockout.
    pub fn admin_limits(&self) -> crate::auth::AdminLimits {
        crate::auth::AdminLimits {
            per_minute: self.admin_rate_limit_per_minute,
            burst: self.admin_rate_limit_burst,
            max_failures: self.admin_max_failures,
            lockout_max: std::time::Duration::from_secs(self.admin_lockout_max_seconds),
        }
    }

    /// Loads defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The layered sources, for callers that add their own (CLI flags).
    pub fn figment(file: Option<&Path>) -> Figment {
        Self::figment_with(file, Serialized::defaults(serde_json::json!({})))
    }

    /// Like [`Settings::figment`], with `defaults` (a mode's own defaults,
    /// such as `dev`'s short epoch) between the built-in defaults and the
    /// file, so the file and the environment still override them.
    pub fn figment_with(file: Option<&Path>, defaults: impl figment::Provider) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(DEFAULTS)).merge(defaults);
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        // BASE_CONFIG names the file; it is not a setting itself.
        fig.merge(Env::prefixed("BASE_").ignore(&["config"]))
    }

    /// The built-in defaults alone: no file, no `BASE_*` variable except
    /// the raw secret ones `from_figment` always reads. A base for tests
    /// and for pure decisions such as `node::plan`.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Serialized::defaults(DEFAULTS)))
    }

    /// Extracts settings and resolves `*_FILE` variants.
    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let mut fig = fig;
        // figment parses env values (`0123` becomes the number 123, `[…]`
        // an array): a secret is text exactly as given, so take it raw.
        // The same for the deployment id: `7` is a valid id, not a number.
        if let Ok(raw) = std::env::var("BASE_DEPLOYMENT") {
            fig = fig.merge(Serialized::default("deployment", raw));
        }
        for key in FILE_KEYS {
            if let Ok(raw) = std::env::var(format!("BASE_{}", key.to_ascii_uppercase())) {
                fig = fig.merge(Serialized::default(key, raw));
            }
        }
        for key in FILE_KEYS {
            let file_key = format!("{key}_file");
            if let Ok(path) = fig.extract_inner::<PathBuf>(&file_key) {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
                        key: format!("BASE_{}", file_key.to_ascii_uppercase()),
                        path: path.clone(),
                        source,
                    })?;
                let value = text.trim_end_matches(['\n', '\r']).to_string();
                fig = fig.merge(Serialized::default(key, value));
            }
        }
        let mut s: Settings = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        if s.epoch_seconds == 0 {
            return Err(ConfigError::Invalid(
                "BASE_EPOCH_SECONDS must be at least 1".into(),
            ));
        }
        if s.reconcile_seconds == 0 {
            return Err(ConfigError::Invalid(
                "BASE_RECONCILE_SECONDS must be at least 1".into(),
            ));
        }
        for (value, name) in [
            (
                s.proxy_upstream_timeout_seconds,
                "BASE_PROXY_UPSTREAM_TIMEOUT_SECONDS",
            ),
            (
                s.proxy_max_concurrent_per_challenge as u64,
                "BASE_PROXY_MAX_CONCURRENT_PER_CHALLENGE",
            ),
            (
                u64::from(s.bridge_nonce_retention_hours),
                "BASE_BRIDGE_NONCE_RETENTION_HOURS",
            ),
            (
                s.proxy_relay_idle_timeout_seconds,
                "BASE_PROXY_RELAY_IDLE_TIMEOUT_SECONDS",
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        for (value, name) in [
            (
                s.bridge_body_timeout_seconds,
                "BASE_BRIDGE_BODY_TIMEOUT_SECONDS",
            ),
            (
                s.bridge_max_concurrent_uploads as u64,
                "BASE_BRIDGE_MAX_CONCURRENT_UPLOADS",
            ),
            (
                s.bridge_max_concurrent_uploads_per_hotkey as u64,
                "BASE_BRIDGE_MAX_CONCURRENT_UPLOADS_PER_HOTKEY",
            ),
            (
                s.admin_lockout_max_seconds,
                "BASE_ADMIN_LOCKOUT_MAX_SECONDS",
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        // An empty admin token would make every admin route open to "".
        if s.admin_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().is_empty())
        {
            s.admin_token = None;
        }
        Ok(s)
    }

    /// The sealing key `master` uses: the configured one. A missing key
    /// is an error naming `BASE_SECRET_KEY`, in every environment — the
    /// master never makes up a key in its working directory, where a
    /// restart elsewhere would lose it (and every sealed token with it).
    pub fn vault(&self) -> Result<crate::vault::Vault, ConfigError> {
        use crate::vault::Vault;
        match &self.secret_key {
            Some(k) => Vault::from_text(k)
                .map_err(|e| ConfigError::Invalid(format!("BASE_SECRET_KEY: {e}"))),
            None => Err(ConfigError::Invalid(
                "BASE_SECRET_KEY (or BASE_SECRET_KEY_FILE) is required: 32 random bytes as base64 \
                 or 64 hex characters (e.g. `openssl rand -base64 32`)"
                    .into(),
            )),
        }
    }

    /// The sealing key `base-server dev` uses: the configured one, or
    /// (outside production) `<data_dir>/secret.key`, created on first use.
    pub fn dev_vault(&self) -> Result<crate::vault::Vault, ConfigError> {
        use crate::vault::Vault;
        match &self.secret_key {
            Some(_) => self.vault(),
            None if self.environment.is_strict() => self.vault(),
            None => Vault::load_or_create(&self.data_dir.join("secret.key"))
                .map_err(|e| ConfigError::Invalid(e.to_string())),
        }
    }

    /// The weights signing key `master` uses: the configured one; missing
    /// is an error naming `BASE_WEIGHTS_KEY`.
    pub fn weights_key(&self) -> Result<crate::weights::signing::WeightsKey, ConfigError> {
        use crate::weights::signing::WeightsKey;
        match &self.weights_key {
            Some(k) => WeightsKey::from_text(k, "BASE_WEIGHTS_KEY")
                .map_err(|e| ConfigError::Invalid(e.to_string())),
            None => Err(ConfigError::Invalid(
                "BASE_WEIGHTS_KEY (or BASE_WEIGHTS_KEY_FILE) is required: the 32-byte sr25519 seed \
                 the master signs every weight vector with, as 0x + 64 hex characters \
                 (e.g. `echo 0x$(openssl rand -hex 32)`); validators verify with its public key \
                 (`base-server weights-pubkey`)"
                    .into(),
            )),
        }
    }

    /// The weights signing key `base-server dev` uses: the configured one,
    /// or (outside production) `<data_dir>/weights.key`, created on first use.
    pub fn dev_weights_key(&self) -> Result<crate::weights::signing::WeightsKey, ConfigError> {
        use crate::weights::signing::WeightsKey;
        match &self.weights_key {
            Some(_) => self.weights_key(),
            None if self.environment.is_strict() => self.weights_key(),
            None => WeightsKey::load_or_create(&self.data_dir.join("weights.key"))
                .map_err(|e| ConfigError::Invalid(e.to_string())),
        }
    }

    /// The master public key the submitter verifies against, if configured.
    pub fn master_public_key(
        &self,
    ) -> Result<Option<crate::weights::signing::WeightsPublicKey>, ConfigError> {
        self.master_pubkey
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                k.parse()
                    .map_err(|e| ConfigError::Invalid(format!("BASE_MASTER_PUBKEY: {e}")))
            })
            .transpose()
    }

    /// The database URL in force: the configured one, or a SQLite file in
    /// the data dir outside production.
    pub fn effective_database_url(&self) -> Result<DatabaseUrl, ConfigError> {
        match &self.database_url {
            Some(u) => Ok(u.clone()),
            None if self.environment.is_strict() => Err(ConfigError::Invalid(format!(
                "BASE_DATABASE_URL is required in {}",
                self.environment.as_str()
            ))),
            None => Ok(DatabaseUrl::new(format!(
                "sqlite://{}",
                self.data_dir.join("base.sqlite3").display()
            ))),
        }
    }
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let key = err.path.join(".");
            // figment quotes the value it could not use: never for a secret.
            if err
                .path
                .first()
                .is_some_and(|k| FILE_KEYS.contains(&k.as_str()))
            {
                return format!(
                    "BASE_{} ({key}): invalid value (expected text; the value is a secret and is not shown)",
                    key.to_ascii_uppercase()
                );
            }
            if key.is_empty() {
                err.kind.to_string()
            } else {
                format!("BASE_{} ({key}): {}", key.to_ascii_uppercase(), err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_then_file_then_env_then_secret_files() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "base.toml",
                "netuid = 7\nepoch_seconds = 60\nlisten = \"127.0.0.1:1\"",
            )?;
            jail.create_file("token", "from-file\n")?;
            jail.set_env("BASE_EPOCH_SECONDS", "30");
            jail.set_env("BASE_ADMIN_TOKEN", "from-env");
            jail.set_env("BASE_ADMIN_TOKEN_FILE", "token");
            jail.set_env("BASE_BROKER_ALLOWED_IMAGES", "ghcr.io/a/, ghcr.io/b/");
            jail.set_env("BASE_DATABASE_URL", "postgres://u:hunter2@db/base");
            let s = Settings::load(Some(Path::new("base.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.netuid, 7);
            assert_eq!(s.epoch_seconds, 30);
            assert_eq!(s.listen.to_string(), "127.0.0.1:1");
            assert_eq!(s.broker_listen.to_string(), "0.0.0.0:18082");
            assert_eq!(
                s.admin_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string())
                    .as_deref(),
                Some("from-file")
            );
            assert_eq!(s.broker_allowed_images, vec!["ghcr.io/a/", "ghcr.io/b/"]);
            let dbg = format!("{s:?}");
            assert!(!dbg.contains("hunter2"), "{dbg}");
            assert!(!dbg.contains("from-file"), "{dbg}");
            assert!(dbg.contains("postgres://u:***@db/base"), "{dbg}");
            Ok(())
        });
    }

    /// A FROM-scratch container gets every secret as a Docker secret
    /// file: each secret setting has its `*_FILE` form, and the file wins
    /// over the plain variable.
    #[test]
    fn every_secret_setting_reads_its_file_form() {
        Jail::expect_with(|jail| {
            jail.create_file("db", "postgres://u:pw@db/base\n")?;
            jail.create_file("sk", "secret-key-from-file\n")?;
            jail.create_file("wk", "weights-key-from-file\n")?;
            jail.create_file("at", "admin-from-file\n")?;
            jail.set_env("BASE_SECRET_KEY", "secret-key-from-env");
            jail.set_env("BASE_DATABASE_URL_FILE", "db");
            jail.set_env("BASE_SECRET_KEY_FILE", "sk");
            jail.set_env("BASE_WEIGHTS_KEY_FILE", "wk");
            jail.set_env("BASE_ADMIN_TOKEN_FILE", "at");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let text = |v: &Option<SecretString>| v.as_ref().map(|t| t.expose_secret().to_string());
            assert_eq!(
                s.database_url.as_ref().map(DatabaseUrl::expose),
                Some("postgres://u:pw@db/base")
            );
            assert_eq!(text(&s.secret_key).as_deref(), Some("secret-key-from-file"));
            assert_eq!(
                text(&s.weights_key).as_deref(),
                Some("weights-key-from-file")
            );
            assert_eq!(text(&s.admin_token).as_deref(), Some("admin-from-file"));
            // A missing file names the variable that pointed at it.
            for key in [
                "BASE_DATABASE_URL_FILE",
                "BASE_SECRET_KEY_FILE",
                "BASE_WEIGHTS_KEY_FILE",
            ] {
                jail.set_env(key, "/nonexistent/secret");
                let e = Settings::load(None).unwrap_err().to_string();
                assert!(e.contains(key), "{e}");
                jail.set_env(
                    key,
                    match key {
                        "BASE_DATABASE_URL_FILE" => "db",
                        "BASE_SECRET_KEY_FILE" => "sk",
                        _ => "wk",
                    },
                );
            }
            Ok(())
        });
    }

    #[test]
    fn broker_job_caps() {
        Jail::expect_with(|jail| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                (
                    s.broker_max_jobs,
                    s.broker_max_jobs_per_challenge,
                    s.broker_schedule_timeout_seconds,
                    s.broker_max_mounts,
                    s.broker_max_job_mount_bytes,
                ),
                (128, 32, 300, 16, 16 << 20)
            );
            jail.set_env("BASE_BROKER_MAX_JOBS", "0");
            jail.set_env("BASE_BROKER_MAX_JOBS_PER_CHALLENGE", "4");
            jail.set_env("BASE_BROKER_SCHEDULE_TIMEOUT_SECONDS", "30");
            jail.set_env("BASE_BROKER_MAX_MOUNTS", "2");
            jail.set_env("BASE_BROKER_MAX_JOB_MOUNT_BYTES", "1000");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                (
                    s.broker_max_jobs,
                    s.broker_max_jobs_per_challenge,
                    s.broker_schedule_timeout_seconds,
                    s.broker_max_mounts,
                    s.broker_max_job_mount_bytes,
                ),
                (0, 4, 30, 2, 1000)
            );
            Ok(())
        });
    }

    #[test]
    fn chain_and_submitter_settings() {
        Jail::expect_with(|jail| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.metagraph, None);
            assert_eq!(s.metagraph_ttl_seconds, 300);
            assert_eq!(
                (s.wallet_name.as_str(), s.wallet_hotkey.as_str()),
                ("default", "default")
            );
            assert_eq!(s.submitter_master, "http://127.0.0.1:18080");
            assert!(!s.submitter_in_block);
            jail.set_env("BASE_METAGRAPH", "chain");
            jail.set_env("BASE_WALLET_NAME", "validator");
            jail.set_env("BASE_SUBMITTER_INTERVAL_SECONDS", "30");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.metagraph, Some(MetagraphKind::Chain));
            assert_eq!(s.wallet_name, "validator");
            assert_eq!(s.submitter_interval_seconds, 30);
            jail.set_env("BASE_METAGRAPH", "ledger");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("BASE_METAGRAPH"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn proxy_settings_have_defaults_and_env_overrides() {
        Jail::expect_with(|jail| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let p = s.proxy_config();
            assert_eq!(p.max_body_bytes, 7_500_000);
            assert_eq!(p.blocked_uids, vec![0]);
            assert_eq!(p.signature_window_seconds, 300);
            assert_eq!(p.nonce_retention.as_secs(), 24 * 3600);
            assert!(!p.rate_limit.include_loopback);
            jail.set_env("BASE_BRIDGE_BLOCKED_UIDS", "0, 7,9");
            jail.set_env("BASE_PROXY_RATE_LIMIT_PER_MINUTE", "0");
            jail.set_env("BASE_PROXY_MAX_BODY_BYTES", "1000");
            let p = Settings::load(None)
                .map_err(|e| e.to_string())?
                .proxy_config();
            assert_eq!(p.blocked_uids, vec![0, 7, 9]);
            assert_eq!(p.rate_limit.per_minute, 0);
            assert_eq!(p.max_body_bytes, 1000);
            jail.set_env("BASE_BRIDGE_BLOCKED_UIDS", "0,alice");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(
                e.contains("BASE_BRIDGE_BLOCKED_UIDS") && e.contains("alice"),
                "{e}"
            );
            jail.set_env("BASE_BRIDGE_BLOCKED_UIDS", "0");
            jail.set_env("BASE_PROXY_UPSTREAM_TIMEOUT_SECONDS", "0");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("BASE_PROXY_UPSTREAM_TIMEOUT_SECONDS"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn bridge_and_admin_limits_have_defaults_and_env_overrides() {
        Jail::expect_with(|jail| {
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let p = s.proxy_config();
            assert_eq!(p.upload_body_timeout.as_secs(), 120);
            assert_eq!(p.max_concurrent_uploads, 32);
            assert_eq!(p.max_concurrent_uploads_per_hotkey, 2);
            let a = s.admin_limits();
            assert_eq!((a.per_minute, a.burst, a.max_failures), (60, 30, 5));
            assert_eq!(a.lockout_max.as_secs(), 900);
            jail.set_env("BASE_BRIDGE_BODY_TIMEOUT_SECONDS", "7");
            jail.set_env("BASE_BRIDGE_MAX_CONCURRENT_UPLOADS_PER_HOTKEY", "1");
            jail.set_env("BASE_ADMIN_MAX_FAILURES", "3");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.proxy_config().upload_body_timeout.as_secs(), 7);
            assert_eq!(s.proxy_config().max_concurrent_uploads_per_hotkey, 1);
            assert_eq!(s.admin_limits().max_failures, 3);
            jail.set_env("BASE_BRIDGE_MAX_CONCURRENT_UPLOADS", "0");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("BASE_BRIDGE_MAX_CONCURRENT_UPLOADS"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("BASE_NETUID", "many");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("BASE_NETUID"), "{e}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("BASE_ADMIN_TOKEN_FILE", "/nonexistent/token");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(
                e.contains("BASE_ADMIN_TOKEN_FILE") && e.contains("/nonexistent/token"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn deployment_defaults_to_base_and_is_validated() {
        Jail::expect_with(|_| {
            assert_eq!(Settings::load(None).unwrap().deployment.as_str(), "base");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("base.toml", "deployment = \"from-file\"")?;
            let file = jail.directory().join("base.toml");
            let s = Settings::load(Some(&file)).unwrap();
            assert_eq!(s.deployment.as_str(), "from-file");
            // Digits only: still text, not a number figment parsed.
            jail.set_env("BASE_DEPLOYMENT", "7");
            assert_eq!(
                Settings::load(Some(&file)).unwrap().deployment.as_str(),
                "7"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("BASE_DEPLOYMENT", "Prod_1");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(
                e.contains("BASE_DEPLOYMENT") && e.contains("'Prod_1'"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn database_defaults_to_sqlite_outside_production() {
        Jail::expect_with(|jail| {
            jail.set_env("BASE_DATA_DIR", "/tmp/x");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                s.effective_database_url()
                    .map_err(|e| e.to_string())?
                    .expose(),
                "sqlite:///tmp/x/base.sqlite3"
            );
            jail.set_env("BASE_ENVIRONMENT", "production");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert!(s.effective_database_url().is_err());
            Ok(())
        });
    }

    #[test]
    fn client_limit_settings_have_the_proxy_defaults_and_env_overrides() {
        Jail::expect_with(|jail| {
            let p = Settings::load(None)
                .map_err(|e| e.to_string())?
                .proxy_config();
            let d = crate::proxy::ProxyConfig::default();
            assert_eq!(p.client_caps, d.client_caps);
            assert_eq!(p.body_min_rate, d.body_min_rate);
            assert_eq!(p.send_min_rate, d.send_min_rate);
            assert_eq!(p.relay_idle_timeout, d.relay_idle_timeout);
            assert!(p.trusted_proxies.is_empty());
            jail.set_env("BASE_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1");
            jail.set_env("BASE_PROXY_MAX_CONNECTIONS_PER_CLIENT", "5");
            jail.set_env("BASE_PROXY_MIN_SEND_RATE", "0");
            jail.set_env("BASE_PROXY_RATE_LIMIT_LOOPBACK", "true");
            let p = Settings::load(None)
                .map_err(|e| e.to_string())?
                .proxy_config();
            assert!(p.trusted_proxies.contains("10.9.9.9".parse().unwrap()));
            assert!(p.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
            assert_eq!(p.client_caps.connections, 5);
            assert!(p.client_caps.include_loopback);
            assert!(p.send_min_rate.is_off());
            jail.set_env("BASE_TRUSTED_PROXIES", "10.0.0.0/8,lb.internal");
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(
                e.contains("BASE_TRUSTED_PROXIES") && e.contains("lb.internal"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn database_url_credentials_are_redacted_everywhere_they_hide() {
        let r = redact_url(
            "postgres://u:hunter2@db:5432/base?sslmode=require&password=s3cr3t&sslpassword=p4ss#frag",
        );
        assert!(
            !r.contains("hunter2") && !r.contains("s3cr3t") && !r.contains("p4ss"),
            "{r}"
        );
        assert!(
            r.contains("u:***@db:5432/base") && r.contains("sslmode=require"),
            "{r}"
        );
        assert!(r.contains("password=***"), "{r}");
        assert_eq!(redact_url("not a url hunter2"), "<unparseable URL>");
        let d = DatabaseUrl::new("postgres://db/base?user=u&password=hunter2");
        assert!(!d.redacted().contains("hunter2"), "{}", d.redacted());
        assert!(!format!("{d:?}").contains("hunter2"));
    }

    proptest::proptest! {
        /// Whatever the password (any characters, percent-encoded into the
        /// URL), neither its raw nor its encoded form survives redaction,
        /// in the userinfo or in any credential query parameter.
        #[test]
        fn redaction_never_shows_a_password(
            pw in "[ -~]{6,40}",
            param in proptest::sample::select(vec!["password", "PASSWORD", "sslpassword", "pass", "auth_token", "api_key"]),
            scheme in proptest::sample::select(vec!["postgres", "postgresql", "sqlite", "https"]),
        ) {
            use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
            let enc = utf8_percent_encode(&pw, NON_ALPHANUMERIC).to_string();
            let marked = format!("ZQ{pw}");
            let marked_enc = format!("ZQ{enc}");
            for raw in [
                format!("{scheme}://user:{marked_enc}@host:5432/db"),
                format!("{scheme}://host/db?application_name=x&{param}={marked_enc}"),
                format!("{scheme}://user:{marked_enc}@host/db?{param}={marked_enc}&sslmode=disable"),
            ] {
                let r = redact_url(&raw);
                proptest::prop_assert!(!r.contains(&marked), "{} -> {}", raw, r);
                proptest::prop_assert!(!r.contains(&marked_enc), "{} -> {}", raw, r);
            }
        }
    }

    /// A secret is text exactly as given (figment would have turned
    /// `0123…` into a number, then quoted it in an error); one that does
    /// not parse is named, never echoed.
    #[test]
    fn secrets_are_kept_as_text_and_never_echoed() {
        Jail::expect_with(|jail| {
            jail.set_env("BASE_ADMIN_TOKEN", "0123456789");
            jail.set_env("BASE_SECRET_KEY", "[hunter2]");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                s.admin_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string())
                    .as_deref(),
                Some("0123456789")
            );
            let e = s.vault().unwrap_err().to_string();
            assert!(
                e.contains("BASE_SECRET_KEY") && !e.contains("hunter2"),
                "{e}"
            );
            jail.set_env("BASE_WEIGHTS_KEY", "hunter2hunter2");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let e = s.weights_key().unwrap_err().to_string();
            assert!(
                e.contains("BASE_WEIGHTS_KEY") && !e.contains("hunter2"),
                "{e}"
            );
            Ok(())
        });
        for (line, var) in [
            ("admin_token = 1234567890", "BASE_ADMIN_TOKEN"),
            (
                "database_url = [\"postgres://u:hunter2@db/x\"]",
                "BASE_DATABASE_URL",
            ),
            ("secret_key = { hunter2 = 1 }", "BASE_SECRET_KEY"),
            ("weights_key = 1234567890.5", "BASE_WEIGHTS_KEY"),
        ] {
            Jail::expect_with(|jail| {
                jail.create_file("base.toml", line)?;
                let e = Settings::load(Some(Path::new("base.toml")))
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(var), "{line}: {e}");
                assert!(
                    !e.contains("1234567890") && !e.contains("hunter2"),
                    "{line} echoed: {e}"
                );
                Ok(())
            });
        }
    }

    /// The broker URL challenges get: the configured one (checked, never
    /// echoed when it is not a URL), else the local default.
    #[test]
    fn challenge_broker_url_is_configured_or_the_local_default() {
        Jail::expect_with(|jail| {
            let local = Some("http://127.0.0.1:18082".to_string());
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.challenge_broker_url(local.clone()).unwrap(), local);
            assert_eq!(s.challenge_broker_url(None).unwrap(), None);
            jail.set_env("BASE_CHALLENGE_BROKER_URL", "http://base-broker:18082");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                s.challenge_broker_url(local.clone()).unwrap().as_deref(),
                Some("http://base-broker:18082")
            );
            for bad in ["base-broker:18082", "ftp://x/", "http://u:hunter2@/"] {
                jail.set_env("BASE_CHALLENGE_BROKER_URL", bad);
                let s = Settings::load(None).map_err(|e| e.to_string())?;
                let e = s.challenge_broker_url(None).unwrap_err().to_string();
                assert!(e.contains("BASE_CHALLENGE_BROKER_URL"), "{e}");
                assert!(!e.contains("hunter2"), "{e}");
            }
            Ok(())
        });
    }

    /// `master` needs its keys given; only `dev` makes them up.
    #[test]
    fn only_dev_generates_keys() {
        Jail::expect_with(|jail| {
            let data = jail.directory().join("data");
            jail.set_env("BASE_DATA_DIR", data.display().to_string());
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert!(
                s.vault()
                    .unwrap_err()
                    .to_string()
                    .contains("BASE_SECRET_KEY")
            );
            assert!(
                s.weights_key()
                    .unwrap_err()
                    .to_string()
                    .contains("BASE_WEIGHTS_KEY")
            );
            assert!(!data.exists(), "nothing written");
            s.dev_vault().map_err(|e| e.to_string())?;
            let k1 = s.dev_weights_key().map_err(|e| e.to_string())?.public();
            let k2 = s.dev_weights_key().map_err(|e| e.to_string())?.public();
            assert_eq!(k1, k2);
            assert!(data.join("secret.key").exists() && data.join("weights.key").exists());
            jail.set_env("BASE_ENVIRONMENT", "production");
            jail.set_env(
                "BASE_DATA_DIR",
                jail.directory().join("prod").display().to_string(),
            );
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert!(s.dev_vault().is_err() && s.dev_weights_key().is_err());
            Ok(())
        });
    }
}
