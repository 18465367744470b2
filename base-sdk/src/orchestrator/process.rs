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
//! jobs/<id>/work/                              a job's working directory (mounts land here)
//! jobs/<id>/stdout, jobs/<id>/stderr           a job's output
//! ```
//!
//! # Jobs
//!
//! Evaluation jobs run here too, so the broker's flow can be exercised
//! without Docker — but a job is only its `command`, run as a child process:
//!
//! - The image is **not** run (there is no container); `command` must name
//!   a program on the host's `PATH` or a path. The container-only limits
//!   (CPU, memory, pids, GPUs, network, read-only root, user, tmpfs,
//!   ulimits, capabilities, security options, init) are ignored.
//! - This is no isolation: the job runs as the same user on the same host,
//!   with the host's network and file system. Only untrusted-looking paths
//!   in the spec (mount targets, the workdir) are confined to the job's
//!   directory; what the program itself does is not.
//! - What a job can observe of the contract is kept: a fresh working
//!   directory holding its mounts (each `target` is taken relative to it,
//!   so `/input` becomes `work/input`), a cleared environment (`PATH` and
//!   `HOME` from the orchestrator, then the spec's env), stdout and stderr
//!   kept apart, and the timeout (exit code 124, state `TimedOut`).
//! - Jobs are kept in memory: after a restart `list_jobs` does not know the
//!   jobs of the earlier run (their directories stay until `remove_job`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, oneshot, watch};

use super::{
    ChallengeSpec, JobLogs, JobMount, JobOutputs, JobSpec, JobState, JobStatus, LogChunk,
    LogStream, LogStreamKind, Orchestrator, OrchestratorError, ServiceState, ServiceStatus,
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

/// What a job inherits from the orchestrator's environment: less than a
/// service, since a job is the challenge's untrusted payload and the
/// developer's logging settings are none of its business.
const JOB_INHERITED_ENV: &[&str] = &["PATH", "HOME"];

/// The longest job id accepted; ids name directories, and the broker's own
/// ids are far shorter.
const MAX_JOB_ID_LEN: usize = 128;

/// The exit code reported for a job stopped at its timeout (CONTRACTS.md §4,
/// the convention of `timeout(1)`).
const TIMED_OUT_EXIT_CODE: i64 = 124;

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
    /// The "entrypoint" of each image whose jobs run a local program: such a
    /// job runs this argv followed by its whole `command`, as Docker runs
    /// an image's `ENTRYPOINT` followed by the command. Other images' jobs
    /// run their `command` as is.
    job_entrypoints: ProgramTable,
    /// Time between SIGTERM and SIGKILL when stopping a child.
    stop_grace: Duration,
    /// The services this orchestrator started, including exited ones (they
    /// report `Failed` until the next ensure restarts them).
    services: Mutex<HashMap<Slug, Managed>>,
    /// The jobs started and not yet removed, by the broker's id. A separate
    /// lock from the services', so job calls do not queue behind a service
    /// restart; it is not held while a job is waited for or stopped (except
    /// by `shutdown`), so they do not queue behind each other either.
    jobs: Mutex<HashMap<String, ManagedJob>>,
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

/// One job: what the orchestrator keeps of it while it runs and after.
///
/// The child itself is owned by the job's supervisor task
/// ([`supervise_job`]), which is the only place that waits on it; the
/// orchestrator sees the job through the status the task publishes (state,
/// timestamps, deadline, exit code) and stops it through `cancel`. One task
/// per job is plenty for a development tool, and it makes the timeout, the
/// exit and a cancellation one `select!` instead of a polling loop.
struct ManagedJob {
    /// The job's status; the supervisor publishes the terminal one after
    /// the process group is gone, so waiting for it means "stopped".
    status: watch::Receiver<JobStatus>,
    /// Asks the supervisor to stop the job; taken by the first stop
    /// request. Dropping it (the orchestrator is dropped) stops the job too.
    cancel: Option<oneshot::Sender<()>>,
    /// The leader's pid, which is also its process group id.
    pid: Option<u32>,
    /// [`JobPlan::writable`].
    writable: Vec<PathBuf>,
}

/// Where one job's files live.
#[derive(Debug, Clone)]
struct JobPaths {
    /// `jobs/<id>`; removed entirely with the job.
    root: PathBuf,
    /// `jobs/<id>/work`, the job's working directory and mount root.
    work: PathBuf,
    /// `jobs/<id>/stdout`.
    stdout: PathBuf,
    /// `jobs/<id>/stderr`.
    stderr: PathBuf,
}

impl JobPaths {
    /// The paths of job `id`, which [`check_job_id`] has accepted (so it is
    /// one plain path component).
    fn new(data_dir: &Path, id: &str) -> Self {
        let root = data_dir.join("jobs").join(id);
        Self {
            work: root.join("work"),
            stdout: root.join("stdout"),
            stderr: root.join("stderr"),
            root,
        }
    }
}

/// What a job spec resolves to on this host.
#[derive(Debug, Clone)]
struct JobPlan {
    /// The job's directories and files.
    paths: JobPaths,
    /// Where it runs: the working directory or inside it.
    workdir: PathBuf,
    /// `command[0]`.
    program: String,
    /// The rest of `command`.
    args: Vec<String>,
    /// What its mounts place in the working directory.
    files: Vec<MountFile>,
    /// Its writable mounts' directories, relative to the working
    /// directory, in spec order: created empty if nothing is placed there,
    /// and packed back by `job_outputs`.
    writable: Vec<PathBuf>,
}

/// One file a job's mounts place in its working directory.
#[derive(Debug, Clone, PartialEq)]
struct MountFile {
    /// Relative to the working directory, with normal components only.
    path: PathBuf,
    /// Its contents.
    contents: Vec<u8>,
    /// From a read-only mount: the file is made read-only (a courtesy to
    /// catch mistakes, not enforcement — the job could chmod it back).
    read_only: bool,
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
            job_entrypoints: ProgramTable::new(),
            stop_grace: DEFAULT_STOP_GRACE,
            services: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Jobs of the images in `entrypoints` run the registered argv followed
    /// by their `command` (a challenge's own image used as its job image,
    /// as `base-server dev` does with the example quiz); other jobs are
    /// unchanged.
    pub fn with_job_entrypoints(mut self, entrypoints: ProgramTable) -> Self {
        self.job_entrypoints = entrypoints;
        self
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

    /// Stops every service child and every running job (SIGTERM, then
    /// SIGKILL after the stop grace, all concurrently), deletes the
    /// services' secrets directories and the jobs' directories, and refuses
    /// further starts. Service data is kept. Failures are logged, not
    /// returned: there is nothing a caller that is exiting could do about
    /// them.
    ///
    /// Dropping the orchestrator without calling this still kills the
    /// children (SIGKILL, no grace), as a backstop.
    pub async fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        tokio::join!(self.stop_services(), self.stop_jobs());
        tracing::info!("process orchestrator shut down");
    }

    /// The services' part of [`shutdown`](Self::shutdown).
    async fn stop_services(&self) {
        let mut services = self.services.lock().await;
        let grace = self.stop_grace;
        futures::future::join_all(services.values_mut().map(|m| stop(m, grace))).await;
        for (slug, _) in services.drain() {
            let secrets = ChallengePaths::new(&self.data_dir, &slug).secrets;
            if let Err(e) = run_blocking(move || remove_dir_if_exists(&secrets)).await {
                tracing::warn!(slug = %slug, error = %e, "cannot delete secrets directory");
            }
        }
    }

    /// The jobs' part of [`shutdown`](Self::shutdown). The jobs lock is held
    /// throughout, so a `run_job` racing the shutdown either finishes first
    /// (and its job is stopped here) or sees the shut-down flag.
    async fn stop_jobs(&self) {
        let mut jobs = self.jobs.lock().await;
        let stopped = jobs.values_mut().map(|job| {
            if let Some(cancel) = job.cancel.take() {
                // An error means the supervisor has already finished.
                let _ = cancel.send(());
            }
            let mut status = job.status.clone();
            async move {
                // An error means the supervisor is gone, so nothing is left
                // to wait for.
                let _ = status.wait_for(|s| s.state.is_terminal()).await;
            }
        });
        futures::future::join_all(stopped).await;
        for (id, _) in jobs.drain() {
            let root = JobPaths::new(&self.data_dir, &id).root;
            if let Err(e) = run_blocking(move || remove_dir_if_exists(&root)).await {
                tracing::warn!(job = %id, error = %e, "cannot delete job directory");
            }
        }
    }

    /// The validated spec turned into what [`run_job`](Orchestrator::run_job)
    /// needs: program, arguments, working directory and mount files. Pure;
    /// every refusal is an [`OrchestratorError::InvalidSpec`].
    fn plan_job(&self, spec: &JobSpec) -> Result<JobPlan, OrchestratorError> {
        check_job_id(&spec.id)?;
        let command: Vec<String> = match self.job_entrypoints.program(&spec.image) {
            Some(entrypoint) if !spec.command.is_empty() => {
                entrypoint.iter().chain(&spec.command).cloned().collect()
            }
            _ => spec.command.clone(),
        };
        let Some((program, args)) = command.split_first() else {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{}': the command is empty",
                spec.id
            )));
        };
        if program.is_empty() {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{}': the program name is empty",
                spec.id
            )));
        }
        if command.iter().any(|arg| arg.contains('\0')) {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{}': the command contains a NUL byte",
                spec.id
            )));
        }
        check_env_names(&spec.env)?;
        if let Some(key) = spec
            .env
            .iter()
            .find_map(|(k, v)| v.contains('\0').then_some(k))
        {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{}': the value of env '{key}' contains a NUL byte",
                spec.id
            )));
        }
        if spec.timeout_seconds == 0 {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{}': timeout_seconds must be at least 1",
                spec.id
            )));
        }
        let paths = JobPaths::new(&self.data_dir, &spec.id);
        let workdir = job_workdir(&paths.work, spec.workdir.as_deref())?;
        let files = mount_files(&spec.mounts)?;
        let writable = spec
            .mounts
            .iter()
            .filter(|m| !m.read_only)
            .map(|m| {
                if m.files.contains_key("") {
                    return Err(OrchestratorError::InvalidSpec(format!(
                        "mount '{}': a writable mount must be a directory, not a single file",
                        m.target.escape_debug()
                    )));
                }
                mount_target(&m.target)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JobPlan {
            paths,
            workdir,
            program: program.clone(),
            args: args.to_vec(),
            files,
            writable,
        })
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
        // Jobs: dropping the map drops their stop senders, and each
        // supervisor then stops its job, if the runtime still runs it. As
        // a backstop for when it does not, the groups of jobs not yet
        // reported ended get a SIGKILL. Such a job's leader is unreaped,
        // or was reaped only a moment ago by its supervisor, which then
        // kills the group itself (see `supervise_job` on why that moment
        // is safe).
        #[cfg(unix)]
        for job in self.jobs.get_mut().values() {
            if let (false, Some(pid)) = (job.status.borrow().state.is_terminal(), job.pid) {
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

    /// Runs `spec.command` as a child process in a fresh
    /// `jobs/<id>/work` directory holding the mounts, with a cleared
    /// environment (`PATH` and `HOME`, then `spec.env`), its output in
    /// `jobs/<id>/stdout` and `stderr`, in a process group of its own.
    /// Returns once the process is spawned (state `Running`); a supervisor
    /// task then records its exit or stops it at `timeout_seconds` after
    /// the start (state `TimedOut`, exit code 124).
    ///
    /// The image and the container-only limits are ignored and nothing is
    /// isolated (see the module documentation). A duplicate id, an empty
    /// command, or a mount target or workdir that would leave the working
    /// directory is an [`OrchestratorError::InvalidSpec`]; a program that
    /// cannot be started is an [`OrchestratorError::Io`] and leaves nothing
    /// behind.
    async fn run_job(&self, spec: &JobSpec) -> Result<JobStatus, OrchestratorError> {
        let plan = self.plan_job(spec)?;
        // Held through directory creation and spawn: the duplicate check,
        // the shut-down check and the insert must not interleave with
        // another run, removal or shutdown of the same id.
        let mut jobs = self.jobs.lock().await;
        if self.shut_down.load(Ordering::SeqCst) {
            return Err(OrchestratorError::Refused(
                "the process orchestrator has been shut down".to_string(),
            ));
        }
        if jobs.contains_key(&spec.id) {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{}' already exists",
                spec.id
            )));
        }
        let prepared = plan.clone();
        let (stdout, stderr) = run_blocking(move || prepare_job(&prepared)).await?;

        let mut cmd = Command::new(&plan.program);
        cmd.args(&plan.args).current_dir(&plan.workdir).env_clear();
        for key in JOB_INHERITED_ENV {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.envs(&spec.env);
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // The backstop if the supervisor task is dropped with the
            // runtime before it could stop the job.
            .kill_on_drop(true);
        // Its own process group, so a stop reaches everything it spawned.
        #[cfg(unix)]
        cmd.process_group(0);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                let root = plan.paths.root.clone();
                if let Err(e) = run_blocking(move || remove_dir_if_exists(&root)).await {
                    tracing::warn!(job = %spec.id, error = %e, "cannot delete job directory");
                }
                return Err(OrchestratorError::Io {
                    context: format!("starting '{}' for job '{}'", plan.program, spec.id),
                    source,
                });
            }
        };
        let pid = child.id();
        let started_at = crate::model::now();
        // The timeout counts from the spawn. A timeout too large for the
        // clock (centuries) means none.
        let timeout = Duration::from_secs(spec.timeout_seconds);
        let expires = tokio::time::Instant::now().checked_add(timeout);
        let status = JobStatus {
            id: spec.id.clone(),
            slug: spec.slug.clone(),
            state: JobState::Running,
            exit_code: None,
            node_id: None,
            started_at: Some(started_at),
            finished_at: None,
            message: None,
            deadline_at: Some(spec.deadline_at),
            timeout_seconds: Some(spec.timeout_seconds),
        };
        let (status_tx, status_rx) = watch::channel(status.clone());
        let (cancel_tx, cancel_rx) = oneshot::channel();
        tokio::spawn(supervise_job(
            child,
            pid,
            expires,
            spec.timeout_seconds,
            self.stop_grace,
            status_tx,
            cancel_rx,
        ));
        jobs.insert(
            spec.id.clone(),
            ManagedJob {
                status: status_rx,
                cancel: Some(cancel_tx),
                pid,
                writable: plan.writable.clone(),
            },
        );
        // Neither env values nor the command are logged: both may carry
        // the challenge's secrets.
        tracing::info!(
            job = %spec.id,
            slug = %spec.slug,
            pid,
            timeout_seconds = spec.timeout_seconds,
            dir = %plan.paths.root.display(),
            "started job process"
        );
        Ok(status)
    }

    async fn job_status(&self, id: &str) -> Result<JobStatus, OrchestratorError> {
        let jobs = self.jobs.lock().await;
        let job = jobs.get(id).ok_or_else(|| job_not_found(id))?;
        Ok(job.status.borrow().clone())
    }

    /// Waits on the job's status channel, which its supervisor updates the
    /// moment the process ends or is stopped: no polling.
    async fn wait_job(&self, id: &str, timeout: Duration) -> Result<JobStatus, OrchestratorError> {
        // Cloned so the jobs lock is not held while waiting.
        let mut status = {
            let jobs = self.jobs.lock().await;
            jobs.get(id)
                .ok_or_else(|| job_not_found(id))?
                .status
                .clone()
        };
        // Either outcome is fine to ignore: at the timeout the status as it
        // stands is the answer, and a closed channel (the supervisor is
        // gone) has its last value all the same.
        let _ = tokio::time::timeout(timeout, status.wait_for(|s| s.state.is_terminal())).await;
        let current = status.borrow().clone();
        Ok(current)
    }

    /// The last `max_bytes` of `jobs/<id>/stdout` and `stderr`, read from
    /// the end of the files, so it works while the job runs and costs the
    /// same however much it printed.
    async fn job_logs(&self, id: &str, max_bytes: usize) -> Result<JobLogs, OrchestratorError> {
        let paths = {
            let jobs = self.jobs.lock().await;
            if !jobs.contains_key(id) {
                return Err(job_not_found(id));
            }
            JobPaths::new(&self.data_dir, id)
        };
        run_blocking(move || {
            let (stdout, stdout_cut) = read_tail(&paths.stdout, max_bytes)?;
            let (stderr, stderr_cut) = read_tail(&paths.stderr, max_bytes)?;
            Ok(JobLogs {
                stdout,
                stderr,
                truncated: stdout_cut || stderr_cut,
            })
        })
        .await
    }

    /// Packs each writable mount's directory as it is now.
    async fn job_outputs(
        &self,
        id: &str,
        writable: usize,
    ) -> Result<JobOutputs, OrchestratorError> {
        let dirs = {
            let jobs = self.jobs.lock().await;
            let job = jobs.get(id).ok_or_else(|| job_not_found(id))?;
            let work = JobPaths::new(&self.data_dir, id).work;
            job.writable
                .iter()
                .map(|d| work.join(d))
                .collect::<Vec<_>>()
        };
        if dirs.len() != writable {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{id}' has {} writable mounts, not {writable}",
                dirs.len()
            )));
        }
        run_blocking(move || {
            let limits = base_shim::pack::PackLimits::default();
            let mut budget = limits.max_compressed;
            Ok(dirs
                .iter()
                .map(|dir| {
                    let limits = base_shim::pack::PackLimits {
                        max_compressed: budget,
                        ..limits
                    };
                    let packed = base_shim::pack::pack_dir(dir, &limits).map_err(|e| {
                        base_shim::frame::OutputError::Reported(format!(
                            "output of {}: {e}",
                            dir.display()
                        ))
                    })?;
                    budget -= packed.archive.len();
                    Ok(packed.archive)
                })
                .collect())
        })
        .await
    }

    /// Stops the job if it still runs (state `Cancelled`; SIGTERM to its
    /// group, SIGKILL after the stop grace), deletes `jobs/<id>` and forgets
    /// it. An unknown id is not an error; a directory left from an earlier
    /// run under that id is deleted all the same.
    async fn remove_job(&self, id: &str) -> Result<(), OrchestratorError> {
        let mut status = {
            let mut jobs = self.jobs.lock().await;
            let Some(job) = jobs.get_mut(id) else {
                // Deleted under the lock so that a concurrent run_job of
                // the same id cannot have its fresh directory removed.
                if check_job_id(id).is_ok() {
                    let root = JobPaths::new(&self.data_dir, id).root;
                    run_blocking(move || remove_dir_if_exists(&root)).await?;
                }
                return Ok(());
            };
            if let Some(cancel) = job.cancel.take() {
                // An error means the supervisor has already finished.
                let _ = cancel.send(());
            }
            job.status.clone()
        };
        // Outside the lock: stopping takes up to the stop grace, and other
        // jobs' calls need not wait for it. The terminal status is published
        // only once the process is reaped; an error means the supervisor
        // is gone, so there is nothing left to wait for either.
        let _ = status.wait_for(|s| s.state.is_terminal()).await;

        let mut jobs = self.jobs.lock().await;
        // Another removal may have finished meanwhile, and a new job may
        // even have taken the id since; only this job's entry and files go.
        if jobs
            .get(id)
            .is_some_and(|job| job.status.same_channel(&status))
        {
            let root = JobPaths::new(&self.data_dir, id).root;
            // On failure the entry stays, so a retry can finish the job.
            run_blocking(move || remove_dir_if_exists(&root)).await?;
            jobs.remove(id);
            tracing::info!(job = %id, "removed job");
        }
        Ok(())
    }

    /// The jobs started since this orchestrator was created and not yet
    /// removed, oldest first. Unlike Swarm's labels, they do not survive a
    /// restart.
    async fn list_jobs(&self, slug: Option<Slug>) -> Result<Vec<JobStatus>, OrchestratorError> {
        let jobs = self.jobs.lock().await;
        let mut all: Vec<JobStatus> = jobs
            .values()
            .map(|job| job.status.borrow().clone())
            .filter(|status| slug.as_ref().is_none_or(|s| *s == status.slug))
            .collect();
        all.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(all)
    }

    /// Reads `jobs/<id>/stdout` and `stderr` from the start, polling every
    /// 100 ms for more, and ends once the job is terminal and both files
    /// are drained (or the job is removed).
    async fn follow_job_logs(&self, id: &str) -> Result<LogStream, OrchestratorError> {
        let (paths, status) = {
            let jobs = self.jobs.lock().await;
            let job = jobs.get(id).ok_or_else(|| job_not_found(id))?;
            (JobPaths::new(&self.data_dir, id), job.status.clone())
        };
        let state = FollowState {
            files: [
                (LogStreamKind::Stdout, paths.stdout, 0),
                (LogStreamKind::Stderr, paths.stderr, 0),
            ],
            status,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, follow_step)))
    }

    /// The development orchestrator has no GPUs to offer.
    async fn gpu_capacity(&self) -> Result<u32, OrchestratorError> {
        Ok(0)
    }
}

/// Where [`ProcessOrchestrator::follow_job_logs`] is in each file.
struct FollowState {
    /// Stream, file and bytes already sent.
    files: [(LogStreamKind, PathBuf, u64); 2],
    /// The job's status, to know when no more output can come.
    status: watch::Receiver<JobStatus>,
    /// Set after the last read following the job's end.
    done: bool,
}

/// One step of following: the next new bytes of either file, waiting while
/// the job runs and nothing new was written.
async fn follow_step(
    mut state: FollowState,
) -> Option<(Result<LogChunk, OrchestratorError>, FollowState)> {
    /// Largest chunk read at once, so one chunk never holds a whole log.
    const CHUNK: u64 = 64 * 1024;
    loop {
        if state.done {
            return None;
        }
        // Decided before reading, so output written just before the end is
        // still read once more after it. The reads are small and local, so
        // they run inline rather than on the blocking pool.
        let finished = state.status.borrow().state.is_terminal();
        for (kind, path, offset) in &mut state.files {
            let read = File::open(&*path).and_then(|mut f| {
                f.seek(SeekFrom::Start(*offset))?;
                let mut buf = Vec::new();
                f.take(CHUNK).read_to_end(&mut buf)?;
                Ok(buf)
            });
            match read {
                Ok(buf) if !buf.is_empty() => {
                    *offset += buf.len() as u64;
                    let chunk = LogChunk {
                        stream: *kind,
                        data: bytes::Bytes::from(buf),
                    };
                    return Some((Ok(chunk), state));
                }
                Ok(_) => {}
                // Removed with the job: nothing more will come.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => state.done = true,
                Err(source) => {
                    state.done = true;
                    let err = OrchestratorError::Io {
                        context: format!("reading {}", path.display()),
                        source,
                    };
                    return Some((Err(err), state));
                }
            }
        }
        if finished {
            state.done = true;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The error for a job id this orchestrator does not know.
fn job_not_found(id: &str) -> OrchestratorError {
    OrchestratorError::NotFound(format!("job '{}'", id.escape_debug()))
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
    check_env_names(env)?;
    for key in env.keys() {
        if crate::model::is_reserved_env(key) {
            return Err(OrchestratorError::InvalidSpec(format!(
                "env name '{key}' is reserved: BASE_* and CHALLENGE_* are set by the platform"
            )));
        }
    }
    Ok(())
}

/// Refuses env names no process can be given (empty, or holding `=` or
/// NUL). A job's env is otherwise the challenge's business: unlike a
/// service's, nothing the platform sets is there to be shadowed.
fn check_env_names(env: &BTreeMap<String, String>) -> Result<(), OrchestratorError> {
    match env.keys().find(|key| !crate::model::is_settable_env(key)) {
        Some(key) => Err(OrchestratorError::InvalidSpec(format!(
            "env name '{}' is not a valid variable name",
            key.escape_debug()
        ))),
        None => Ok(()),
    }
}

/// Refuses a job id that could not safely name a directory: ids are
/// 1..=[`MAX_JOB_ID_LEN`] ASCII letters, digits, `-`, `_` and `.`, not
/// starting with `.` (which also rules out `.` and `..`).
fn check_job_id(id: &str) -> Result<(), OrchestratorError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_JOB_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(OrchestratorError::InvalidSpec(format!(
            "job id '{}' must be 1 to {MAX_JOB_ID_LEN} ASCII letters, digits, '-', '_' or '.', \
             not starting with '.'",
            id.escape_debug()
        )))
    }
}

/// `path` as a relative path of plain components (`.` components dropped),
/// or why it is not one: it is absolute, climbs with `..`, or holds a NUL
/// byte. Purely lexical: the job's directory is fresh and filled only by
/// this orchestrator, so no symlink can be met on the way.
fn plain_relative(path: &Path) -> Result<PathBuf, &'static str> {
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    Ok(out)
}

/// Where a mount `target` (a path inside the job, normally absolute) lands,
/// relative to the job's working directory: `/input/data` becomes
/// `input/data`. A target that climbs out with `..`, or names the working
/// directory itself (`/`), is an [`OrchestratorError::InvalidSpec`].
fn mount_target(target: &str) -> Result<PathBuf, OrchestratorError> {
    let invalid = |why: &str| {
        OrchestratorError::InvalidSpec(format!("mount target '{}' {why}", target.escape_debug()))
    };
    // Every leading slash, not just one: `//etc` is still `/etc`.
    let relative = plain_relative(Path::new(target.trim_start_matches('/'))).map_err(invalid)?;
    if relative.as_os_str().is_empty() {
        return Err(invalid("would be the whole working directory"));
    }
    Ok(relative)
}

/// The files `mounts` place in the working directory, in order (a later
/// mount's file replaces an earlier one's at the same path, as a later
/// bind shadows an earlier one). File names are relative to their target;
/// the empty name (or `.`) is the target itself, for a single-file mount.
fn mount_files(mounts: &[JobMount]) -> Result<Vec<MountFile>, OrchestratorError> {
    let mut files = Vec::new();
    for mount in mounts {
        let target = mount_target(&mount.target)?;
        for (name, contents) in &mount.files {
            let relative = plain_relative(Path::new(name)).map_err(|why| {
                OrchestratorError::InvalidSpec(format!(
                    "mount '{}': file '{}' {why}",
                    mount.target.escape_debug(),
                    name.escape_debug()
                ))
            })?;
            // Not `join("")`, which would add a trailing slash and make
            // the path name a directory.
            let path = if relative.as_os_str().is_empty() {
                target.clone()
            } else {
                target.join(relative)
            };
            files.push(MountFile {
                path,
                contents: contents.clone(),
                read_only: mount.read_only,
            });
        }
    }
    Ok(files)
}

/// Where a job with `workdir` runs, given its working directory `work`:
/// `work` itself when none is given; a relative `workdir` is taken relative
/// to `work`; an absolute one must lie inside `work` — a container path
/// such as `/workspace` means nothing on this host, and running in an
/// arbitrary host directory is not something a spec may ask for.
fn job_workdir(work: &Path, workdir: Option<&str>) -> Result<PathBuf, OrchestratorError> {
    let Some(workdir) = workdir else {
        return Ok(work.to_path_buf());
    };
    let path = Path::new(workdir);
    let relative = if path.is_absolute() {
        path.strip_prefix(work).map_err(|_| {
            OrchestratorError::InvalidSpec(format!(
                "workdir '{}' is outside the job's working directory {} (the process \
                 orchestrator runs no container; use a path relative to it, where mounts land \
                 under their target without the leading '/')",
                workdir.escape_debug(),
                work.display()
            ))
        })?
    } else {
        path
    };
    let relative = plain_relative(relative).map_err(|why| {
        OrchestratorError::InvalidSpec(format!("workdir '{}' {why}", workdir.escape_debug()))
    })?;
    Ok(work.join(relative))
}

/// Creates a job's fresh directory (an old one of the same id is deleted
/// first), writes its mount files, creates its workdir and opens its
/// stdout and stderr files. Blocking; run off the runtime.
fn prepare_job(plan: &JobPlan) -> Result<(File, File), OrchestratorError> {
    let io = |context: String| move |source| OrchestratorError::Io { context, source };
    let paths = &plan.paths;
    remove_dir_if_exists(&paths.root)?;
    let result = (|| {
        // Private, like the services' secrets: mounts may hold a
        // challenge's hidden test data.
        create_private_dir(&paths.root)
            .map_err(io(format!("creating {}", paths.root.display())))?;
        std::fs::create_dir_all(&paths.work)
            .map_err(io(format!("creating {}", paths.work.display())))?;
        for dir in &plan.writable {
            let path = paths.work.join(dir);
            std::fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
        }
        for file in &plan.files {
            let path = paths.work.join(&file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("creating {}", parent.display())))?;
            }
            std::fs::write(&path, &file.contents)
                .map_err(io(format!("writing {}", path.display())))?;
        }
        // After every write, so a later mount can still replace a file an
        // earlier read-only one placed.
        #[cfg(unix)]
        for file in plan.files.iter().filter(|f| f.read_only) {
            use std::os::unix::fs::PermissionsExt;
            let path = paths.work.join(&file.path);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
                .map_err(io(format!("making {} read-only", path.display())))?;
        }
        std::fs::create_dir_all(&plan.workdir)
            .map_err(io(format!("creating {}", plan.workdir.display())))?;
        let stdout = File::create(&paths.stdout)
            .map_err(io(format!("creating {}", paths.stdout.display())))?;
        let stderr = File::create(&paths.stderr)
            .map_err(io(format!("creating {}", paths.stderr.display())))?;
        Ok((stdout, stderr))
    })();
    if result.is_err() {
        // Half-written mounts are of no use to anyone.
        let _ = remove_dir_if_exists(&paths.root);
    }
    result
}

/// The last `max_bytes` of the file at `path` as lossy UTF-8, and whether
/// anything before them was left out. A missing file reads as empty. When
/// the cut lands inside a UTF-8 sequence, its orphaned continuation bytes
/// are dropped too rather than shown as a replacement character.
fn read_tail(path: &Path, max_bytes: usize) -> Result<(String, bool), OrchestratorError> {
    let io = |source| OrchestratorError::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), false)),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let max = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    // `take`, because a running job may have written more since `len` was
    // read; the cap holds all the same.
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).map_err(io)?;
    let truncated = start > 0;
    let mut tail = bytes.as_slice();
    if truncated {
        // A UTF-8 sequence has at most three continuation bytes (10xxxxxx).
        let orphans = tail
            .iter()
            .take(3)
            .take_while(|b| **b & 0xC0 == 0x80)
            .count();
        tail = &tail[orphans..];
    }
    Ok((String::from_utf8_lossy(tail).into_owned(), truncated))
}

/// The exit code to report for `exit`: the process's own, or 128 + the
/// signal that killed it (the shell's and Docker's convention, e.g. 137
/// for SIGKILL).
fn exit_code_of(exit: ExitStatus) -> Option<i64> {
    if let Some(code) = exit.code() {
        return Some(i64::from(code));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = exit.signal() {
            return Some(128 + i64::from(signal));
        }
    }
    None
}

/// Why a job's process ended, for its status message.
enum JobEnding {
    /// It exited by itself (or could not be waited for).
    Exited(std::io::Result<ExitStatus>),
    /// Its timeout expired.
    TimedOut,
    /// It was removed, or the orchestrator shut down or was dropped.
    Cancelled,
}

/// Owns one job's child: waits for it to exit, for its timeout to expire
/// (`expires`; `None` = never) or for a stop request on `cancel`, whichever
/// comes first; stops it in the last two cases; kills whatever the job left
/// behind in its process group; and only then publishes the terminal status
/// on `status`, so a waiter that sees it knows the process is gone.
async fn supervise_job(
    mut child: Child,
    pid: Option<u32>,
    expires: Option<tokio::time::Instant>,
    timeout_seconds: u64,
    grace: Duration,
    status: watch::Sender<JobStatus>,
    mut cancel: oneshot::Receiver<()>,
) {
    let expiry = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let ending = tokio::select! {
        result = child.wait() => JobEnding::Exited(result),
        () = expiry => JobEnding::TimedOut,
        // A dropped sender (the orchestrator is gone) stops the job too.
        _ = &mut cancel => JobEnding::Cancelled,
    };
    let (state, exit_code, message) = match ending {
        JobEnding::Exited(Ok(exit)) if exit.success() => (JobState::Succeeded, Some(0), None),
        JobEnding::Exited(Ok(exit)) => (
            JobState::Failed,
            exit_code_of(exit),
            Some(format!("process exited ({exit})")),
        ),
        JobEnding::Exited(Err(e)) => (
            JobState::Failed,
            None,
            Some(format!("cannot wait for the process: {e}")),
        ),
        JobEnding::TimedOut => {
            let exit = stop_process(&mut child, pid, grace).await;
            let id = status.borrow().id.clone();
            tracing::info!(job = %id, pid, timeout_seconds, "job timed out; stopped");
            (
                JobState::TimedOut,
                Some(TIMED_OUT_EXIT_CODE),
                Some(format!(
                    "timed out after {timeout_seconds} s and was stopped{}",
                    exit.map(|e| format!(" ({e})")).unwrap_or_default()
                )),
            )
        }
        JobEnding::Cancelled => {
            let exit = stop_process(&mut child, pid, grace).await;
            (
                JobState::Cancelled,
                exit.and_then(exit_code_of),
                Some("cancelled and stopped".to_string()),
            )
        }
    };
    // A container's other processes die with its PID 1; so do the job's.
    // The leader is reaped by now, so its pid could in principle name a new
    // group — but only after the kernel's pid counter wrapped all the way
    // round in the moment since, and while members of the old group remain
    // the id cannot be reused at all. Best effort: usually the group is
    // already empty and kill(1) just fails.
    if let Some(pid) = pid {
        let _ = signal_group(pid, "KILL").await;
    }
    status.send_modify(|s| {
        s.state = state;
        s.exit_code = exit_code;
        s.finished_at = Some(crate::model::now());
        s.message = message;
    });
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

/// Stops a service's child with [`stop_process`], remembering its exit.
async fn stop(managed: &mut Managed, grace: Duration) {
    if let Some(exit) = stop_process(&mut managed.child, managed.pid, grace).await {
        managed.exit = Some(exit);
    }
}

/// Stops a child whose process group is `pid`: SIGTERM to the group, up to
/// `grace` for it to exit, then SIGKILL to the group and the child. Returns
/// its exit status when observed. Never fails: a child that cannot be
/// signalled is reported and then left to `kill_on_drop`.
async fn stop_process(child: &mut Child, pid: Option<u32>, grace: Duration) -> Option<ExitStatus> {
    // tokio's `Child` remembers the status once reaped, so an exited child
    // is reported here again without being signalled.
    match child.try_wait() {
        Ok(Some(exit)) => return Some(exit),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot observe child before stopping it")
        }
    }
    // The leader is unreaped at this point, so its pid (= the group id)
    // cannot have been reused and signalling the group is safe.
    let terminated = match pid {
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
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => return Some(status),
            Ok(Err(e)) => tracing::warn!(pid, error = %e, "cannot wait for child"),
            Err(_) => tracing::warn!(
                pid,
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "child ignored SIGTERM; killing it"
            ),
        }
    }
    if let Some(pid) = pid {
        // Best effort: the group may already be gone.
        let _ = signal_group(pid, "KILL").await;
    }
    if let Err(e) = child.start_kill() {
        tracing::debug!(pid, error = %e, "start_kill failed (already exited?)");
    }
    match child.wait().await {
        Ok(status) => Some(status),
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot wait for killed child");
            None
        }
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

    // ---- jobs ----

    fn limits() -> crate::orchestrator::JobLimits {
        crate::orchestrator::JobLimits {
            cpus: 2.0,
            memory_bytes: 4 << 30,
            pids: 512,
            gpus: None,
            network: crate::orchestrator::JobNetwork::None,
            read_only: true,
            user: None,
            tmpfs: vec!["/tmp:rw,noexec,nosuid,size=512m".to_string()],
            ulimits: vec!["nofile=1024:1024".to_string()],
            cap_drop: vec!["ALL".to_string()],
            security_opt: vec!["no-new-privileges".to_string()],
            init: true,
        }
    }

    fn job(id: &str, slug_name: &str, command: &[&str]) -> JobSpec {
        JobSpec {
            id: id.to_string(),
            slug: slug(slug_name),
            job_id: format!("caller-{id}"),
            task_id: None,
            // Never run: the process orchestrator runs the command only.
            image: ImageRef::parse("ghcr.io/base/evaluator:1.0").unwrap(),
            command: command.iter().map(|s| (*s).to_string()).collect(),
            workdir: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            limits: limits(),
            mounts: Vec::new(),
            timeout_seconds: 60,
            deadline_at: Utc::now() + chrono::Duration::hours(1),
        }
    }

    fn sh(id: &str, script: &str) -> JobSpec {
        job(id, "quiz", &["/bin/sh", "-c", script])
    }

    fn jobs_orchestrator(dir: &Path) -> ProcessOrchestrator {
        orchestrator(dir, ProgramTable::new())
    }

    /// Waits (bounded) for the job to end.
    async fn finish(o: &ProcessOrchestrator, id: &str) -> JobStatus {
        let status = o.wait_job(id, Duration::from_secs(20)).await.unwrap();
        assert!(status.state.is_terminal(), "{status:?}");
        status
    }

    async fn job_pid(o: &ProcessOrchestrator, id: &str) -> u32 {
        o.jobs.lock().await.get(id).unwrap().pid.unwrap()
    }

    /// Gone, or a zombie waiting for a reaper that is not ours (a reparented
    /// grandchild in a container whose init does not reap).
    fn gone(pid: u32) -> bool {
        !alive(pid)
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z "))
    }

    #[tokio::test]
    async fn a_failing_job_reports_its_code_and_separate_streams() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        let spec = sh("j-fail", "echo to-stdout; echo to-stderr >&2; exit 3");
        let before = Utc::now();
        let started = o.run_job(&spec).await.unwrap();
        assert_eq!(started.state, JobState::Running);
        assert_eq!(started.id, "j-fail");
        assert_eq!(started.slug, slug("quiz"));
        assert!(started.started_at.unwrap() >= before - chrono::Duration::seconds(1));
        assert_eq!(started.deadline_at, Some(spec.deadline_at));
        assert_eq!(started.exit_code, None);

        let done = finish(&o, "j-fail").await;
        assert_eq!(done.state, JobState::Failed);
        assert_eq!(done.exit_code, Some(3));
        assert!(done.finished_at.unwrap() >= done.started_at.unwrap());
        assert_eq!(o.job_status("j-fail").await.unwrap(), done);

        let logs = o.job_logs("j-fail", 64_000).await.unwrap();
        assert_eq!(logs.stdout, "to-stdout\n");
        assert_eq!(logs.stderr, "to-stderr\n");
        assert!(!logs.truncated);
        let root = dir.path().join("jobs/j-fail");
        assert_eq!(
            std::fs::read_to_string(root.join("stdout")).unwrap(),
            "to-stdout\n"
        );
        assert!(root.join("work").is_dir());
        o.shutdown().await;
    }

    #[tokio::test]
    async fn a_job_exiting_zero_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        o.run_job(&job("j-ok", "quiz", &["true"])).await.unwrap();
        let done = finish(&o, "j-ok").await;
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.exit_code, Some(0));
        assert_eq!(done.message, None);
        // A finished job is still known until removed.
        assert_eq!(o.list_jobs(None).await.unwrap(), vec![done]);
        o.remove_job("j-ok").await.unwrap();
        assert!(!dir.path().join("jobs/j-ok").exists());
        assert!(matches!(
            o.job_status("j-ok").await.unwrap_err(),
            OrchestratorError::NotFound(_)
        ));
    }

    #[tokio::test]
    async fn a_job_is_stopped_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        let mut spec = job("j-slow", "quiz", &["sleep", "30"]);
        spec.timeout_seconds = 1;
        let clock = std::time::Instant::now();
        o.run_job(&spec).await.unwrap();
        let pid = job_pid(&o, "j-slow").await;
        assert!(alive(pid));
        let done = finish(&o, "j-slow").await;
        let elapsed = clock.elapsed();
        assert_eq!(done.state, JobState::TimedOut);
        assert_eq!(done.exit_code, Some(124));
        assert!(
            done.message
                .as_deref()
                .unwrap()
                .contains("timed out after 1 s"),
            "{done:?}"
        );
        assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        // Reaped before the status was published.
        assert!(!alive(pid), "the timed-out process is gone");
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        o.shutdown().await;
    }

    #[tokio::test]
    async fn removing_a_running_job_cancels_it_and_deletes_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let o = std::sync::Arc::new(jobs_orchestrator(dir.path()));
        o.run_job(&job("j-rm", "quiz", &["sleep", "30"]))
            .await
            .unwrap();
        let pid = job_pid(&o, "j-rm").await;
        let root = dir.path().join("jobs/j-rm");
        assert!(root.is_dir());

        // A waiter sees the cancellation rather than a vanished job.
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_job("j-rm", Duration::from_secs(20)).await })
        };
        // Let the waiter subscribe first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let clock = std::time::Instant::now();
        o.remove_job("j-rm").await.unwrap();
        assert!(
            clock.elapsed() < Duration::from_secs(2),
            "sleep obeys SIGTERM"
        );
        let seen = waiter.await.unwrap().unwrap();
        assert_eq!(seen.state, JobState::Cancelled);
        assert!(seen.finished_at.is_some());

        assert!(!alive(pid));
        assert!(!root.exists());
        assert!(o.list_jobs(None).await.unwrap().is_empty());
        for err in [
            o.job_status("j-rm").await.unwrap_err(),
            o.wait_job("j-rm", Duration::ZERO).await.unwrap_err(),
            o.job_logs("j-rm", 10).await.unwrap_err(),
        ] {
            assert!(matches!(err, OrchestratorError::NotFound(_)), "{err}");
        }
        // Idempotent, and an unknown id is fine.
        o.remove_job("j-rm").await.unwrap();
        o.remove_job("never-seen").await.unwrap();
        o.remove_job("../not-an-id").await.unwrap();
    }

    #[tokio::test]
    async fn removing_an_unknown_id_deletes_a_leftover_directory() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        let leftover = dir.path().join("jobs/old-run/work");
        std::fs::create_dir_all(&leftover).unwrap();
        o.remove_job("old-run").await.unwrap();
        assert!(!dir.path().join("jobs/old-run").exists());
        assert!(
            dir.path().join("jobs").is_dir(),
            "only that job's directory"
        );
    }

    #[tokio::test]
    async fn logs_keep_the_tail_of_each_stream() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        // 1,000 lines of 10 bytes: 10,000 bytes in all.
        let script = r#"i=0
while [ $i -lt 1000 ]; do printf '%09d\n' $i; i=$((i+1)); done
echo short >&2"#;
        o.run_job(&sh("j-logs", script)).await.unwrap();
        assert_eq!(finish(&o, "j-logs").await.state, JobState::Succeeded);
        let full = std::fs::read(dir.path().join("jobs/j-logs/stdout")).unwrap();
        assert_eq!(full.len(), 10_000);

        let logs = o.job_logs("j-logs", 100).await.unwrap();
        assert_eq!(logs.stdout.len(), 100);
        assert_eq!(logs.stdout.as_bytes(), &full[9_900..]);
        assert!(logs.stdout.starts_with("000000990\n"));
        assert!(logs.stdout.ends_with("000000999\n"));
        assert_eq!(logs.stderr, "short\n");
        assert!(logs.truncated);

        let all = o.job_logs("j-logs", 10_000).await.unwrap();
        assert_eq!(all.stdout.len(), 10_000);
        assert!(!all.truncated);
        let none = o.job_logs("j-logs", 0).await.unwrap();
        assert_eq!((none.stdout.as_str(), none.stderr.as_str()), ("", ""));
        assert!(none.truncated);
        o.shutdown().await;
    }

    #[tokio::test]
    async fn logs_can_be_read_while_the_job_runs() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        o.run_job(&sh("j-live", "echo started; exec sleep 30"))
            .await
            .unwrap();
        let mut logs = JobLogs::default();
        for _ in 0..200 {
            logs = o.job_logs("j-live", 1_000).await.unwrap();
            if !logs.stdout.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(logs.stdout, "started\n");
        assert_eq!(
            o.job_status("j-live").await.unwrap().state,
            JobState::Running
        );
        o.shutdown().await;
    }

    #[test]
    fn the_tail_drops_a_cut_utf8_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        // "é" is two bytes; keeping 3 bytes cuts it in half.
        std::fs::write(&path, "aéxy").unwrap();
        assert_eq!(read_tail(&path, 3).unwrap(), ("xy".to_string(), true));
        assert_eq!(read_tail(&path, 4).unwrap(), ("éxy".to_string(), true));
        assert_eq!(read_tail(&path, 5).unwrap(), ("aéxy".to_string(), false));
        assert_eq!(
            read_tail(&dir.path().join("missing"), 5).unwrap(),
            (String::new(), false)
        );
    }

    #[tokio::test]
    async fn mounts_land_in_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        let mut spec = sh(
            "j-mounts",
            r#"pwd; cat task.json; cat sub/deep.txt; cat ../answers/key.txt
if echo x 2>/dev/null > task.json; then echo writable; else echo read-only; fi
echo made > ../answers/made.txt"#,
        );
        spec.workdir = Some("input".to_string());
        spec.mounts = vec![
            JobMount {
                target: "/input".to_string(),
                read_only: true,
                files: BTreeMap::from([
                    ("task.json".to_string(), b"{\"q\":1}\n".to_vec()),
                    ("sub/deep.txt".to_string(), b"deep\n".to_vec()),
                ]),
            },
            JobMount {
                target: "answers".to_string(),
                read_only: false,
                files: BTreeMap::from([("key.txt".to_string(), b"42\n".to_vec())]),
            },
        ];
        o.run_job(&spec).await.unwrap();
        let done = finish(&o, "j-mounts").await;
        let logs = o.job_logs("j-mounts", 10_000).await.unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{logs:?}");
        let work = o.data_dir().join("jobs/j-mounts/work");
        let pwd = work.join("input").display().to_string();
        let expected = format!("{pwd}\n{{\"q\":1}}\ndeep\n42\nread-only\n");
        // Skip the check when root runs the tests: root writes anyway.
        if logs.stdout.ends_with("writable\n") {
            assert_eq!(logs.stdout.replace("writable", "read-only"), expected);
        } else {
            assert_eq!(logs.stdout, expected);
        }
        assert_eq!(mode(&work.join("input/task.json")), 0o444);
        assert_eq!(mode(&work.join("answers/key.txt")) & 0o200, 0o200);
        // The writable mount comes back with what the job left there.
        let outputs = o.job_outputs("j-mounts", 1).await.unwrap();
        let archive = outputs[0].as_ref().unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
        let mut names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["key.txt", "made.txt"]);
        assert!(o.job_outputs("j-mounts", 2).await.is_err());
        // Read-only files do not stop the directory from being removed.
        o.remove_job("j-mounts").await.unwrap();
        assert!(!o.data_dir().join("jobs/j-mounts").exists());
    }

    #[tokio::test]
    async fn escaping_paths_are_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        let escape = |target: &str, file: &str| {
            let mut spec = job("j-escape", "quiz", &["true"]);
            spec.mounts = vec![JobMount {
                target: target.to_string(),
                read_only: true,
                files: BTreeMap::from([(file.to_string(), b"x".to_vec())]),
            }];
            spec
        };
        let mut specs = vec![
            escape("/../../etc", "passwd"),
            escape("/input/../../x", "a"),
            escape("/", "a"),
            escape("/input", "../../a"),
            escape("/input", "/etc/passwd"),
        ];
        for workdir in ["/tmp", "../..", "a/../../b"] {
            let mut spec = job("j-escape", "quiz", &["true"]);
            spec.workdir = Some(workdir.to_string());
            specs.push(spec);
        }
        for spec in specs {
            let err = o.run_job(&spec).await.unwrap_err();
            assert!(matches!(err, OrchestratorError::InvalidSpec(_)), "{err}");
        }
        assert!(!dir.path().join("jobs").exists());
        assert!(o.list_jobs(None).await.unwrap().is_empty());
    }

    #[test]
    fn mount_targets_are_confined_to_the_working_directory() {
        assert_eq!(mount_target("/input").unwrap(), Path::new("input"));
        assert_eq!(
            mount_target("//data/./set/").unwrap(),
            Path::new("data/set")
        );
        assert_eq!(mount_target("relative/x").unwrap(), Path::new("relative/x"));
        for bad in [
            "", "/", "//", "/.", "..", "/..", "/a/../..", "/a/../b", "a\0b",
        ] {
            assert!(
                matches!(mount_target(bad), Err(OrchestratorError::InvalidSpec(_))),
                "{bad:?}"
            );
        }
        assert_eq!(plain_relative(Path::new("")).unwrap(), Path::new(""));
        assert_eq!(
            plain_relative(Path::new("./a/b")).unwrap(),
            Path::new("a/b")
        );
        assert_eq!(plain_relative(Path::new("/a")), Err("is absolute"));
        assert_eq!(plain_relative(Path::new("a/../b")), Err("contains '..'"));

        let files = mount_files(&[JobMount {
            target: "/in".to_string(),
            read_only: true,
            files: BTreeMap::from([
                (String::new(), b"whole".to_vec()),
                ("a/b.txt".to_string(), b"ab".to_vec()),
            ]),
        }])
        .unwrap();
        // Compared as strings: `Path` equality would ignore a trailing slash.
        assert_eq!(files[0].path.as_os_str(), "in");
        assert_eq!(files[1].path, Path::new("in/a/b.txt"));
        assert!(files.iter().all(|f| f.read_only));
    }

    #[test]
    fn workdirs_are_confined_to_the_working_directory() {
        let work = Path::new("/data/jobs/j1/work");
        assert_eq!(job_workdir(work, None).unwrap(), work);
        assert_eq!(job_workdir(work, Some("src")).unwrap(), work.join("src"));
        assert_eq!(job_workdir(work, Some(".")).unwrap(), work);
        assert_eq!(
            job_workdir(work, Some("/data/jobs/j1/work/src")).unwrap(),
            work.join("src")
        );
        for bad in [
            "/workspace",
            "/data/jobs/j1/work2",
            "/data/jobs/j1/work/../../j2/work",
            "..",
            "src/../../x",
        ] {
            assert!(
                matches!(
                    job_workdir(work, Some(bad)),
                    Err(OrchestratorError::InvalidSpec(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn job_ids_must_name_a_plain_directory() {
        for good in ["a", "job-1", "A_b.c", &"x".repeat(MAX_JOB_ID_LEN)] {
            assert!(check_job_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(MAX_JOB_ID_LEN + 1),
        ] {
            assert!(check_job_id(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_job_sees_only_path_home_and_its_own_env() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        // Cargo gives the test process CARGO_* variables, among others; none
        // may reach the job.
        let parent: BTreeMap<String, String> = std::env::vars().collect();
        assert!(
            parent
                .keys()
                .any(|k| !JOB_INHERITED_ENV.contains(&k.as_str())),
            "the parent has variables a job must not see"
        );
        // `env` itself, not a shell, which would add variables of its own.
        let mut spec = job("j-env", "quiz", &["env"]);
        spec.env = BTreeMap::from([("ANSWER".to_string(), "forty two".to_string())]);
        o.run_job(&spec).await.unwrap();
        assert_eq!(finish(&o, "j-env").await.state, JobState::Succeeded);
        let stdout = o.job_logs("j-env", 1 << 20).await.unwrap().stdout;
        let seen: BTreeMap<String, String> = stdout
            .lines()
            .map(|line| {
                let (k, v) = line.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let mut expected = BTreeMap::from([("ANSWER".to_string(), "forty two".to_string())]);
        for key in JOB_INHERITED_ENV {
            if let Some(value) = parent.get(*key) {
                expected.insert((*key).to_string(), value.clone());
            }
        }
        // Names first, so a failure prints no values of the test's own env.
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        assert_eq!(seen, expected);
        o.shutdown().await;
    }

    #[tokio::test]
    async fn wait_job_returns_the_running_status_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        o.run_job(&job("j-long", "quiz", &["sleep", "30"]))
            .await
            .unwrap();
        let clock = std::time::Instant::now();
        let status = o
            .wait_job("j-long", Duration::from_millis(300))
            .await
            .unwrap();
        let elapsed = clock.elapsed();
        assert_eq!(status.state, JobState::Running);
        assert_eq!(status.finished_at, None);
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        o.shutdown().await;
    }

    #[tokio::test]
    async fn list_jobs_filters_by_slug() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        for (id, slug_name) in [("j-a1", "alpha"), ("j-b1", "beta"), ("j-a2", "alpha")] {
            o.run_job(&job(id, slug_name, &["true"])).await.unwrap();
        }
        let ids = |jobs: Vec<JobStatus>| {
            let mut ids: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids(o.list_jobs(Some(slug("alpha"))).await.unwrap()),
            ["j-a1", "j-a2"]
        );
        assert_eq!(
            ids(o.list_jobs(Some(slug("beta"))).await.unwrap()),
            ["j-b1"]
        );
        assert!(o.list_jobs(Some(slug("gamma"))).await.unwrap().is_empty());
        assert_eq!(ids(o.list_jobs(None).await.unwrap()).len(), 3);
        o.shutdown().await;
    }

    #[tokio::test]
    async fn bad_job_specs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        o.run_job(&job("j-dup", "quiz", &["sleep", "30"]))
            .await
            .unwrap();
        let pid = job_pid(&o, "j-dup").await;
        let mut bad = vec![
            job("j-dup", "quiz", &["true"]),
            job("j-empty", "quiz", &[]),
            job("j-blank", "quiz", &[""]),
            job("../j", "quiz", &["true"]),
        ];
        let mut zero = job("j-zero", "quiz", &["true"]);
        zero.timeout_seconds = 0;
        bad.push(zero);
        let mut env = job("j-env", "quiz", &["true"]);
        env.env.insert("A=B".to_string(), "x".to_string());
        bad.push(env);
        for spec in bad {
            let err = o.run_job(&spec).await.unwrap_err();
            assert!(matches!(err, OrchestratorError::InvalidSpec(_)), "{err}");
        }
        // The duplicate did not disturb the original.
        assert_eq!(job_pid(&o, "j-dup").await, pid);
        assert!(alive(pid));

        // A program that does not exist: an error, and nothing left behind.
        let err = o
            .run_job(&job("j-missing", "quiz", &["/nonexistent/program"]))
            .await
            .unwrap_err();
        assert!(matches!(err, OrchestratorError::Io { .. }), "{err}");
        assert!(!dir.path().join("jobs/j-missing").exists());
        assert!(o.job_status("j-missing").await.is_err());
        o.shutdown().await;
    }

    #[tokio::test]
    async fn processes_a_job_leaves_behind_die_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        o.run_job(&sh("j-bg", "sleep 30 & echo $! > bg.pid; exit 0"))
            .await
            .unwrap();
        assert_eq!(finish(&o, "j-bg").await.state, JobState::Succeeded);
        let pid: u32 = std::fs::read_to_string(dir.path().join("jobs/j-bg/work/bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_until(|| gone(pid)).await;
        o.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_stops_running_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        let mut pids = Vec::new();
        for id in ["j-1", "j-2"] {
            o.run_job(&job(id, "quiz", &["sleep", "30"])).await.unwrap();
            pids.push(job_pid(&o, id).await);
        }
        o.shutdown().await;
        for pid in pids {
            assert!(!alive(pid), "pid {pid} survived shutdown");
        }
        assert!(o.list_jobs(None).await.unwrap().is_empty());
        assert!(!dir.path().join("jobs/j-1").exists());
        let err = o.run_job(&job("j-3", "quiz", &["true"])).await.unwrap_err();
        assert!(matches!(err, OrchestratorError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_orchestrator_kills_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let o = jobs_orchestrator(dir.path());
        o.run_job(&job("j-drop", "quiz", &["sleep", "30"]))
            .await
            .unwrap();
        let pid = job_pid(&o, "j-drop").await;
        drop(o);
        wait_until(|| gone(pid)).await;
    }
}
