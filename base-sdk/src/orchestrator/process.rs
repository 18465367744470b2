//! The `process` orchestrator: challenge services as local child processes.
//!
//! `base-server dev` has to show the whole flow from a fresh clone without
//! Docker, so this orchestrator runs each challenge "image" as a program
//! registered for the image's name in a [`ProgramTable`]. It reproduces the
//! parts of the container contract (CONTRACTS.md §2) that a challenge can
//! observe — a cleared environment holding only the `CHALLENGE_*` variables,
//! tokens delivered as private files, a data directory of its own — so a
//! challenge that works here works under Swarm too. It is not isolation:
//! the children run as the same user on the same host, which is why
//! production policy ([`Environment::is_strict`]) refuses it.
//!
//! Everything lives under the data directory given to
//! [`ProcessOrchestrator::new`]:
//!
//! ```text
//! challenges/<slug>/data/challenge.sqlite3     CHALLENGE_DATABASE_URL
//! challenges/<slug>/secrets/challenge_token    0600, in a 0700 directory
//! challenges/<slug>/secrets/docker_broker_token
//! challenges/<slug>/service.log                the child's stdout and stderr
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::{
    ChallengeSpec, JobLogs, JobSpec, JobStatus, Orchestrator, OrchestratorError, ServiceState,
    ServiceStatus,
};
use crate::config::Environment;
use crate::model::{ImageRef, Slug};

/// How long a stopping child gets between SIGTERM and SIGKILL unless
/// [`ProcessOrchestrator::with_stop_grace`] says otherwise.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// File names inside a challenge's secrets directory; the `CHALLENGE_*_FILE`
/// variables point at them.
const CHALLENGE_TOKEN_FILE: &str = "challenge_token";
const BROKER_TOKEN_FILE: &str = "docker_broker_token";

/// The only variables a child inherits from the orchestrator's own
/// environment: enough to find programs and a home directory, and to keep
/// the developer's logging choice. Everything else (above all
/// `BASE_DATABASE_URL`) is cleared.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE"];

/// Which program runs the services of each image name.
///
/// Keys are image *names* (`registry/repository`, what [`ImageRef::name`]
/// returns): a tag or digest given when registering is dropped, so one entry
/// serves every version of an image. Values are an argv, program first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramTable {
    /// Image name → argv; a `BTreeMap` so `Debug` output and error
    /// messages list names in a stable order.
    programs: BTreeMap<String, Vec<String>>,
}

impl ProgramTable {
    /// An empty table (every image is then unsupported).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `argv` (program, then arguments) as what runs `image`,
    /// replacing an earlier entry. `image` is parsed as an image reference
    /// and only its name is kept. An unparsable reference or an empty argv
    /// is an [`OrchestratorError::InvalidSpec`].
    pub fn insert(
        &mut self,
        image: &str,
        argv: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<(), OrchestratorError> {
        let name = ImageRef::parse(image)
            .map_err(|e| OrchestratorError::InvalidSpec(format!("program table: {e}")))?
            .name();
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err(OrchestratorError::InvalidSpec(format!(
                "program table: the command for image '{name}' is empty"
            )));
        }
        self.programs.insert(name, argv);
        Ok(())
    }

    /// [`insert`](Self::insert) in builder style.
    pub fn with(
        mut self,
        image: &str,
        argv: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, OrchestratorError> {
        self.insert(image, argv)?;
        Ok(self)
    }

    /// The argv registered for `image`'s name, if any.
    pub fn program(&self, image: &ImageRef) -> Option<&[String]> {
        self.programs.get(&image.name()).map(Vec::as_slice)
    }

    /// The registered image names, in order.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.programs.keys().map(String::as_str)
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }
}

/// Runs challenge services as local child processes (development only).
///
/// One mutex guards every service, and it is held while a child is stopped
/// or started: operations on different challenges then wait for each other
/// (up to the stop grace), which is fine for a development tool and rules
/// out two starts of one slug racing each other.
pub struct ProcessOrchestrator {
    /// Absolute, so the paths handed to children stay valid whatever their
    /// working directory.
    data_dir: PathBuf,
    /// What to run for each image name.
    programs: ProgramTable,
    /// Time between SIGTERM and SIGKILL when stopping a child.
    stop_grace: Duration,
    /// The services this orchestrator started, including exited ones (they
    /// report `Failed` until the next ensure restarts them).
    services: Mutex<HashMap<Slug, Managed>>,
    /// Set by [`shutdown`](Self::shutdown) so a reconciler tick racing the
    /// shutdown cannot start a child nobody will stop.
    shut_down: AtomicBool,
}

/// One child process and what it was started from.
struct Managed {
    /// The running (or exited, not yet restarted) child.
    child: Child,
    /// The pid, kept because `Child::id` forgets it once the child is
    /// reaped, and because it is the child's process group id too.
    pid: Option<u32>,
    /// [`fingerprint`] of the spec it was started from.
    fingerprint: [u8; 32],
    /// The image reference, for status reports.
    image: String,
    /// The loopback port given in `CHALLENGE_LISTEN`.
    port: u16,
    /// Where its output goes, named in failure messages.
    log: PathBuf,
    /// When it was started.
    started_at: DateTime<Utc>,
    /// The exit status once observed (`try_wait` only reports it once the
    /// child is reaped, so it is remembered here).
    exit: Option<ExitStatus>,
}

impl Managed {
    /// The exit status if the child has exited, polling without blocking.
    fn poll(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// The status to report for this child.
    fn status(&mut self, slug: &Slug) -> ServiceStatus {
        let (state, message) = match self.poll() {
            Ok(None) => (ServiceState::Running, None),
            Ok(Some(exit)) => (
                ServiceState::Failed,
                Some(format!(
                    "process exited ({exit}); its output is in {}",
                    self.log.display()
                )),
            ),
            // Treating an unobservable child as failed makes the next ensure
            // replace it, which is the useful outcome.
            Err(e) => (
                ServiceState::Failed,
                Some(format!("cannot observe the process: {e}")),
            ),
        };
        ServiceStatus {
            slug: slug.clone(),
            state,
            image: Some(self.image.clone()),
            endpoint: Some(format!("http://{}:{}", Ipv4Addr::LOCALHOST, self.port)),
            message,
            started_at: Some(self.started_at),
        }
    }
}

/// Where one challenge's files live.
#[derive(Debug, Clone)]
struct ChallengePaths {
    /// `challenges/<slug>`; removed entirely by a purge.
    root: PathBuf,
    /// `challenges/<slug>/data`, the counterpart of the `/data` volume.
    data: PathBuf,
    /// `challenges/<slug>/secrets`, the counterpart of `/run/secrets/base`.
    secrets: PathBuf,
    /// `challenges/<slug>/service.log`.
    log: PathBuf,
}

impl ChallengePaths {
    fn new(data_dir: &Path, slug: &Slug) -> Self {
        // A slug is `[a-z0-9-]` only, so it cannot climb out of `challenges/`.
        let root = data_dir.join("challenges").join(slug.as_str());
        Self {
            data: root.join("data"),
            secrets: root.join("secrets"),
            log: root.join("service.log"),
            root,
        }
    }
}

impl ProcessOrchestrator {
    /// An orchestrator keeping its files under `data_dir` (made absolute
    /// against the current directory; created on first use) and running the
    /// programs of `programs`.
    ///
    /// Refused ([`OrchestratorError::Refused`]) when `environment` applies
    /// production policy: local processes share the host and the user, so
    /// they are no place for untrusted challenge code.
    pub fn new(
        environment: Environment,
        data_dir: PathBuf,
        programs: ProgramTable,
    ) -> Result<Self, OrchestratorError> {
        if environment.is_strict() {
            return Err(OrchestratorError::Refused(format!(
                "the process orchestrator is for development only; the {} environment \
                 requires the swarm orchestrator",
                environment.as_str()
            )));
        }
        let data_dir = std::path::absolute(&data_dir).map_err(|source| OrchestratorError::Io {
            context: format!("resolving data directory {}", data_dir.display()),
            source,
        })?;
        Ok(Self {
            data_dir,
            programs,
            stop_grace: DEFAULT_STOP_GRACE,
            services: Mutex::new(HashMap::new()),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Sets the time a stopping child gets between SIGTERM and SIGKILL
    /// (default [`DEFAULT_STOP_GRACE`]).
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The absolute data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the output of `slug`'s service goes (so `dev` can point at it).
    pub fn log_path(&self, slug: &Slug) -> PathBuf {
        ChallengePaths::new(&self.data_dir, slug).log
    }

    /// Stops every child (SIGTERM, then SIGKILL after the stop grace, all
    /// concurrently), deletes their secrets directories and refuses further
    /// starts. Data is kept. Failures are logged, not returned: there is
    /// nothing a caller that is exiting could do about them.
    ///
    /// Dropping the orchestrator without calling this still kills the
    /// children (SIGKILL, no grace), as a backstop.
    pub async fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        let mut services = self.services.lock().await;
        let grace = self.stop_grace;
        futures::future::join_all(services.values_mut().map(|m| stop(m, grace))).await;
        for (slug, _) in services.drain() {
            let secrets = ChallengePaths::new(&self.data_dir, &slug).secrets;
            if let Err(e) = run_blocking(move || remove_dir_if_exists(&secrets)).await {
                tracing::warn!(slug = %slug, error = %e, "cannot delete secrets directory");
            }
        }
        tracing::info!("process orchestrator shut down");
    }

    /// Starts a child for `spec` (the caller holds the services lock and
    /// has stopped any previous child of the slug).
    async fn start(
        &self,
        spec: &ChallengeSpec,
        argv: &[String],
        fingerprint: [u8; 32],
    ) -> Result<Managed, OrchestratorError> {
        let Some((program, args)) = argv.split_first() else {
            // ProgramTable::insert refuses empty commands; kept as an error
            // rather than a panic all the same.
            return Err(OrchestratorError::InvalidSpec(format!(
                "the command for image '{}' is empty",
                spec.image.name()
            )));
        };
        let paths = ChallengePaths::new(&self.data_dir, &spec.slug);
        let port = pick_port()?;
        let header = format!(
            "=== {} base: starting challenge '{}' ({}, version {}) on 127.0.0.1:{port} ===\n",
            Utc::now().to_rfc3339(),
            spec.slug,
            spec.image,
            spec.version,
        );
        let tokens = [
            (CHALLENGE_TOKEN_FILE, spec.secrets.challenge_token.clone()),
            (BROKER_TOKEN_FILE, spec.secrets.broker_token.clone()),
        ];
        let prepared = paths.clone();
        let (stdout, stderr) = run_blocking(move || prepare(&prepared, &tokens, &header)).await?;

        let mut cmd = Command::new(program);
        cmd.args(args).env_clear();
        for key in INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        // The record's env goes before the platform's variables so that,
        // even if a reserved name slipped past validation, the platform wins.
        cmd.envs(&spec.env);
        cmd.envs(challenge_env(spec, &paths, port));
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // The backstop: children die with the orchestrator even if
            // `shutdown` is never called.
            .kill_on_drop(true);
        // Its own process group, so stopping it also reaches whatever it
        // spawned (a shell wrapper's children, worker processes).
        #[cfg(unix)]
        cmd.process_group(0);

        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                // Nothing will read the token files now; do not leave them.
                let secrets = paths.secrets.clone();
                if let Err(e) = run_blocking(move || remove_dir_if_exists(&secrets)).await {
                    tracing::warn!(slug = %spec.slug, error = %e, "cannot delete secrets directory");
                }
                return Err(OrchestratorError::Io {
                    context: format!("starting '{program}' for challenge '{}'", spec.slug),
                    source,
                });
            }
        };
        let pid = child.id();
        // Neither env values nor tokens are logged: both may be sensitive.
        tracing::info!(
            slug = %spec.slug,
            image = %spec.image,
            version = %spec.version,
            pid,
            port,
            log = %paths.log.display(),
            "started challenge service process"
        );
        Ok(Managed {
            child,
            pid,
            fingerprint,
            image: spec.image.to_string(),
            port,
            log: paths.log,
            started_at: crate::model::now(),
            exit: None,
        })
    }
}

impl fmt::Debug for ProcessOrchestrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The services sit behind an async mutex; they are left out rather
        // than locked from a formatter.
        f.debug_struct("ProcessOrchestrator")
            .field("data_dir", &self.data_dir)
            .field("programs", &self.programs)
            .field("stop_grace", &self.stop_grace)
            .finish_non_exhaustive()
    }
}

impl Drop for ProcessOrchestrator {
    fn drop(&mut self) {
        // `kill_on_drop` kills each child when the map is dropped right after
        // this; what it cannot reach is the child's own children, so their
        // process groups get a SIGKILL here. Only groups whose leader is
        // still unreaped are signalled: its pid cannot have been reused.
        #[cfg(unix)]
        for managed in self.services.get_mut().values_mut() {
            if let (Ok(None), Some(pid)) = (managed.poll(), managed.pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

#[async_trait]
impl Orchestrator for ProcessOrchestrator {
    fn name(&self) -> &'static str {
        "process"
    }

    /// Returns the running child's status when its spec is unchanged;
    /// otherwise (absent, exited, or changed image, version, env,
    /// resources, broker URL or tokens) stops any old child and starts a new
    /// one on a fresh loopback port. `resources` are not enforced here, but
    /// a change still restarts, as it would under Swarm.
    async fn ensure_challenge(
        &self,
        spec: &ChallengeSpec,
    ) -> Result<ServiceStatus, OrchestratorError> {
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(OrchestratorError::Refused(
                "the process orchestrator has been shut down".to_string(),
            ));
        }
        check_env(&spec.env)?;
        let argv = self
            .programs
            .program(&spec.image)
            .ok_or_else(|| unsupported(&spec.image))?;
        let fingerprint = fingerprint(spec);

        let mut services = self.services.lock().await;
        if let Some(old) = services.get_mut(&spec.slug) {
            let status = old.status(&spec.slug);
            let running = status.state == ServiceState::Running;
            if running && old.fingerprint == fingerprint {
                return Ok(status);
            }
            tracing::info!(
                slug = %spec.slug,
                reason = if running { "spec changed" } else { "process exited" },
                "restarting challenge service process"
            );
            stop(old, self.stop_grace).await;
            services.remove(&spec.slug);
        }
        let mut managed = self.start(spec, argv, fingerprint).await?;
        let status = managed.status(&spec.slug);
        services.insert(spec.slug.clone(), managed);
        Ok(status)
    }

    /// Stops the child (SIGTERM, SIGKILL after the stop grace) and forgets
    /// it. Without `purge_data` the data directory and log are kept and only
    /// the secrets directory is deleted, so no token file lingers; with it
    /// `challenges/<slug>` goes entirely. Removing a slug this orchestrator
    /// does not know is not an error (the call is idempotent), and its files
    /// are cleaned up all the same (left over from an earlier run).
    async fn remove_challenge(
        &self,
        slug: &Slug,
        purge_data: bool,
    ) -> Result<(), OrchestratorError> {
        // The lock is held through the file clean-up so that a concurrent
        // ensure cannot start a child whose token files are then deleted.
        let mut services = self.services.lock().await;
        if let Some(mut managed) = services.remove(slug) {
            stop(&mut managed, self.stop_grace).await;
            tracing::info!(slug = %slug, purge_data, "removed challenge service process");
        }
        let paths = ChallengePaths::new(&self.data_dir, slug);
        let target = if purge_data {
            paths.root
        } else {
            paths.secrets
        };
        run_blocking(move || remove_dir_if_exists(&target)).await
    }

    async fn challenge_status(&self, slug: &Slug) -> Result<ServiceStatus, OrchestratorError> {
        let mut services = self.services.lock().await;
        Ok(match services.get_mut(slug) {
            Some(managed) => managed.status(slug),
            None => ServiceStatus {
                slug: slug.clone(),
                state: ServiceState::Missing,
                image: None,
                endpoint: None,
                message: None,
                started_at: None,
            },
        })
    }

    async fn list_challenges(&self) -> Result<Vec<ServiceStatus>, OrchestratorError> {
        let mut services = self.services.lock().await;
        let mut all: Vec<ServiceStatus> = services
            .iter_mut()
            .map(|(slug, managed)| managed.status(slug))
            .collect();
        all.sort_by(|a, b| a.slug.cmp(&b.slug));
        Ok(all)
    }

    async fn run_job(&self, spec: &JobSpec) -> Result<JobStatus, OrchestratorError> {
        Err(jobs_unsupported(&spec.id))
    }

    async fn job_status(&self, id: &str) -> Result<JobStatus, OrchestratorError> {
        Err(jobs_unsupported(id))
    }

    async fn wait_job(&self, id: &str, _timeout: Duration) -> Result<JobStatus, OrchestratorError> {
        Err(jobs_unsupported(id))
    }

    async fn job_logs(&self, id: &str, _max_bytes: usize) -> Result<JobLogs, OrchestratorError> {
        Err(jobs_unsupported(id))
    }

    async fn remove_job(&self, id: &str) -> Result<(), OrchestratorError> {
        Err(jobs_unsupported(id))
    }

    async fn list_jobs(&self, _slug: Option<Slug>) -> Result<Vec<JobStatus>, OrchestratorError> {
        Ok(Vec::new())
    }
}

fn jobs_unsupported(id: &str) -> OrchestratorError {
    OrchestratorError::Refused(format!("job '{id}': the process orchestrator does not run jobs yet"))
}

/// The error for an image with no registered program.
fn unsupported(image: &ImageRef) -> OrchestratorError {
    let name = image.name();
    OrchestratorError::UnsupportedImage {
        image: image.to_string(),
        reason: format!(
            "the process orchestrator runs programs, not images, and none is registered for \
             '{name}'; register one with ProgramTable::insert(\"{name}\", [program, args…]) \
             before creating the orchestrator, or use the swarm orchestrator"
        ),
    }
}

/// Refuses env names a child must not be given. The registry refuses them
/// already; this is the second line, because a mistake here would hand a
/// challenge the control plane's settings.
fn check_env(env: &BTreeMap<String, String>) -> Result<(), OrchestratorError> {
    for key in env.keys() {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(OrchestratorError::InvalidSpec(format!(
                "env name '{}' is not a valid variable name",
                key.escape_debug()
            )));
        }
        if key.starts_with("BASE_") || key.starts_with("CHALLENGE_") {
            return Err(OrchestratorError::InvalidSpec(format!(
                "env name '{key}' is reserved: BASE_* and CHALLENGE_* are set by the platform"
            )));
        }
    }
    Ok(())
}

/// The `CHALLENGE_*` variables of CONTRACTS.md §2 for a child listening on
/// `127.0.0.1:port`. Tokens are never values here, only file paths.
fn challenge_env(
    spec: &ChallengeSpec,
    paths: &ChallengePaths,
    port: u16,
) -> Vec<(&'static str, OsString)> {
    // SQLAlchemy form: `sqlite+aiosqlite:///` followed by the path; the
    // absolute path's own leading slash makes the fourth one.
    let mut database_url = OsString::from("sqlite+aiosqlite:///");
    database_url.push(paths.data.join("challenge.sqlite3"));
    let mut env = vec![
        ("CHALLENGE_SLUG", OsString::from(spec.slug.as_str())),
        (
            "CHALLENGE_LISTEN",
            OsString::from(format!("{}:{port}", Ipv4Addr::LOCALHOST)),
        ),
        ("CHALLENGE_DATABASE_URL", database_url),
        (
            "CHALLENGE_SHARED_TOKEN_FILE",
            paths.secrets.join(CHALLENGE_TOKEN_FILE).into_os_string(),
        ),
        (
            "CHALLENGE_DOCKER_BROKER_TOKEN_FILE",
            paths.secrets.join(BROKER_TOKEN_FILE).into_os_string(),
        ),
        ("CHALLENGE_VERSION", OsString::from(&spec.version)),
    ];
    if let Some(url) = &spec.broker_url {
        env.push(("CHALLENGE_DOCKER_BROKER_URL", OsString::from(url)));
    }
    env
}

/// A digest of everything that, when changed, requires a restart: image,
/// version, env, resources, broker URL and both tokens. Every field is
/// length-prefixed so that no two different specs encode alike; the tokens
/// enter only through the hash, so no cleartext is kept.
fn fingerprint(spec: &ChallengeSpec) -> [u8; 32] {
    fn put(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    }
    fn put_map(hasher: &mut Sha256, map: &BTreeMap<String, String>) {
        hasher.update((map.len() as u64).to_be_bytes());
        for (k, v) in map {
            put(hasher, k.as_bytes());
            put(hasher, v.as_bytes());
        }
    }
    let mut h = Sha256::new();
    put(&mut h, b"base.process-orchestrator.spec.v1");
    put(&mut h, spec.image.to_string().as_bytes());
    put(&mut h, spec.version.as_bytes());
    put_map(&mut h, &spec.env);
    put_map(&mut h, &spec.resources);
    match &spec.broker_url {
        Some(url) => {
            h.update([1]);
            put(&mut h, url.as_bytes());
        }
        None => h.update([0]),
    }
    put(
        &mut h,
        spec.secrets.challenge_token.expose_secret().as_bytes(),
    );
    put(&mut h, spec.secrets.broker_token.expose_secret().as_bytes());
    h.finalize().into()
}

/// A free loopback port: bind port 0, read what the kernel chose, let it go.
/// Another process could take it before the child binds; on a development
/// machine that is rare, and the child then exits and reports `Failed`, so
/// the next ensure picks another port.
fn pick_port() -> Result<u16, OrchestratorError> {
    let io = |source| OrchestratorError::Io {
        context: "choosing a free loopback port".to_string(),
        source,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// Creates the challenge's directories, writes its token files and opens
/// its log (twice: for stdout and stderr). Blocking; run off the runtime.
fn prepare(
    paths: &ChallengePaths,
    tokens: &[(&str, SecretString)],
    header: &str,
) -> Result<(File, File), OrchestratorError> {
    let io = |context: String| move |source| OrchestratorError::Io { context, source };
    std::fs::create_dir_all(&paths.data)
        .map_err(io(format!("creating {}", paths.data.display())))?;
    create_private_dir(&paths.secrets)
        .map_err(io(format!("creating {}", paths.secrets.display())))?;
    for (name, token) in tokens {
        let path = paths.secrets.join(name);
        write_private_file(&path, token.expose_secret().as_bytes())
            .map_err(io(format!("writing secret file {}", path.display())))?;
    }
    let log_context = || format!("opening {}", paths.log.display());
    let mut stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(io(log_context()))?;
    stdout
        .write_all(header.as_bytes())
        .map_err(io(log_context()))?;
    let stderr = stdout.try_clone().map_err(io(log_context()))?;
    Ok((stdout, stderr))
}

/// `dir` (with missing parents) as a directory only its owner can enter,
/// tightening it if it already existed looser.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `contents` to `path` readable by its owner only, atomically: a
/// fresh temporary file in the same directory (mode 0600 from creation, so
/// the secret is never readable by others even briefly), then a rename, so
/// a running reader sees the old token or the new one, never half of one.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Deletes `dir` and everything in it; already absent is fine.
fn remove_dir_if_exists(dir: &Path) -> Result<(), OrchestratorError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OrchestratorError::Io {
            context: format!("deleting {}", dir.display()),
            source,
        }),
    }
}

/// Runs blocking file-system work on tokio's blocking pool.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, OrchestratorError> + Send + 'static,
) -> Result<T, OrchestratorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OrchestratorError::Backend(format!("file-system task failed: {e}")))?
}

/// Stops a child: SIGTERM to its process group, up to `grace` for it to
/// exit, then SIGKILL to the group and the child. Never fails: a child that
/// cannot be signalled is reported and then left to `kill_on_drop`.
async fn stop(managed: &mut Managed, grace: Duration) {
    match managed.poll() {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(pid = managed.pid, error = %e, "cannot observe child before stopping it")
        }
    }
    // The leader is unreaped at this point, so its pid (= the group id)
    // cannot have been reused and signalling the group is safe.
    let terminated = match managed.pid {
        Some(pid) => match signal_group(pid, "TERM").await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot send SIGTERM; killing instead");
                false
            }
        },
        None => false,
    };
    if terminated {
        match tokio::time::timeout(grace, managed.child.wait()).await {
            Ok(Ok(status)) => {
                managed.exit = Some(status);
                return;
            }
            Ok(Err(e)) => tracing::warn!(pid = managed.pid, error = %e, "cannot wait for child"),
            Err(_) => tracing::warn!(
                pid = managed.pid,
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "child ignored SIGTERM; killing it"
            ),
        }
    }
    if let Some(pid) = managed.pid {
        // Best effort: the group may already be gone.
        let _ = signal_group(pid, "KILL").await;
    }
    if let Err(e) = managed.child.start_kill() {
        tracing::debug!(pid = managed.pid, error = %e, "start_kill failed (already exited?)");
    }
    match managed.child.wait().await {
        Ok(status) => managed.exit = Some(status),
        Err(e) => tracing::warn!(pid = managed.pid, error = %e, "cannot wait for killed child"),
    }
}

/// Sends `signal` (a name such as `TERM`) to the process group `pgid`.
///
/// The workspace forbids unsafe code, so there is no `kill(2)` through
/// libc; `kill(1)` does the same job at the cost of a short-lived process,
/// which is nothing next to a service restart. A negative id names the
/// group.
#[cfg(unix)]
async fn signal_group(pgid: u32, signal: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{signal} -- -{pgid} failed ({status})"
        )))
    }
}

/// Without process groups or signals there is no graceful stop; the
/// caller falls back to killing the child.
#[cfg(not(unix))]
async fn signal_group(_pgid: u32, _signal: &str) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "signals are not supported on this platform",
    ))
}

// The tests drive real processes with sh, sleep and kill(1): Unix only.
#[cfg(all(test, unix))]
// Tests may unwrap: a panic is the failure report.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::orchestrator::ChallengeSecrets;

    const IMAGE: &str = "ghcr.io/base/sleeper:1.0";

    fn slug(s: &str) -> Slug {
        Slug::parse(s).unwrap()
    }

    fn spec(slug_name: &str, image: &str) -> ChallengeSpec {
        ChallengeSpec {
            slug: slug(slug_name),
            image: ImageRef::parse(image).unwrap(),
            version: "1.0.0".to_string(),
            env: BTreeMap::from([("GREETING".to_string(), "hello world".to_string())]),
            resources: BTreeMap::from([("cpus".to_string(), "1".to_string())]),
            secrets: ChallengeSecrets {
                challenge_token: SecretString::from("challenge-token-cleartext-1234"),
                broker_token: SecretString::from("broker-token-cleartext-5678"),
            },
            broker_url: Some("http://127.0.0.1:18081".to_string()),
        }
    }

    fn orchestrator(dir: &Path, programs: ProgramTable) -> ProcessOrchestrator {
        ProcessOrchestrator::new(Environment::Development, dir.to_path_buf(), programs)
            .unwrap()
            .with_stop_grace(Duration::from_secs(2))
    }

    /// `sleep 30` for [`IMAGE`]: a child that stays up until stopped.
    fn sleeper(dir: &Path) -> ProcessOrchestrator {
        orchestrator(
            dir,
            ProgramTable::new().with(IMAGE, ["sleep", "30"]).unwrap(),
        )
    }

    fn alive(pid: u32) -> bool {
        std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    async fn pid_of(o: &ProcessOrchestrator, s: &Slug) -> u32 {
        o.services.lock().await.get(s).unwrap().pid.unwrap()
    }

    /// A child's initial environment, from /proc (exactly what it was given).
    #[cfg(target_os = "linux")]
    fn environ(pid: u32) -> BTreeMap<String, String> {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        raw.split(|b| *b == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let text = String::from_utf8(entry.to_vec()).unwrap();
                let (k, v) = text.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("condition not reached in 5 s");
    }

    #[test]
    fn refused_under_production_policy() {
        for env in [Environment::Production, Environment::Staging] {
            let err = ProcessOrchestrator::new(env, PathBuf::from("/tmp/x"), ProgramTable::new())
                .unwrap_err();
            assert!(
                matches!(&err, OrchestratorError::Refused(m) if m.contains("development only")),
                "{err}"
            );
        }
    }

    #[test]
    fn program_table_keys_on_the_image_name() {
        let table = ProgramTable::new()
            .with(
                &format!("ghcr.io/base/quiz:0.1@sha256:{}", "a".repeat(64)),
                ["quiz"],
            )
            .unwrap();
        assert_eq!(table.images().collect::<Vec<_>>(), ["ghcr.io/base/quiz"]);
        let other_tag = ImageRef::parse("ghcr.io/base/quiz:9.9").unwrap();
        assert_eq!(table.program(&other_tag), Some(&["quiz".to_string()][..]));
        assert!(
            table
                .program(&ImageRef::parse("base/quiz").unwrap())
                .is_none()
        );
        assert!(
            ProgramTable::new()
                .with("base/quiz", Vec::<String>::new())
                .is_err()
        );
        assert!(ProgramTable::new().with("base/quiz", [""]).is_err());
        assert!(ProgramTable::new().with("Not An Image", ["x"]).is_err());
    }

    #[tokio::test]
    async fn unsupported_image_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let err = o
            .ensure_challenge(&spec("quiz", "ghcr.io/base/other:1.0"))
            .await
            .unwrap_err();
        match err {
            OrchestratorError::UnsupportedImage { image, reason } => {
                assert_eq!(image, "ghcr.io/base/other:1.0");
                assert!(
                    reason.contains("ProgramTable::insert(\"ghcr.io/base/other\""),
                    "{reason}"
                );
            }
            other => panic!("unexpected {other}"),
        }
        assert_eq!(
            o.challenge_status(&slug("quiz")).await.unwrap().state,
            ServiceState::Missing
        );
    }

    #[tokio::test]
    async fn reserved_env_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let mut s = spec("quiz", IMAGE);
        s.env
            .insert("BASE_DATABASE_URL".into(), "postgres://x".into());
        let err = o.ensure_challenge(&s).await.unwrap_err();
        assert!(matches!(err, OrchestratorError::InvalidSpec(_)), "{err}");
        assert!(
            !err.to_string().contains("postgres://x"),
            "values are not echoed"
        );
    }

    #[test]
    fn fingerprint_covers_the_spec_and_hides_tokens() {
        let base = spec("quiz", IMAGE);
        let fp = fingerprint(&base);
        assert_eq!(fp, fingerprint(&base.clone()));
        let variants: &[fn(&mut ChallengeSpec)] = &[
            |s| s.version = "1.0.1".into(),
            |s| s.image = ImageRef::parse("ghcr.io/base/sleeper:1.1").unwrap(),
            |s| {
                s.env.insert("MORE".into(), "x".into());
            },
            |s| {
                s.resources.insert("memory".into(), "1g".into());
            },
            |s| s.broker_url = None,
            |s| s.secrets.challenge_token = SecretString::from("rotated"),
            |s| s.secrets.broker_token = SecretString::from("rotated"),
            // Same bytes, different split between fields.
            |s| {
                s.env = BTreeMap::from([("GREETINGh".into(), "ello world".into())]);
            },
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(fingerprint(&changed), fp, "variant {i}");
        }
    }

    /// Run in a re-executed test binary whose environment holds a
    /// `BASE_DATABASE_URL` (safe Rust cannot set one in this process); a
    /// no-op when run directly.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    #[ignore = "run by child_environment_is_exactly_the_contract through a re-exec"]
    async fn child_environment_inner() {
        if std::env::var_os("BASE_PROCESS_ORCH_REEXEC").is_none() {
            return;
        }
        assert_eq!(
            std::env::var("BASE_DATABASE_URL").unwrap(),
            "postgres://control-plane-secret@db/base"
        );
        check_child_environment().await;
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn child_environment_is_exactly_the_contract() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "orchestrator::process::tests::child_environment_inner",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "BASE_DATABASE_URL",
                "postgres://control-plane-secret@db/base",
            )
            .env("BASE_PROCESS_ORCH_REEXEC", "1")
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "inner test failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Guard against the filter matching nothing and passing vacuously.
        assert!(String::from_utf8_lossy(&output.stdout).contains("1 passed"));
    }

    #[cfg(target_os = "linux")]
    async fn check_child_environment() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let s = spec("quiz", IMAGE);
        let status = o.ensure_challenge(&s).await.unwrap();
        assert_eq!(status.state, ServiceState::Running);
        let endpoint = status.endpoint.unwrap();
        let port = endpoint.strip_prefix("http://127.0.0.1:").unwrap();
        let pid = pid_of(&o, &s.slug).await;

        let root = o.data_dir().join("challenges/quiz");
        let secrets = root.join("secrets");
        let mut expected = BTreeMap::from([
            ("GREETING".to_string(), "hello world".to_string()),
            ("CHALLENGE_SLUG".to_string(), "quiz".to_string()),
            ("CHALLENGE_LISTEN".to_string(), format!("127.0.0.1:{port}")),
            (
                "CHALLENGE_DATABASE_URL".to_string(),
                format!(
                    "sqlite+aiosqlite:///{}",
                    root.join("data/challenge.sqlite3").display()
                ),
            ),
            (
                "CHALLENGE_SHARED_TOKEN_FILE".to_string(),
                secrets.join("challenge_token").display().to_string(),
            ),
            (
                "CHALLENGE_DOCKER_BROKER_TOKEN_FILE".to_string(),
                secrets.join("docker_broker_token").display().to_string(),
            ),
            (
                "CHALLENGE_DOCKER_BROKER_URL".to_string(),
                "http://127.0.0.1:18081".to_string(),
            ),
            ("CHALLENGE_VERSION".to_string(), "1.0.0".to_string()),
        ]);
        for key in INHERITED_ENV {
            if let Ok(v) = std::env::var(key) {
                expected.insert((*key).to_string(), v);
            }
        }
        assert!(
            expected.contains_key("RUST_LOG"),
            "the re-exec sets RUST_LOG"
        );
        let actual = environ(pid);
        // Names first, so a failure does not print unrelated values of the
        // test process's own environment into CI logs.
        assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        assert_eq!(actual, expected);
        assert!(actual["CHALLENGE_DATABASE_URL"].starts_with("sqlite+aiosqlite:////"));
        assert!(!actual.contains_key("BASE_DATABASE_URL"));

        // Tokens: only in files, 0600 in a 0700 directory, exact contents.
        assert_eq!(mode(&secrets), 0o700);
        for (file, token) in [
            ("challenge_token", "challenge-token-cleartext-1234"),
            ("docker_broker_token", "broker-token-cleartext-5678"),
        ] {
            let path = secrets.join(file);
            assert_eq!(mode(&path), 0o600);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
            assert!(actual.values().all(|v| !v.contains(token)));
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(cmdline, b"sleep\x0030\x00");
        // No temporary files left beside the tokens.
        let mut names: Vec<_> = std::fs::read_dir(&secrets)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["challenge_token", "docker_broker_token"]);
        assert!(root.join("data").is_dir());
        assert!(!format!("{o:?}").contains("cleartext"));
        o.shutdown().await;
    }

    #[tokio::test]
    async fn same_spec_keeps_the_process_and_a_change_restarts_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let s = spec("quiz", IMAGE);
        let first = o.ensure_challenge(&s).await.unwrap();
        let pid = pid_of(&o, &s.slug).await;
        let again = o.ensure_challenge(&s.clone()).await.unwrap();
        assert_eq!(pid_of(&o, &s.slug).await, pid, "same spec: no restart");
        assert_eq!(again, first);

        let mut bumped = s.clone();
        bumped.version = "1.0.1".into();
        let restarted = o.ensure_challenge(&bumped).await.unwrap();
        let new_pid = pid_of(&o, &s.slug).await;
        assert_ne!(new_pid, pid, "changed spec: restart");
        assert!(!alive(pid), "the old child is stopped");
        assert_eq!(restarted.state, ServiceState::Running);

        // A token rotation restarts too, and the file holds the new token.
        let mut rotated = bumped.clone();
        rotated.secrets.challenge_token = SecretString::from("rotated-token");
        o.ensure_challenge(&rotated).await.unwrap();
        assert_ne!(pid_of(&o, &s.slug).await, new_pid);
        let token = dir.path().join("challenges/quiz/secrets/challenge_token");
        assert_eq!(std::fs::read_to_string(token).unwrap(), "rotated-token");
        o.shutdown().await;
    }

    #[tokio::test]
    async fn a_killed_child_is_failed_and_the_next_ensure_restarts_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let s = spec("quiz", IMAGE);
        o.ensure_challenge(&s).await.unwrap();
        let pid = pid_of(&o, &s.slug).await;
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());

        let mut status = o.challenge_status(&s.slug).await.unwrap();
        for _ in 0..200 {
            if status.state == ServiceState::Failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            status = o.challenge_status(&s.slug).await.unwrap();
        }
        assert_eq!(status.state, ServiceState::Failed);
        let message = status.message.unwrap();
        assert!(
            message.contains("SIGKILL") || message.contains("signal"),
            "{message}"
        );
        assert!(message.contains("service.log"), "{message}");
        let listed = o.list_challenges().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, ServiceState::Failed);

        let restarted = o.ensure_challenge(&s).await.unwrap();
        assert_eq!(restarted.state, ServiceState::Running);
        let new_pid = pid_of(&o, &s.slug).await;
        assert_ne!(new_pid, pid);
        assert!(alive(new_pid));
        o.shutdown().await;
    }

    #[tokio::test]
    async fn remove_keeps_data_unless_purged() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let s = spec("quiz", IMAGE);
        let root = dir.path().join("challenges/quiz");

        o.ensure_challenge(&s).await.unwrap();
        let pid = pid_of(&o, &s.slug).await;
        std::fs::write(root.join("data/challenge.sqlite3"), b"rows").unwrap();
        o.remove_challenge(&s.slug, false).await.unwrap();
        assert!(!alive(pid));
        assert_eq!(
            o.challenge_status(&s.slug).await.unwrap().state,
            ServiceState::Missing
        );
        assert!(o.list_challenges().await.unwrap().is_empty());
        assert_eq!(
            std::fs::read(root.join("data/challenge.sqlite3")).unwrap(),
            b"rows"
        );
        assert!(root.join("service.log").is_file());
        assert!(!root.join("secrets").exists(), "no token file lingers");

        // Data survives into the next start.
        o.ensure_challenge(&s).await.unwrap();
        assert!(root.join("data/challenge.sqlite3").is_file());
        o.remove_challenge(&s.slug, true).await.unwrap();
        assert!(!root.exists(), "purged");

        // Idempotent.
        o.remove_challenge(&s.slug, true).await.unwrap();
        o.remove_challenge(&slug("never-seen"), false)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn stop_reaches_grandchildren_and_escalates_to_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        // The shell ignores SIGTERM and keeps a background grandchild whose
        // pid it records in its data directory.
        let script = r#"trap '' TERM
data="${CHALLENGE_SHARED_TOKEN_FILE%/secrets/*}/data"
sleep 30 & echo $! > "$data/grandchild.pid"
while :; do sleep 1; done"#;
        let o = orchestrator(
            dir.path(),
            ProgramTable::new()
                .with(IMAGE, ["/bin/sh", "-c", script])
                .unwrap(),
        )
        .with_stop_grace(Duration::from_millis(300));
        let s = spec("quiz", IMAGE);
        o.ensure_challenge(&s).await.unwrap();
        let pid = pid_of(&o, &s.slug).await;
        let pid_file = dir.path().join("challenges/quiz/data/grandchild.pid");
        wait_until(|| {
            std::fs::read_to_string(&pid_file).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
        })
        .await;
        let grandchild: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(grandchild));

        let started = std::time::Instant::now();
        o.remove_challenge(&s.slug, false).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!alive(pid), "the TERM-ignoring leader was killed");
        // The grandchild is reparented to init, which reaps it shortly.
        wait_until(|| !alive(grandchild)).await;
    }

    #[tokio::test]
    async fn shutdown_leaves_no_child_alive() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let mut pids = Vec::new();
        for name in ["alpha", "beta", "gamma"] {
            let s = spec(name, IMAGE);
            o.ensure_challenge(&s).await.unwrap();
            pids.push(pid_of(&o, &s.slug).await);
        }
        assert!(pids.iter().all(|p| alive(*p)));
        assert_eq!(
            o.list_challenges()
                .await
                .unwrap()
                .iter()
                .map(|s| s.slug.as_str().to_string())
                .collect::<Vec<_>>(),
            ["alpha", "beta", "gamma"]
        );
        o.shutdown().await;
        for pid in pids {
            assert!(!alive(pid), "pid {pid} survived shutdown");
        }
        assert!(o.list_challenges().await.unwrap().is_empty());
        assert!(!dir.path().join("challenges/alpha/secrets").exists());
        assert!(dir.path().join("challenges/alpha/data").is_dir());
        let err = o.ensure_challenge(&spec("alpha", IMAGE)).await.unwrap_err();
        assert!(matches!(err, OrchestratorError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_orchestrator_kills_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let o = sleeper(dir.path());
        let s = spec("quiz", IMAGE);
        o.ensure_challenge(&s).await.unwrap();
        let pid = pid_of(&o, &s.slug).await;
        drop(o);
        // kill_on_drop signals at once; tokio reaps the orphan in the
        // background, so poll for it.
        wait_until(|| {
            !alive(pid)
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))
        })
        .await;
    }

    #[tokio::test]
    async fn serves_http_on_the_endpoint_and_logs_output() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"echo "hello from $CHALLENGE_SLUG"
exec python3 -m http.server "${CHALLENGE_LISTEN##*:}" --bind 127.0.0.1"#;
        let o = orchestrator(
            dir.path(),
            ProgramTable::new()
                .with(IMAGE, ["/bin/sh", "-c", script])
                .unwrap(),
        );
        let s = spec("web", IMAGE);
        let status = o.ensure_challenge(&s).await.unwrap();
        let endpoint = status.endpoint.unwrap();
        let client = reqwest::Client::new();
        let mut ok = false;
        for _ in 0..200 {
            if let Ok(resp) = client.get(format!("{endpoint}/")).send().await {
                ok = resp.status().is_success();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "no HTTP answer from {endpoint}");
        let log = std::fs::read_to_string(o.log_path(&s.slug)).unwrap();
        assert!(log.contains("=== "), "{log}");
        assert!(log.contains("hello from web"), "{log}");
        assert!(!log.contains("cleartext"), "{log}");
        o.shutdown().await;
    }
}
