//! The command line of `base`: clap definitions, value parsers, and the
//! translation of flags into the master API's request bodies.
//!
//! Everything here is pure (no I/O), so the rules an operator meets first
//! (`--env` needs `K=V`, `--metadata-json` must be an object, `update`
//! needs something to change) are unit-tested without a server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base_sdk::model::{ChallengeStatus, EmissionPercent, TokenKind};
use base_sdk::orchestrator::swarm::nodes::Workload;
use base_sdk::registry::{ChallengePatch, NewChallenge};
use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Url;
use secrecy::SecretString;

/// The master URL used when neither `--master` nor `BASE_MASTER_URL` is set.
pub const DEFAULT_MASTER_URL: &str = "http://127.0.0.1:18080";

/// A flag value or combination of flags that cannot be turned into a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// `--env` without `=`, or with an empty name.
    #[error("'{0}' is not NAME=VALUE (for example --env LOG_LEVEL=debug)")]
    EnvPair(String),
    /// The same `--env` name twice.
    #[error("--env {0} is given more than once")]
    DuplicateEnv(String),
    /// `--metadata-json` is not a JSON object.
    #[error("--metadata-json must be a JSON object such as '{{\"tagline\":\"…\"}}': {0}")]
    Metadata(String),
    /// `--emission-percent` is not a finite number ≥ 0.
    #[error("'{0}' is not a finite number >= 0")]
    Emission(String),
    /// `--master` is not an absolute http(s) URL.
    #[error(
        "'{0}' is not an http:// or https:// URL with a host (for example {DEFAULT_MASTER_URL})"
    )]
    MasterUrl(String),
    /// `challenge update` without any field to change.
    #[error("nothing to update: give at least one field flag (see `base challenge update --help`)")]
    NothingToUpdate,
}

/// `base`: the operator command line of a BASE master.
#[derive(Debug, Parser)]
#[command(
    name = "base",
    version,
    about = "Operate a BASE master: register and manage challenges, read the registry, audit log and published weights, migrate the database, enrol swarm workers",
    after_help = "Admin commands need the master's admin token. Prefer BASE_ADMIN_TOKEN_FILE (or \
                  --admin-token-file) or the BASE_ADMIN_TOKEN env var over --admin-token: \
                  command-line arguments are visible to every user of the machine in `ps`."
)]
pub struct Cli {
    /// Options every command shares.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares (accepted before or after the subcommand).
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Base URL of the BASE master API.
    #[arg(
        long,
        global = true,
        env = "BASE_MASTER_URL",
        // The URL may carry proxy credentials; `--help` names the variable
        // without echoing its value.
        hide_env_values = true,
        default_value = DEFAULT_MASTER_URL,
        value_parser = parse_master_url,
        value_name = "URL"
    )]
    pub master: Url,

    /// Admin token [env: BASE_ADMIN_TOKEN]. Visible in `ps` when given here:
    /// prefer the env var or --admin-token-file.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        value_parser = parse_secret,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<SecretString>,

    /// File holding the admin token, trailing newline ignored
    /// [env: BASE_ADMIN_TOKEN_FILE]. Takes precedence over BASE_ADMIN_TOKEN.
    #[arg(long, global = true, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// Print the server's JSON (pretty) instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The top-level commands.
// One value is built per process, so the size of the largest variant costs
// nothing worth the boxing that would complicate every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register and manage challenges (admin token required).
    #[command(subcommand)]
    Challenge(ChallengeCommand),
    /// Show the public challenge registry (no token needed).
    Registry,
    /// Show the admin audit log, newest first (admin token required).
    Audit {
        /// Only entries about this challenge.
        #[arg(long, value_name = "SLUG")]
        slug: Option<String>,
        /// At most this many entries (the master caps it at 1000; default 100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Read the weight vector the master publishes (no token needed).
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Control-plane database maintenance (connects to the database directly).
    #[command(subcommand)]
    Db(DbCommand),
    /// Manage the swarm the master runs on (talks to the local Docker
    /// engine, which must be a swarm manager; no master API or token).
    #[command(subcommand)]
    Master(MasterCommand),
    /// Miner tools: sign requests for the upload bridge (no master call).
    #[command(subcommand)]
    Miner(crate::miner::MinerCommand),
}

/// `base master …`.
#[derive(Debug, Subcommand)]
pub enum MasterCommand {
    /// Enrol, label, drain and remove the worker nodes that run evaluation
    /// jobs. Run on a swarm manager.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Install the control plane as Swarm services (dry-run unless --apply).
    Install(Box<crate::install::InstallArgs>),
    /// The installed control plane's services, health and drift.
    Status {
        /// The deployment.
        #[arg(long, default_value = "base")]
        deployment: String,
    },
    /// Rolling update to another control-plane image (rolls back by itself
    /// when the new task fails).
    Upgrade {
        /// The deployment.
        #[arg(long, default_value = "base")]
        deployment: String,
        /// The new image (ID or tag).
        #[arg(long)]
        image: String,
    },
    /// Remove the control-plane services (secrets and data only with their flags).
    Uninstall(crate::install::UninstallArgs),
}

/// `base master worker …`: the swarm's nodes, through the local Docker
/// engine (`DOCKER_HOST` or the local socket).
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Print the `docker swarm join` command a new worker runs, and the
    /// `label` command to run here once it joined.
    #[command(
        long_about = "Print the `docker swarm join --token <TOKEN> <MANAGER_IP>:2377` command a new \
                      worker runs, then the `base master worker label` command to run on this \
                      manager once the node joined.\n\n\
                      The output CONTAINS THE SWARM JOIN TOKEN, which admits any machine that can \
                      reach the manager to the swarm: printing it is this command's purpose, so \
                      do not run it where the output is logged or shared. If it leaked, run \
                      again with --rotate (machines that already joined stay joined)."
    )]
    Token {
        /// The node will take CPU jobs (the default).
        #[arg(long, conflicts_with = "gpu")]
        cpu: bool,
        /// The node will take GPU jobs (its daemon.json must advertise NVIDIA-GPU resources).
        #[arg(long)]
        gpu: bool,
        /// Replace the worker join token first; the old token stops working.
        #[arg(long)]
        rotate: bool,
    },
    /// Set a node's `base.workload` label, which decides which jobs it takes.
    Label {
        /// Node id, unambiguous id prefix, or hostname.
        node: String,
        /// The kind of evaluation job the node takes.
        #[arg(long, value_enum)]
        workload: WorkloadArg,
    },
    /// List the swarm's nodes with their role, state, workload label and GPUs.
    List,
    /// Stop placing tasks on a node and move its running tasks elsewhere
    /// (or, with --active, let it take tasks again).
    Drain {
        /// Node id, unambiguous id prefix, or hostname.
        node: String,
        /// Set the node back to active instead of draining it.
        #[arg(long)]
        active: bool,
    },
    /// Remove a node from the swarm (drain it first; it must be down unless --force).
    Rm {
        /// Node id, unambiguous id prefix, or hostname.
        node: String,
        /// Remove it even if it is still up (it keeps running its containers
        /// outside the swarm until it runs `docker swarm leave`).
        #[arg(long)]
        force: bool,
    },
    /// Show one node in detail.
    Inspect {
        /// Node id, unambiguous id prefix, or hostname.
        node: String,
    },
}

impl WorkerCommand {
    /// The workload chosen by `token --cpu|--gpu` (CPU when neither is given).
    pub fn token_workload(gpu: bool) -> Workload {
        if gpu { Workload::Gpu } else { Workload::Cpu }
    }
}

/// A node workload as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// CPU-only evaluation jobs.
    Cpu,
    /// GPU evaluation jobs.
    Gpu,
}

impl From<WorkloadArg> for Workload {
    fn from(w: WorkloadArg) -> Self {
        match w {
            WorkloadArg::Cpu => Self::Cpu,
            WorkloadArg::Gpu => Self::Gpu,
        }
    }
}

/// `base weights …`.
#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Show the latest published vector (GET /v1/weights/latest): validity,
    /// each uid's weight as a float and as the u16 Bittensor sets, and the
    /// challenges it came from. Fails while no epoch has completed.
    Latest,
    /// Show what a validator's submitter would put on-chain now: the
    /// checks of `base-server submitter` (netuid, expiry, freshness,
    /// lengths) and the exact u16 values. Only `--dry-run` exists here: the
    /// CLI never signs; `base-server submitter` does. With BASE_MASTER_PUBKEY
    /// set, the master's signature is verified first, as the submitter does.
    Submit {
        /// Print, do not submit (required).
        #[arg(long, required = true)]
        dry_run: bool,
        /// The subnet the vector must be for.
        #[arg(long, env = "BASE_NETUID", default_value_t = 100)]
        netuid: u16,
        /// Oldest accepted vector, in seconds since it was computed.
        #[arg(long, default_value_t = 1800)]
        max_age_seconds: u64,
    },
    /// Print the public key of the master's weights signing key
    /// (BASE_WEIGHTS_KEY / BASE_WEIGHTS_KEY_FILE, read locally on the
    /// master's host): what validators set as BASE_MASTER_PUBKEY. Run it
    /// where the key is; nothing secret is printed.
    Pubkey {
        /// TOML settings file, as `base-server --config`; env vars override it.
        #[arg(long, env = "BASE_CONFIG", hide_env_values = true, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// `base db …`.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations to the database named by BASE_DATABASE_URL
    /// (default: the SQLite file in BASE_DATA_DIR outside production).
    Migrate {
        /// TOML settings file, as `base-server --config`; env vars override it.
        #[arg(long, env = "BASE_CONFIG", hide_env_values = true, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// `base challenge …`.
#[derive(Debug, Subcommand)]
pub enum ChallengeCommand {
    /// Register a new challenge; prints its two tokens once.
    Register(RegisterArgs),
    /// List every challenge, drafts included.
    List,
    /// Show one challenge, with the hints of its tokens.
    Show {
        /// The challenge.
        slug: String,
    },
    /// Set a challenge's status to active (public, run and weighted).
    Activate {
        /// The challenge.
        slug: String,
    },
    /// Set a challenge's status to inactive (public, stopped, unweighted).
    Deactivate {
        /// The challenge.
        slug: String,
    },
    /// What the orchestrator reports for the challenge's service now.
    Status {
        /// The challenge.
        slug: String,
    },
    /// Issue new tokens; the old ones stop working at once. Prints them once.
    RotateToken {
        /// The challenge.
        slug: String,
        /// Which token to rotate.
        #[arg(long, value_enum, default_value_t = RotateKind::All)]
        kind: RotateKind,
    },
    /// Change fields of a challenge (maps and lists given here replace the
    /// stored ones as a whole).
    Update(UpdateArgs),
    /// Delete a challenge record and its tokens.
    Delete {
        /// The challenge.
        slug: String,
        /// Also delete the challenge's data volume (default: keep it).
        #[arg(long)]
        purge_volumes: bool,
    },
}

/// Which token `rotate-token` replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RotateKind {
    /// The token the master presents to the challenge.
    Challenge,
    /// The token the challenge presents to the broker.
    #[value(name = "docker_broker", alias = "docker-broker", alias = "broker")]
    DockerBroker,
    /// Both.
    All,
}

impl RotateKind {
    /// The token kind to send, `None` meaning both.
    pub fn token_kind(self) -> Option<TokenKind> {
        match self {
            Self::Challenge => Some(TokenKind::Challenge),
            Self::DockerBroker => Some(TokenKind::DockerBroker),
            Self::All => None,
        }
    }
}

/// A challenge status as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Registered but neither public nor run.
    Draft,
    /// Public, run and weighted.
    Active,
    /// Public but stopped and unweighted.
    Inactive,
    /// Stopped for cause by an operator.
    Disabled,
}

impl From<StatusArg> for ChallengeStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Draft => Self::Draft,
            StatusArg::Active => Self::Active,
            StatusArg::Inactive => Self::Inactive,
            StatusArg::Disabled => Self::Disabled,
        }
    }
}

/// Optional fields shared by `register` and `update`.
#[derive(Debug, Clone, Default, Args)]
pub struct FieldArgs {
    /// Free text shown in the registry.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Relative share of the subnet's emission (>= 0).
    #[arg(long, value_name = "F", value_parser = parse_emission)]
    pub emission_percent: Option<EmissionPercent>,
    /// Lifecycle status.
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Where the master reaches the challenge (default http://challenge-SLUG:8000).
    #[arg(long, value_name = "URL")]
    pub internal_base_url: Option<String>,
    /// Environment variable for the challenge service; repeatable. Values are
    /// visible in `ps`: put secret values in an operator secret (--secret).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// Name of an operator-managed secret mounted into the service; repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Metadata as a JSON object (only display keys such as tagline are public).
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    pub metadata_json: Option<serde_json::Map<String, serde_json::Value>>,
    /// Capability the challenge must advertise before it is ready; repeatable
    /// (default get_weights and proxy_routes).
    #[arg(long = "capability", value_name = "NAME")]
    pub capabilities: Vec<String>,
}

/// `base challenge register`.
#[derive(Debug, Clone, Args)]
pub struct RegisterArgs {
    /// Identifier: lowercase letters, digits and inner dashes; immutable.
    #[arg(long)]
    pub slug: String,
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// Image reference, such as ghcr.io/org/name:1.0.0 (a @sha256: digest may follow).
    #[arg(long)]
    pub image: String,
    /// The challenge's own version (its /version must report it).
    #[arg(long)]
    pub version: String,
    /// The optional fields.
    #[command(flatten)]
    pub fields: FieldArgs,
}

/// `base challenge update`.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// The challenge (slugs cannot change).
    pub slug: String,
    /// New display name.
    #[arg(long)]
    pub name: Option<String>,
    /// New image reference.
    #[arg(long)]
    pub image: Option<String>,
    /// New challenge version.
    #[arg(long)]
    pub version: Option<String>,
    /// The optional fields; `--env`, `--secret`, `--capability` and
    /// `--metadata-json` replace the stored values as a whole.
    #[command(flatten)]
    pub fields: FieldArgs,
    /// Remove every env variable.
    #[arg(long, conflicts_with = "env")]
    pub clear_env: bool,
    /// Remove every secret name.
    #[arg(long, conflicts_with = "secrets")]
    pub clear_secrets: bool,
}

/// Parses `--master`: an absolute http(s) URL with a host. A query or
/// fragment would be silently dropped by every request, so it is refused.
pub fn parse_master_url(raw: &str) -> Result<Url, ArgsError> {
    let url = Url::parse(raw.trim()).map_err(|_| ArgsError::MasterUrl(raw.to_string()))?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.query().is_none()
        && url.fragment().is_none();
    if ok {
        Ok(url)
    } else {
        Err(ArgsError::MasterUrl(raw.to_string()))
    }
}

/// Wraps a secret flag value at once, so `Debug` of [`Cli`] cannot show it.
fn parse_secret(raw: &str) -> Result<SecretString, ArgsError> {
    Ok(SecretString::from(raw.to_string()))
}

/// Parses `--env NAME=VALUE`: splits at the first `=`, so values may contain
/// `=`; the name must be non-empty (the master checks the rest of its rules).
pub fn parse_env_pair(raw: &str) -> Result<(String, String), ArgsError> {
    match raw.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(ArgsError::EnvPair(raw.to_string())),
    }
}

/// Parses `--metadata-json`: a JSON object.
pub fn parse_metadata(raw: &str) -> Result<serde_json::Map<String, serde_json::Value>, ArgsError> {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(ArgsError::Metadata(format!(
            "got a JSON {}",
            json_kind(&other)
        ))),
        Err(e) => Err(ArgsError::Metadata(e.to_string())),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Parses `--emission-percent`: a finite number ≥ 0, checked here so a typo
/// fails before any request is sent.
pub fn parse_emission(raw: &str) -> Result<EmissionPercent, ArgsError> {
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(EmissionPercent(v)),
        _ => Err(ArgsError::Emission(raw.to_string())),
    }
}

/// Collects `--env` pairs; a repeated name is an error rather than "last one
/// wins", because a silently dropped value is hard to notice later.
fn env_map(pairs: &[(String, String)]) -> Result<BTreeMap<String, String>, ArgsError> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            return Err(ArgsError::DuplicateEnv(k.clone()));
        }
    }
    Ok(map)
}

/// Repeatable flags given zero times mean "not given", not "empty".
fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

impl RegisterArgs {
    /// The body of `POST /v1/admin/challenges`.
    pub fn to_request(&self) -> Result<NewChallenge, ArgsError> {
        let f = &self.fields;
        let env = env_map(&f.env)?;
        Ok(NewChallenge {
            slug: self.slug.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            version: self.version.clone(),
            description: f.description.clone(),
            emission_percent: f.emission_percent,
            status: f.status.map(Into::into),
            internal_base_url: f.internal_base_url.clone(),
            required_capabilities: non_empty(&f.capabilities),
            env: (!env.is_empty()).then_some(env),
            secrets: non_empty(&f.secrets),
            metadata: f.metadata_json.clone(),
            ..NewChallenge::default()
        })
    }
}

impl UpdateArgs {
    /// The body of `PATCH /v1/admin/challenges/{slug}`; only the fields given
    /// are sent, so the master leaves every other field as it is.
    pub fn to_patch(&self) -> Result<ChallengePatch, ArgsError> {
        let f = &self.fields;
        let env = env_map(&f.env)?;
        let env = if self.clear_env {
            Some(BTreeMap::new())
        } else {
            (!env.is_empty()).then_some(env)
        };
        let secrets = if self.clear_secrets {
            Some(Vec::new())
        } else {
            non_empty(&f.secrets)
        };
        let patch = ChallengePatch {
            name: self.name.clone(),
            image: self.image.clone(),
            version: self.version.clone(),
            description: f.description.clone(),
            emission_percent: f.emission_percent,
            status: f.status.map(Into::into),
            internal_base_url: f.internal_base_url.clone(),
            required_capabilities: non_empty(&f.capabilities),
            env,
            secrets,
            metadata: f.metadata_json.clone(),
            ..ChallengePatch::default()
        };
        // An empty PATCH would succeed, bump updated_at and write an audit
        // entry for nothing; refusing it catches a forgotten flag instead.
        let empty = serde_json::to_value(&patch)
            .ok()
            .and_then(|v| v.as_object().map(serde_json::Map::is_empty))
            .unwrap_or(false);
        if empty {
            return Err(ArgsError::NothingToUpdate);
        }
        Ok(patch)
    }
}

// Tests may panic on anything unexpected: that is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn env_pairs_need_an_equals_sign_and_a_name() {
        assert_eq!(
            parse_env_pair("K=V").unwrap(),
            ("K".to_string(), "V".to_string())
        );
        assert_eq!(
            parse_env_pair("K=a=b").unwrap(),
            ("K".to_string(), "a=b".to_string())
        );
        assert_eq!(parse_env_pair("K=").unwrap(), ("K".into(), String::new()));
        for bad in ["K", "=V", "", " =V"] {
            assert_eq!(
                parse_env_pair(bad),
                Err(ArgsError::EnvPair(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert_eq!(parse_metadata(r#"{"tagline":"hi"}"#).unwrap().len(), 1);
        for bad in ["[1]", "\"x\"", "{", "null"] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }
        let e = parse_metadata("[1]").unwrap_err().to_string();
        assert!(e.contains("array"), "{e}");
    }

    #[test]
    fn emission_must_be_finite_and_not_negative() {
        assert_eq!(parse_emission("12.5").unwrap(), EmissionPercent(12.5));
        assert_eq!(parse_emission("0").unwrap(), EmissionPercent(0.0));
        for bad in ["-1", "NaN", "inf", "lots"] {
            assert!(parse_emission(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn master_urls_must_be_http_with_a_host() {
        assert!(parse_master_url("http://127.0.0.1:18080").is_ok());
        assert!(parse_master_url("https://base.example.org/prefix/").is_ok());
        for bad in ["127.0.0.1:18080", "ftp://x", "http://x/?a=b", "nonsense"] {
            assert!(parse_master_url(bad).is_err(), "{bad}");
        }
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("base").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn register_flags_become_a_create_body() {
        let cli = parse(&[
            "challenge",
            "register",
            "--slug",
            "quiz",
            "--name",
            "Quiz",
            "--image",
            "ghcr.io/x/quiz:1.0.0",
            "--version",
            "1.0.0",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--secret",
            "s1",
            "--capability",
            "get_weights",
            "--status",
            "active",
            "--emission-percent",
            "40",
            "--metadata-json",
            r#"{"tagline":"t"}"#,
        ]);
        let Command::Challenge(ChallengeCommand::Register(r)) = cli.command else {
            panic!("wrong command");
        };
        let req = r.to_request().unwrap();
        assert_eq!(req.slug, "quiz");
        assert_eq!(req.version, "1.0.0");
        assert_eq!(req.env.unwrap().len(), 2);
        assert_eq!(req.secrets.unwrap(), vec!["s1"]);
        assert_eq!(req.required_capabilities.unwrap(), vec!["get_weights"]);
        assert_eq!(req.status, Some(ChallengeStatus::Active));
        assert_eq!(req.emission_percent, Some(EmissionPercent(40.0)));
        assert!(req.metadata.unwrap().contains_key("tagline"));
        assert!(req.description.is_none());
    }

    #[test]
    fn env_without_equals_is_rejected_by_the_parser() {
        let e = Cli::try_parse_from([
            "base",
            "challenge",
            "register",
            "--slug",
            "ab",
            "--name",
            "n",
            "--image",
            "i",
            "--version",
            "1",
            "--env",
            "K",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("NAME=VALUE"), "{e}");
    }

    #[test]
    fn duplicate_env_names_are_an_error() {
        let cli = parse(&[
            "challenge",
            "update",
            "quiz",
            "--env",
            "A=1",
            "--env",
            "A=2",
        ]);
        let Command::Challenge(ChallengeCommand::Update(u)) = cli.command else {
            panic!("wrong command");
        };
        assert!(matches!(u.to_patch(), Err(ArgsError::DuplicateEnv(k)) if k == "A"));
    }

    #[test]
    fn update_sends_only_what_was_given() {
        let cli = parse(&["challenge", "update", "quiz", "--emission-percent", "5"]);
        let Command::Challenge(ChallengeCommand::Update(u)) = cli.command else {
            panic!("wrong command");
        };
        let body = serde_json::to_value(u.to_patch().unwrap()).unwrap();
        assert_eq!(body, serde_json::json!({"emission_percent": "5.0"}));

        let cli = parse(&["challenge", "update", "quiz", "--clear-env"]);
        let Command::Challenge(ChallengeCommand::Update(u)) = cli.command else {
            panic!("wrong command");
        };
        let body = serde_json::to_value(u.to_patch().unwrap()).unwrap();
        assert_eq!(body, serde_json::json!({"env": {}}));

        let cli = parse(&["challenge", "update", "quiz"]);
        let Command::Challenge(ChallengeCommand::Update(u)) = cli.command else {
            panic!("wrong command");
        };
        assert!(matches!(u.to_patch(), Err(ArgsError::NothingToUpdate)));
    }

    #[test]
    fn rotate_kinds_match_the_api() {
        let cli = parse(&[
            "challenge",
            "rotate-token",
            "quiz",
            "--kind",
            "docker_broker",
        ]);
        let Command::Challenge(ChallengeCommand::RotateToken { kind, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(kind.token_kind(), Some(TokenKind::DockerBroker));
        let cli = parse(&["challenge", "rotate-token", "quiz"]);
        let Command::Challenge(ChallengeCommand::RotateToken { kind, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(kind.token_kind(), None);
    }

    #[test]
    fn weights_submit_is_dry_run_only() {
        let cli = parse(&["weights", "submit", "--dry-run", "--netuid", "7"]);
        let Command::Weights(WeightsCommand::Submit {
            netuid, dry_run, ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert!(dry_run);
        assert_eq!(netuid, 7);
        let e = Cli::try_parse_from(["base", "weights", "submit"]).unwrap_err();
        assert!(e.to_string().contains("--dry-run"), "{e}");
    }

    #[test]
    fn weights_latest_needs_no_other_flag() {
        let cli = parse(&["weights", "latest", "--json"]);
        assert!(matches!(
            cli.command,
            Command::Weights(WeightsCommand::Latest)
        ));
        assert!(cli.global.json);
    }

    #[test]
    fn worker_commands_parse() {
        let cli = parse(&["master", "worker", "token", "--gpu", "--rotate"]);
        let Command::Master(MasterCommand::Worker(WorkerCommand::Token { cpu, gpu, rotate })) =
            cli.command
        else {
            panic!("wrong command");
        };
        assert!(!cpu && gpu && rotate);
        assert_eq!(WorkerCommand::token_workload(gpu), Workload::Gpu);
        assert_eq!(WorkerCommand::token_workload(false), Workload::Cpu);
        assert!(
            Cli::try_parse_from(["base", "master", "worker", "token", "--cpu", "--gpu"]).is_err()
        );

        let cli = parse(&[
            "master",
            "worker",
            "label",
            "n1",
            "--workload",
            "gpu",
            "--json",
        ]);
        let Command::Master(MasterCommand::Worker(WorkerCommand::Label { node, workload })) =
            cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(
            (node.as_str(), Workload::from(workload)),
            ("n1", Workload::Gpu)
        );
        assert!(cli.global.json);
        assert!(
            Cli::try_parse_from([
                "base",
                "master",
                "worker",
                "label",
                "n1",
                "--workload",
                "tpu"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["base", "master", "worker", "label", "n1"]).is_err());

        let cli = parse(&["master", "worker", "drain", "n1", "--active"]);
        assert!(matches!(
            cli.command,
            Command::Master(MasterCommand::Worker(WorkerCommand::Drain {
                active: true,
                ..
            }))
        ));
        let cli = parse(&["master", "worker", "rm", "n1", "--force"]);
        assert!(matches!(
            cli.command,
            Command::Master(MasterCommand::Worker(WorkerCommand::Rm { force: true, .. }))
        ));
        for cmd in [
            &["master", "worker", "list"][..],
            &["master", "worker", "inspect", "n1"],
        ] {
            parse(cmd);
        }
    }

    #[test]
    fn the_token_flag_never_shows_in_debug_output() {
        let cli = parse(&["--admin-token", "hunter2-token", "registry"]);
        assert!(!format!("{cli:?}").contains("hunter2-token"));
    }

    #[test]
    fn token_flag_and_file_conflict() {
        assert!(
            Cli::try_parse_from([
                "base",
                "--admin-token",
                "t",
                "--admin-token-file",
                "/f",
                "registry"
            ])
            .is_err()
        );
    }
}
