//! The broker at run time: admits challenges' jobs (auth, rules, quotas, GPU
//! leases), runs them through the [`Orchestrator`], follows each one to its
//! end, and makes sure every path that ends a job — exit, timeout, cancel,
//! a crash of the broker itself — leaves no service, lease or open record
//! behind.
//!
//! How the pieces fit:
//! - **Records** live in the [`Store`] (`jobs`, `gpu_leases`). A job is
//!   recorded, with its GPU lease, *before* its service is created, and its
//!   record turns terminal — which releases the lease in the same
//!   transaction — only after the service is removed and the output tail
//!   captured. So a crash at any point leaves a record that recovery can
//!   finish.
//! - **One driver task per job** (a tokio task, not a thread) waits on the
//!   orchestrator's event-driven `wait_job`, notes when the task starts, and
//!   times the job out `timeout_seconds` after that start — never while the
//!   image is still being pulled.
//! - **The reaper** ([`Broker::reap_once`], run by [`Broker::run_reaper`])
//!   is the second line: it reads the cluster's own view (`list_jobs`, which
//!   Swarm rebuilds from service labels, deadline and timeout included) and
//!   removes overdue jobs and jobs no record explains.
//! - **Recovery** ([`Broker::recover`]) runs at start: every unfinished
//!   record is matched with the cluster, finished if its job ended or
//!   vanished while the broker was down, and given a new driver otherwise.
//! - **Finishing is claimed**: exit, timeout, cancel and the reaper may race
//!   for one job; the first claim finishes it, the others wait for that.
//!
//! Admissions are serialised in-process (one broker per cluster, as the
//! control plane runs one), so the store's count-then-insert is atomic for
//! all practical purposes; see docs/broker.md.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::archive::{self, ArchiveLimits};
use super::request::{
    self, BrokerError, BrokerRunRequest, BrokerRunResponse, ContainerInfo, ListResponse,
    MountBudget, MountRequest, SourceType, TIMEOUT_RETURNCODE, ValidationContext,
};
use crate::model::{Admission, JobFilter, JobOutput, JobRecord, Slug, TokenKind};
use crate::orchestrator::{
    JobLogs, JobMount, JobState, JobStatus, LogChunk, LogStream, LogStreamKind, Orchestrator,
    OrchestratorError,
};
use crate::registry::token;
use crate::store::{Store, StoreError};
use backon::{ExponentialBuilder, Retryable};
use base64::Engine as _;
use futures::StreamExt;

/// The longest pause between two tries of a store write that ends a job
/// (see [`Broker::persist`]): short enough that a lease comes back within
/// seconds of the database's return.
pub const STORE_RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// Return code reported for a job that never produced an exit code of its
/// own (it could not start, or vanished), after Docker's convention for
/// "the container could not be run".
pub const NO_EXIT_RETURNCODE: i64 = 125;

/// Settings of the broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Image prefixes every challenge may run (`BASE_BROKER_ALLOWED_IMAGES`).
    pub allowed_images: Vec<String>,
    /// Networks jobs may never join.
    pub control_plane_networks: Vec<String>,
    /// Bytes of each output stream kept (the tail).
    pub log_limit_bytes: usize,
    /// Limits on mount archives.
    pub archive_limits: ArchiveLimits,
    /// How long a job may wait to start (queued for a node, pulling its
    /// image) on top of its timeout before it is removed as timed out.
    pub start_grace: Duration,
    /// How often the reaper looks at the cluster.
    pub reap_interval: Duration,
    /// Overrides the GPU capacity the cluster advertises (`None`: ask the
    /// orchestrator every time a GPU job is admitted).
    pub gpu_capacity: Option<u32>,
    /// How long what came back from writable mounts is kept
    /// (`BASE_BROKER_OUTPUT_RETENTION_HOURS`); the reaper deletes older.
    pub output_retention: Duration,
    /// How long the records of finished jobs (state, exit code, output
    /// tails) are kept (`BASE_BROKER_JOB_RETENTION_DAYS`); the reaper
    /// deletes older ones, so the table does not grow without bound.
    pub job_retention: Duration,
    /// How often the reaper runs those two purges.
    pub purge_interval: Duration,
    /// Bounds on all the mounts of one job together (count, base64,
    /// files and bytes), checked before and while archives are decoded.
    pub mount_budget: MountBudget,
    /// Unfinished jobs one challenge may have when its policy sets no
    /// `max_concurrent_jobs` (`BASE_BROKER_MAX_JOBS_PER_CHALLENGE`; `None`:
    /// no default cap).
    pub max_jobs_per_challenge: Option<u32>,
    /// Unfinished jobs of all challenges together
    /// (`BASE_BROKER_MAX_JOBS`; `None`: no cap).
    pub max_jobs: Option<u32>,
    /// How long a job may stay queued — no node has taken it — before it
    /// ends failed (`BASE_BROKER_SCHEDULE_TIMEOUT_SECONDS`); its own
    /// timeout if that is shorter.
    pub schedule_timeout: Duration,
}

/// Default [`BrokerConfig::max_jobs_per_challenge`].
pub const DEFAULT_MAX_JOBS_PER_CHALLENGE: u32 = 32;
/// Default [`BrokerConfig::max_jobs`].
pub const DEFAULT_MAX_JOBS: u32 = 128;
/// Default [`BrokerConfig::schedule_timeout`], in seconds.
pub const DEFAULT_SCHEDULE_TIMEOUT_SECONDS: u64 = 300;
/// Archives decoded at once (each on a blocking thread, holding up to a
/// job's mount budget in memory); further submissions wait their turn.
const CONCURRENT_DECODES: usize = 4;

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            allowed_images: vec!["ghcr.io/platformnetwork/".to_string()],
            control_plane_networks: vec!["base_challenges".to_string()],
            log_limit_bytes: 64_000,
            archive_limits: ArchiveLimits::default(),
            start_grace: Duration::from_secs(600),
            reap_interval: Duration::from_secs(2),
            gpu_capacity: None,
            output_retention: Duration::from_secs(24 * 3600),
            job_retention: Duration::from_secs(14 * 24 * 3600),
            purge_interval: Duration::from_secs(60),
            mount_budget: MountBudget::default(),
            max_jobs_per_challenge: Some(DEFAULT_MAX_JOBS_PER_CHALLENGE),
            max_jobs: Some(DEFAULT_MAX_JOBS),
            schedule_timeout: Duration::from_secs(DEFAULT_SCHEDULE_TIMEOUT_SECONDS),
        }
    }
}

/// How a job came to its end, as the finisher records it.
#[derive(Debug, Clone)]
enum Ending {
    /// Its process exited (or the cluster ended it) on its own.
    Exited(JobStatus),
    /// It ran past its timeout, or never started before its deadline.
    TimedOut(String),
    /// Its owner cancelled it.
    Cancelled,
    /// Its service is gone and nobody recorded why.
    Lost(String),
    /// No node took it within the schedule timeout: it never ran.
    NotScheduled(String),
}

/// What [`Broker::recover`] found at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Unfinished records given a new driver.
    pub resumed: usize,
    /// Unfinished records finished because their job ended or vanished.
    pub finished: usize,
    /// Job services no record explains, removed.
    pub orphans_removed: usize,
}

/// The broker: cheap to clone, shared by the HTTP routes and the reaper.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    orchestrator: Arc<dyn Orchestrator>,
    config: BrokerConfig,
    /// Serialises admissions (count, lease, insert) within this process.
    admission: tokio::sync::Mutex<()>,
    /// Jobs being finished right now (the claim).
    finishing: Mutex<HashSet<String>>,
    /// Completion signal of every job with a live driver.
    done: Mutex<HashMap<String, watch::Sender<Option<JobRecord>>>>,
    /// Set by [`Broker::halt`]: every driver lets go of its job.
    halted: watch::Sender<bool>,
    /// When the reaper last purged expired outputs and records.
    last_purge: Mutex<Option<std::time::Instant>>,
    /// Bounds the archives being decoded at once.
    decoding: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("orchestrator", &self.inner.orchestrator.name())
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("{what}: {e}"))
}

impl Broker {
    /// A broker over a store and an orchestrator. Call [`Broker::recover`]
    /// before serving, and run [`Broker::run_reaper`] beside it.
    pub fn new(
        store: Arc<dyn Store>,
        orchestrator: Arc<dyn Orchestrator>,
        config: BrokerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                orchestrator,
                config,
                admission: tokio::sync::Mutex::new(()),
                finishing: Mutex::new(HashSet::new()),
                done: Mutex::new(HashMap::new()),
                halted: watch::Sender::new(false),
                last_purge: Mutex::new(None),
                decoding: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_DECODES)),
            }),
        }
    }

    /// The broker's settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Checks a caller's `X-Base-Challenge-Slug` and `Authorization` headers
    /// (CONTRACTS.md §4): 400 `missing challenge slug`, 401 `unknown
    /// challenge`, 401 `invalid broker token`. The token is compared by its
    /// hash, so no cleartext token is kept or compared.
    pub async fn authenticate(
        &self,
        slug: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Slug, BrokerError> {
        let raw = slug
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BrokerError::Invalid("missing challenge slug".to_string()))?;
        let unknown = || BrokerError::Unauthorized("unknown challenge".to_string());
        let slug = Slug::parse(raw).map_err(|_| unknown())?;
        let tokens = self
            .inner
            .store
            .tokens(&slug)
            .await
            .map_err(|e| unavailable("reading broker tokens", e))?;
        let Some(stored) = tokens.iter().find(|t| t.kind == TokenKind::DockerBroker) else {
            return Err(unknown());
        };
        let presented = crate::auth::bearer(authorization).unwrap_or_default();
        if presented.is_empty() || !token::verify(presented, &stored.hash) {
            return Err(BrokerError::Unauthorized(
                "invalid broker token".to_string(),
            ));
        }
        Ok(slug)
    }

    /// Checks, records and starts a job; returns its record (queued) as soon
    /// as the cluster accepted it. Nothing is created when a rule refuses
    /// it; if the cluster refuses it, the record ends `failed` and its lease
    /// is released before the error is returned.
    pub async fn submit(
        &self,
        slug: &Slug,
        req: &BrokerRunRequest,
    ) -> Result<JobRecord, BrokerError> {
        let inner = &self.inner;
        let challenge = inner
            .store
            .get_challenge(slug)
            .await
            .map_err(|e| unavailable("reading the challenge", e))?
            .ok_or_else(|| BrokerError::Unauthorized("unknown challenge".to_string()))?;
        let ctx = ValidationContext {
            global_allowed_images: inner.config.allowed_images.clone(),
            policy: challenge.broker.clone(),
            control_plane_networks: inner.config.control_plane_networks.clone(),
        };
        let validated = request::validate(req, &ctx)?;
        // Swarm services cannot be privileged, and running the job
        // unprivileged instead would silently change what was asked for.
        if validated.privileged() {
            return Err(BrokerError::Forbidden(format!(
                "privileged broker jobs are allowlisted for '{slug}' but the {} orchestrator cannot run them",
                inner.orchestrator.name()
            )));
        }
        let mounts = self.materialize_mounts(&req.mounts).await?;
        let gpus = validated.limits().gpus.unwrap_or(0);

        let now = crate::model::now();
        let id = new_job_id();
        let mut spec = validated.into_job_spec(id.clone(), slug.clone(), mounts, now);
        // The hard deadline also allows for the start (queue, pull); the
        // timeout proper counts from the task's start (see `drive`).
        spec.deadline_at = deadline(now, spec.timeout_seconds, inner.config.start_grace);
        let record = JobRecord {
            id: id.clone(),
            slug: slug.clone(),
            job_id: spec.job_id.clone(),
            task_id: spec.task_id.clone(),
            image: spec.image.to_string(),
            state: JobState::Queued,
            spec: summary(req, &spec),
            node_id: None,
            gpu_count: gpus,
            exit_code: None,
            error: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            created_at: now,
            started_at: None,
            finished_at: None,
            deadline_at: Some(spec.deadline_at),
        };

        {
            let _admitting = inner.admission.lock().await;
            self.check_total_jobs().await?;
            let capacity = if gpus > 0 {
                self.gpu_capacity().await?
            } else {
                0
            };
            let admission = inner
                .store
                .admit_job(
                    &record,
                    challenge
                        .broker
                        .max_concurrent_jobs
                        .or(inner.config.max_jobs_per_challenge),
                    capacity,
                )
                .await
                .map_err(|e| unavailable("recording the job", e))?;
            match admission {
                // Registered before the service exists, so a finisher
                // racing with the start always finds someone to tell; and
                // inside the admission lock, so the reaper (which passes
                // through this lock after listing open records) never takes
                // a job being started for one whose driver is gone.
                Admission::Admitted => {
                    let (done_tx, _) = watch::channel(None);
                    lock(&inner.done).insert(id.clone(), done_tx);
                }
                Admission::TooManyJobs { active, max } => {
                    return Err(BrokerError::TooManyJobs(format!(
                        "docker_quota_exceeded: challenge '{slug}' is at its concurrency cap ({active}/{max} active workloads)"
                    )));
                }
                Admission::NoGpuCapacity {
                    requested,
                    leased,
                    capacity,
                } => {
                    return Err(BrokerError::TooManyJobs(format!(
                        "docker_quota_exceeded: no GPU capacity for {requested} GPU(s) ({leased}/{capacity} leased)"
                    )));
                }
            }
        }
        if let Err(e) = inner.orchestrator.run_job(&spec).await {
            let message = format!("the cluster refused the job: {e}");
            tracing::warn!(job = %id, slug = %slug, error = %e, "job could not be created");
            self.finish(&id, Ending::Lost(message.clone())).await;
            return Err(match e {
                OrchestratorError::InvalidSpec(why)
                | OrchestratorError::UnsupportedImage { reason: why, .. } => {
                    BrokerError::Invalid(why)
                }
                other => BrokerError::Unavailable(other.to_string()),
            });
        }
        tracing::info!(job = %id, slug = %slug, job_id = %record.job_id, gpus, "job submitted");
        tokio::spawn(self.clone().drive(id));
        Ok(record)
    }

    /// `POST /v1/docker/run`: submits the job and waits for its end.
    pub async fn run(
        &self,
        slug: &Slug,
        req: &BrokerRunRequest,
    ) -> Result<BrokerRunResponse, BrokerError> {
        let record = self.submit(slug, req).await?;
        let record = self.wait(slug, &record.id, None).await?;
        let mut response = run_response(&record);
        response.outputs = self.outputs(slug, &record.id).await?;
        Ok(response)
    }

    /// `GET /v1/jobs/{id}/outputs`: what came back from the job's writable
    /// mounts (empty while it runs, when it had none, or once purged).
    pub async fn outputs(&self, slug: &Slug, id: &str) -> Result<Vec<JobOutput>, BrokerError> {
        let record = self.job(slug, id).await?;
        self.inner
            .store
            .job_outputs(&record.id)
            .await
            .map_err(|e| unavailable("reading the job's outputs", e))
    }

    /// Reads back a finished job's writable mounts and checks each archive
    /// with the rules of an input archive (the job is as untrusted as its
    /// inputs, and the challenge may unpack the result).
    async fn collect_outputs(&self, id: &str, targets: &[String]) -> Vec<JobOutput> {
        let failed = |target: &String, why: String| JobOutput {
            target: target.clone(),
            archive_b64: None,
            error: Some(why),
        };
        let results = match self.inner.orchestrator.job_outputs(id, targets.len()).await {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "could not read the job's writable mounts");
                return targets
                    .iter()
                    .map(|t| failed(t, format!("the output could not be read: {e}")))
                    .collect();
            }
        };
        targets
            .iter()
            .zip(results.into_iter().chain(std::iter::repeat_with(|| {
                Err(base_shim::frame::OutputError::Missing)
            })))
            .map(|(target, result)| match result {
                Ok(archive) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&archive);
                    match archive::decode(&b64, &ArchiveLimits::default()) {
                        Ok(_) => JobOutput {
                            target: target.clone(),
                            archive_b64: Some(b64),
                            error: None,
                        },
                        Err(e) => failed(target, format!("the output was refused: {e}")),
                    }
                }
                Err(e) => failed(target, e.to_string()),
            })
            .collect()
    }

    /// Waits until the job is terminal, or `timeout` passes (then returns
    /// it as it is).
    pub async fn wait(
        &self,
        slug: &Slug,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<JobRecord, BrokerError> {
        let wait = async {
            let signal = lock(&self.inner.done).get(id).map(watch::Sender::subscribe);
            if let Some(mut rx) = signal {
                // A closed channel only means the finisher is done and
                // dropped it; the store has the final record either way.
                let _ = rx.wait_for(Option::is_some).await;
            }
            loop {
                let record = self.job(slug, id).await?;
                if record.state.is_terminal() {
                    return Ok(record);
                }
                // No live driver here (e.g. recovered elsewhere): poll.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        match timeout {
            None => wait.await,
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(result) => result,
                Err(_) => self.job(slug, id).await,
            },
        }
    }

    /// One of the challenge's jobs (404 for another challenge's).
    pub async fn job(&self, slug: &Slug, id: &str) -> Result<JobRecord, BrokerError> {
        self.inner
            .store
            .get_job(id)
            .await
            .map_err(|e| unavailable("reading the job", e))?
            .filter(|r| r.slug == *slug)
            .ok_or_else(|| BrokerError::NotFound(format!("job '{id}' not found")))
    }

    /// The challenge's jobs, newest first.
    pub async fn jobs(
        &self,
        slug: &Slug,
        filter: JobFilter,
    ) -> Result<Vec<JobRecord>, BrokerError> {
        let filter = JobFilter {
            slug: Some(slug.clone()),
            ..filter
        };
        self.inner
            .store
            .list_jobs(&filter)
            .await
            .map_err(|e| unavailable("listing jobs", e))
    }

    /// Stops the job on its worker and removes it; returns its final record
    /// (`cancelled`, or however it had already ended).
    pub async fn cancel(&self, slug: &Slug, id: &str) -> Result<JobRecord, BrokerError> {
        let record = self.job(slug, id).await?;
        if !record.state.is_terminal() {
            self.finish(id, Ending::Cancelled).await;
        }
        self.wait(slug, id, Some(Duration::from_secs(60))).await
    }

    /// `POST /v1/docker/cleanup`: cancels every unfinished job of the
    /// challenge with this `job_id`, and removes any job service of theirs
    /// still on the cluster.
    pub async fn cleanup(&self, slug: &Slug, job_id: &str) -> Result<(), BrokerError> {
        let active = self
            .jobs(
                slug,
                JobFilter {
                    job_id: Some(job_id.to_string()),
                    active_only: true,
                    ..JobFilter::default()
                },
            )
            .await?;
        for record in active {
            self.finish(&record.id, Ending::Cancelled).await;
        }
        Ok(())
    }

    /// `POST /v1/docker/list`: the challenge's unfinished jobs, optionally
    /// for one `job_id`, in the Python platform's container shape.
    pub async fn list(
        &self,
        slug: &Slug,
        job_id: Option<&str>,
    ) -> Result<ListResponse, BrokerError> {
        let records = self
            .jobs(
                slug,
                JobFilter {
                    job_id: job_id.map(str::to_string),
                    active_only: true,
                    ..JobFilter::default()
                },
            )
            .await?;
        Ok(ListResponse {
            containers: records.iter().map(container_info).collect(),
        })
    }

    /// The job's output: the live tail while it runs, the stored tail after.
    pub async fn logs(&self, slug: &Slug, id: &str) -> Result<JobLogs, BrokerError> {
        let record = self.job(slug, id).await?;
        if !record.state.is_terminal() {
            match self
                .inner
                .orchestrator
                .job_logs(id, self.inner.config.log_limit_bytes)
                .await
            {
                Ok(logs) => return Ok(logs),
                // Ended meanwhile: the record has the tail now.
                Err(OrchestratorError::NotFound(_)) => {}
                Err(e) => return Err(unavailable("reading the job's logs", e)),
            }
        }
        let record = self.job(slug, id).await?;
        Ok(JobLogs {
            stdout: record.stdout_tail,
            stderr: record.stderr_tail,
            truncated: false,
        })
    }

    /// The job's output as it is produced, until it ends; `None` when the
    /// job has already ended (its stored tail is then the whole answer).
    pub async fn follow_logs(
        &self,
        slug: &Slug,
        id: &str,
    ) -> Result<Option<LogStream>, BrokerError> {
        let record = self.job(slug, id).await?;
        if record.state.is_terminal() {
            return Ok(None);
        }
        let live = match self.inner.orchestrator.follow_job_logs(id).await {
            Ok(stream) => stream,
            Err(OrchestratorError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(unavailable("following the job's logs", e)),
        };
        // The job's service (and with it the live output) is removed as
        // soon as the job ends, which can cut the live stream short by the
        // last writes. So count what was sent, and once the job is finished
        // send what its stored tail has beyond that.
        let sent = Arc::new(Mutex::new([0usize; 2]));
        let counter = Arc::clone(&sent);
        let live = live.inspect(move |item| {
            if let Ok(chunk) = item {
                lock(&counter)[stream_index(chunk.stream)] += chunk.data.len();
            }
        });
        let (broker, slug, id) = (self.clone(), slug.clone(), id.to_string());
        let rest = futures::stream::once(async move {
            let Ok(record) = broker.wait(&slug, &id, Some(Duration::from_secs(30))).await else {
                return Vec::new();
            };
            let sent = *lock(&sent);
            [
                (LogStreamKind::Stdout, record.stdout_tail),
                (LogStreamKind::Stderr, record.stderr_tail),
            ]
            .into_iter()
            .filter_map(|(stream, tail)| {
                let from = sent[stream_index(stream)];
                // Only when the tail holds the whole output can the unsent
                // part be told apart from what was cut.
                let whole = tail.len() < broker.inner.config.log_limit_bytes;
                let rest = tail
                    .as_bytes()
                    .get(from..)
                    .filter(|r| whole && !r.is_empty())?;
                Some(Ok(LogChunk {
                    stream,
                    data: bytes::Bytes::copy_from_slice(rest),
                }))
            })
            .collect()
        })
        .flat_map(futures::stream::iter);
        Ok(Some(Box::pin(live.chain(rest))))
    }

    /// Finishes what a previous broker process left: every unfinished record
    /// is matched with the cluster (finished if its job ended or vanished,
    /// resumed with a new driver otherwise), and job services without a
    /// record are removed. Leases go with their records.
    pub async fn recover(&self) -> Result<Recovery, BrokerError> {
        let inner = &self.inner;
        let open = inner
            .store
            .list_jobs(&JobFilter {
                active_only: true,
                ..JobFilter::default()
            })
            .await
            .map_err(|e| unavailable("listing unfinished jobs", e))?;
        let cluster = inner
            .orchestrator
            .list_jobs(None)
            .await
            .map_err(|e| unavailable("listing the cluster's jobs", e))?;
        let on_cluster: HashMap<&str, &JobStatus> =
            cluster.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut report = Recovery::default();
        for record in &open {
            match on_cluster.get(record.id.as_str()) {
                Some(status) if status.state.is_terminal() => {
                    self.finish(&record.id, Ending::Exited((*status).clone()))
                        .await;
                    report.finished += 1;
                }
                Some(_) => {
                    let (done_tx, _) = watch::channel(None);
                    lock(&inner.done).insert(record.id.clone(), done_tx);
                    tokio::spawn(self.clone().drive(record.id.clone()));
                    report.resumed += 1;
                }
                None => {
                    self.finish(
                        &record.id,
                        Ending::Lost(
                            "the job's service was gone when the broker restarted".to_string(),
                        ),
                    )
                    .await;
                    report.finished += 1;
                }
            }
        }
        let known: HashSet<&str> = open.iter().map(|r| r.id.as_str()).collect();
        for status in &cluster {
            if !known.contains(status.id.as_str()) && !self.is_recorded_active(&status.id).await {
                self.remove_service(&status.id).await;
                report.orphans_removed += 1;
            }
        }
        tracing::info!(?report, "broker recovered");
        Ok(report)
    }

    /// One pass of the timeout reaper over the cluster's own view of its
    /// jobs: running past `started_at + timeout`, or unstarted past the hard
    /// deadline, is timed out; a job service whose record is terminal or
    /// missing is removed. Returns how many jobs it acted on.
    pub async fn reap_once(&self) -> Result<usize, BrokerError> {
        let cluster = self
            .inner
            .orchestrator
            .list_jobs(None)
            .await
            .map_err(|e| unavailable("listing the cluster's jobs", e))?;
        let now = Utc::now();
        let mut acted = 0;
        for status in &cluster {
            let record = self
                .inner
                .store
                .get_job(&status.id)
                .await
                .map_err(|e| unavailable("reading a job", e))?;
            match record {
                Some(r) if !r.state.is_terminal() => {
                    let wait = self.inner.config.schedule_timeout;
                    if let Some(why) = unscheduled(&r, status, wait, now) {
                        self.finish(&status.id, Ending::NotScheduled(why)).await;
                        acted += 1;
                    } else if let Some(why) = overdue(status, now) {
                        self.finish(&status.id, Ending::TimedOut(why)).await;
                        acted += 1;
                    }
                }
                // Finished (or never recorded) but still on the cluster: a
                // removal that failed earlier, or a crash between record
                // and removal.
                _ => {
                    if !self.is_finishing(&status.id) {
                        self.remove_service(&status.id).await;
                        acted += 1;
                    }
                }
            }
        }
        match self.repair_abandoned(&cluster).await {
            Ok(n) => acted += n,
            Err(e) => tracing::warn!(error = %e, "reaper could not look for abandoned jobs"),
        }
        // What removed jobs left (Swarm: their mount configs). Not counted
        // in `acted`, which counts jobs.
        match self.inner.orchestrator.prune_job_leftovers().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(objects = n, "reaper pruned what removed jobs left behind"),
            Err(e) => tracing::warn!(error = %e, "reaper could not prune job leftovers"),
        }
        self.purge_expired(now).await;
        Ok(acted)
    }

    /// Finishes the unfinished records that no driver of this broker
    /// follows and whose job is no longer running on the cluster (`cluster`,
    /// listed before): the job ended or its service is gone, but its end
    /// was never written — a finisher that gave up, or a master that died
    /// between removing the service and the write. Finishing them writes
    /// the terminal record, which gives back the challenge's concurrency
    /// slot and the job's GPU lease without a restart. Jobs still running
    /// without a driver are left to the overdue check. A halted broker
    /// repairs nothing (its jobs belong to whoever recovers them).
    async fn repair_abandoned(&self, cluster: &[JobStatus]) -> Result<usize, BrokerError> {
        if *self.inner.halted.borrow() {
            return Ok(0);
        }
        let open = self
            .inner
            .store
            .list_jobs(&JobFilter {
                active_only: true,
                ..JobFilter::default()
            })
            .await
            .map_err(|e| unavailable("listing unfinished jobs", e))?;
        // A barrier: an admission whose record is in `open` registers its
        // driver before it releases this lock, so past this line every job
        // being started has its entry in `done`.
        drop(self.inner.admission.lock().await);
        let on_cluster: HashMap<&str, &JobStatus> =
            cluster.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut repaired = 0;
        for record in &open {
            if self.is_finishing(&record.id) || lock(&self.inner.done).contains_key(&record.id) {
                continue;
            }
            let ending = match on_cluster.get(record.id.as_str()) {
                None => Ending::Lost(
                    "the job's service was gone and its end had not been recorded".to_string(),
                ),
                Some(status) if status.state.is_terminal() => Ending::Exited((*status).clone()),
                Some(_) => continue,
            };
            tracing::warn!(job = %record.id, slug = %record.slug, "reaper finishes a job no driver follows (its end was never recorded)");
            self.finish(&record.id, ending).await;
            repaired += 1;
        }
        Ok(repaired)
    }

    /// Deletes outputs and finished job records past their retention, at
    /// most once per `purge_interval` (the reaper runs every few seconds).
    async fn purge_expired(&self, now: DateTime<Utc>) {
        {
            let mut last = lock(&self.inner.last_purge);
            if last.is_some_and(|t| t.elapsed() < self.inner.config.purge_interval) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let cutoff = |keep: Duration| {
            TimeDelta::from_std(keep)
                .ok()
                .and_then(|keep| now.checked_sub_signed(keep))
        };
        let store = &self.inner.store;
        if let Some(before) = cutoff(self.inner.config.output_retention) {
            match store.purge_job_outputs(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(outputs = n, "reaper purged expired job outputs"),
                Err(e) => tracing::warn!(error = %e, "reaper could not purge job outputs"),
            }
        }
        if let Some(before) = cutoff(self.inner.config.job_retention) {
            match store.purge_jobs(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "reaper purged expired job records"),
                Err(e) => tracing::warn!(error = %e, "reaper could not purge job records"),
            }
        }
    }

    /// Runs [`Broker::reap_once`] every `reap_interval` until `shutdown`.
    pub async fn run_reaper(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let mut ticker = tokio::time::interval(self.inner.config.reap_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {
                    if let Err(e) = self.reap_once().await {
                        tracing::warn!(error = %e, "reaper pass failed");
                    }
                }
            }
        }
    }

    /// GPUs the cluster offers (or the configured override).
    async fn gpu_capacity(&self) -> Result<u32, BrokerError> {
        match self.inner.config.gpu_capacity {
            Some(n) => Ok(n),
            None => self
                .inner
                .orchestrator
                .gpu_capacity()
                .await
                .map_err(|e| unavailable("reading the cluster's GPU capacity", e)),
        }
    }

    /// Refuses a job when all challenges together have the broker's
    /// `max_jobs` unfinished (429, like a challenge's own cap). Called with
    /// the admission lock held.
    async fn check_total_jobs(&self) -> Result<(), BrokerError> {
        let Some(max) = self.inner.config.max_jobs else {
            return Ok(());
        };
        let active = self
            .inner
            .store
            .list_jobs(&JobFilter {
                active_only: true,
                ..JobFilter::default()
            })
            .await
            .map_err(|e| unavailable("counting unfinished jobs", e))?
            .len();
        if active >= usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(BrokerError::TooManyJobs(format!(
                "docker_quota_exceeded: the broker is at its total concurrency cap ({active}/{max} active workloads)"
            )));
        }
        Ok(())
    }

    /// Unpacks every mount's archive: the job's [`MountBudget`] is checked
    /// from the request first, then the archives are decoded (each checked
    /// by [`archive`], none inflated past what the budget has left) on a
    /// blocking thread, so a large archive never stalls the runtime.
    async fn materialize_mounts(
        &self,
        mounts: &[MountRequest],
    ) -> Result<Vec<JobMount>, BrokerError> {
        let budget = self.inner.config.mount_budget;
        request::check_mount_budget(mounts, &budget)?;
        if mounts.is_empty() {
            return Ok(Vec::new());
        }
        let _permit = Arc::clone(&self.inner.decoding)
            .acquire_owned()
            .await
            .map_err(|e| unavailable("decoding mounts", e))?;
        let mounts = mounts.to_vec();
        let limits = self.inner.config.archive_limits;
        let decoded = tokio::task::spawn_blocking(move || decode_mounts(&mounts, limits, &budget))
            .await
            .map_err(|e| unavailable("decoding mounts", e))??;
        request::check_mount_contents(&decoded, &budget)?;
        Ok(decoded)
    }

    /// Stops following jobs without ending them, as a crash or a shutdown
    /// would: records stay unfinished and jobs keep running on the
    /// cluster, for the next start's [`Broker::recover`] (or the reaper of
    /// another broker over the same store) to take over. For embedders that
    /// hand jobs over without exiting the process, and for crash tests;
    /// later submissions are still admitted but not driven.
    pub fn halt(&self) {
        self.inner.halted.send_replace(true);
    }

    /// Follows one job to its end unless the broker is halted first.
    async fn drive(self, id: String) {
        let mut halted = self.inner.halted.subscribe();
        tokio::select! {
            _ = halted.wait_for(|h| *h) => {
                tracing::debug!(job = %id, "broker halted; leaving the job to recovery");
            }
            () = self.drive_until_done(id.clone()) => {}
        }
    }

    /// Waits on the cluster, records the job's start, and times it out
    /// `timeout_seconds` after that start.
    async fn drive_until_done(self, id: String) {
        let orchestrator = Arc::clone(&self.inner.orchestrator);
        loop {
            let record = match self.inner.store.get_job(&id).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "driver could not read its job; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if record.state.is_terminal() {
                return;
            }
            let now = Utc::now();
            let timeout = spec_timeout(&record);
            let until = match record.started_at {
                Some(started) => started + timeout,
                None => record.deadline_at.unwrap_or(now + timeout),
            };
            // Not started: look again soon, to learn the start time.
            let slice = if record.started_at.is_some() {
                (until - now).to_std().unwrap_or(Duration::ZERO)
            } else {
                Duration::from_secs(2).min((until - now).to_std().unwrap_or(Duration::ZERO))
            };
            match orchestrator.wait_job(&id, slice).await {
                Ok(status) if status.state.is_terminal() => {
                    self.finish(&id, Ending::Exited(status)).await;
                    return;
                }
                Ok(status) => {
                    // Never taken by a node: it could not run (checked
                    // first, as its deadline may have passed too).
                    let wait = self.inner.config.schedule_timeout;
                    if let Some(why) = unscheduled(&record, &status, wait, Utc::now()) {
                        tracing::warn!(job = %id, reason = %why, "no node took the job");
                        self.finish(&id, Ending::NotScheduled(why)).await;
                        return;
                    }
                    if let Some(why) = overdue_record(&record, &status, Utc::now()) {
                        self.finish(&id, Ending::TimedOut(why)).await;
                        return;
                    }
                    self.note_progress(record, &status).await;
                }
                Err(OrchestratorError::NotFound(_)) => {
                    self.finish(
                        &id,
                        Ending::Lost("the job's service disappeared".to_string()),
                    )
                    .await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "waiting on a job failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Records a state change (queued → pulling → running) and the start.
    async fn note_progress(&self, mut record: JobRecord, status: &JobStatus) {
        let started = record.started_at.or(status.started_at);
        if record.state == status.state && record.started_at == started {
            return;
        }
        record.state = status.state;
        record.started_at = started;
        record.node_id = status.node_id.clone().or(record.node_id);
        if let Err(e) = self.inner.store.update_job(&record).await {
            tracing::warn!(job = %record.id, error = %e, "could not record the job's progress");
        }
    }

    fn is_finishing(&self, id: &str) -> bool {
        lock(&self.inner.finishing).contains(id)
    }

    async fn is_recorded_active(&self, id: &str) -> bool {
        matches!(self.inner.store.get_job(id).await, Ok(Some(r)) if !r.state.is_terminal())
    }

    /// Ends a job exactly once: captures its output tail, removes its
    /// service, then writes the terminal record (which releases its lease)
    /// and wakes whoever waits. A second caller returns at once.
    async fn finish(&self, id: &str, ending: Ending) {
        if !lock(&self.inner.finishing).insert(id.to_string()) {
            return;
        }
        let outcome = self.finish_claimed(id, ending).await;
        lock(&self.inner.finishing).remove(id);
        let sender = lock(&self.inner.done).remove(id);
        if let (Some(tx), Some(record)) = (sender, outcome) {
            tx.send_replace(Some(record));
        }
    }

    async fn finish_claimed(&self, id: &str, ending: Ending) -> Option<JobRecord> {
        let inner = &self.inner;
        let read = self
            .persist("reading the job to finish it", id, || {
                inner.store.get_job(id)
            })
            .await?;
        let mut record = match read {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.remove_service(id).await;
                return None;
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot read the job to finish it; the reaper will retry");
                return None;
            }
        };
        if record.state.is_terminal() {
            self.remove_service(id).await;
            return Some(record);
        }
        let logs = match inner
            .orchestrator
            .job_logs(id, inner.config.log_limit_bytes)
            .await
        {
            Ok(logs) => logs,
            Err(OrchestratorError::NotFound(_)) => JobLogs::default(),
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "could not read the job's output");
                JobLogs::default()
            }
        };
        let targets = writable_targets(&record);
        let outputs = match &ending {
            _ if targets.is_empty() => Vec::new(),
            // Only a command that ran has outputs: a job that never ran
            // would hand back its seed (or a missing-output error).
            Ending::Exited(status) if settle(status).exit_code.is_some() => {
                self.collect_outputs(id, &targets).await
            }
            Ending::Exited(_) | Ending::NotScheduled(_) => {
                not_collected(&targets, "not collected: the job never ran")
            }
            _ => not_collected(
                &targets,
                "not collected: the job was stopped before its command ended",
            ),
        };
        self.remove_service(id).await;
        let now = crate::model::now();
        if !outputs.is_empty() {
            // Before the terminal write, so whoever the ending wakes finds
            // them; a job someone else ended first keeps that ending's.
            let stored = self
                .persist("storing the job's outputs", id, || {
                    inner.store.put_job_outputs(id, &outputs, now)
                })
                .await?;
            match stored {
                Ok(()) | Err(StoreError::JobFinished(_)) => {}
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "could not store the job's outputs")
                }
            }
        }
        record.stdout_tail = logs.stdout;
        record.stderr_tail = logs.stderr;
        record.finished_at = Some(now);
        match ending {
            Ending::Exited(status) => {
                let settled = settle(&status);
                record.state = settled.state;
                record.exit_code = settled.exit_code;
                record.error = settled.error;
                record.started_at = record.started_at.or(status.started_at);
                record.node_id = status.node_id.or(record.node_id.take());
                record.finished_at = status.finished_at.or(Some(now));
            }
            Ending::TimedOut(why) => {
                record.state = JobState::TimedOut;
                record.exit_code = Some(TIMEOUT_RETURNCODE);
                record.error = Some(why);
            }
            Ending::Cancelled => {
                record.state = JobState::Cancelled;
                record.error = Some("cancelled by its challenge".to_string());
            }
            Ending::Lost(why) | Ending::NotScheduled(why) => {
                record.state = JobState::Failed;
                record.error = Some(why);
            }
        }
        // Terminal write: releases the GPU lease (and, the record being
        // terminal, the challenge's concurrency slot) in the same
        // transaction. Retried until it lands: the service is already
        // gone, so a record left open would hold both until someone
        // repaired it, and the job's real ending would be lost.
        let written = self
            .persist("recording the job's end", id, || {
                inner.store.update_job(&record)
            })
            .await?;
        match written {
            Ok(()) => {}
            // Someone else recorded the ending first: theirs stands.
            Err(StoreError::JobFinished(_)) => {
                return match inner.store.get_job(id).await {
                    Ok(Some(stored)) => Some(stored),
                    _ => Some(record),
                };
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "could not record the job's end; the reaper will repair it");
                return None;
            }
        }
        tracing::info!(job = %id, state = record.state.as_str(), exit_code = ?record.exit_code, "job finished");
        Some(record)
    }

    /// Runs a store operation until it answers with something other than
    /// a transient failure (the database unreachable, restarting, or
    /// dropping connections), backing off from 100 ms to
    /// [`STORE_RETRY_MAX_DELAY`] between tries, for as long as it takes.
    /// `None` when the broker is halted meanwhile (the job is then left to
    /// the next broker's recovery, like every other job of a halted one).
    async fn persist<T, F, Fut>(&self, what: &str, id: &str, op: F) -> Option<Result<T, StoreError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(STORE_RETRY_MAX_DELAY)
            .without_max_times()
            .with_jitter();
        let retried = op
            .retry(backoff)
            .when(is_transient)
            .notify(|e, after| {
                tracing::warn!(job = %id, error = %e, retry_in = ?after, "{what} failed; retrying until the store answers");
            });
        let mut halted = self.inner.halted.subscribe();
        tokio::select! {
            result = retried => Some(result),
            _ = halted.wait_for(|h| *h) => None,
        }
    }

    /// Removes a job's service (and whatever else the orchestrator made
    /// for it); failures are logged and left to the reaper.
    async fn remove_service(&self, id: &str) {
        if let Err(e) = self.inner.orchestrator.remove_job(id).await {
            tracing::warn!(job = %id, error = %e, "could not remove the job; the reaper will retry");
        }
    }
}

/// Whether a store failure may go away by itself (the database down or
/// restarting: connections refused or cut, the pool timing out), so the
/// operation is worth retrying. Answers such as `JobFinished` or
/// `NotFound` are final.
fn is_transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::Database(_))
}

/// Locks a std mutex, recovering the data if a panicking holder poisoned it
/// (the maps stay consistent: every update is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One "not collected" output per writable mount, saying why.
fn not_collected(targets: &[String], why: &str) -> Vec<JobOutput> {
    targets
        .iter()
        .map(|t| JobOutput {
            target: t.clone(),
            archive_b64: None,
            error: Some(why.to_string()),
        })
        .collect()
}

/// Decodes a job's mount archives in request order (blocking: call it off
/// the async runtime). Each archive may inflate only to what the job's
/// budget has left after the ones before it.
fn decode_mounts(
    mounts: &[MountRequest],
    limits: ArchiveLimits,
    budget: &MountBudget,
) -> Result<Vec<JobMount>, BrokerError> {
    let mut left = u64::try_from(budget.max_file_bytes).unwrap_or(u64::MAX);
    let mut decoded = Vec::with_capacity(mounts.len());
    for m in mounts {
        let bad =
            |e: archive::ArchiveError| BrokerError::Invalid(format!("mount '{}': {e}", m.target));
        // A writable mount may start empty: an output directory.
        if !m.read_only && m.archive_b64.trim().is_empty() {
            decoded.push(JobMount {
                target: m.target.clone(),
                read_only: false,
                files: Default::default(),
            });
            continue;
        }
        let capped = limits.capped_to(left);
        let files = archive::decode(&m.archive_b64, &capped).map_err(|e| match e {
            // Stopped by what the job's budget had left, not by the
            // archive's own limit: say which limit it was.
            archive::ArchiveError::TotalTooLarge { .. }
                if capped.max_total_bytes < limits.max_total_bytes =>
            {
                BrokerError::Invalid(format!(
                    "mount '{}': the job's mounted files would exceed {} bytes in all; at most \
                     that many are accepted per job (on Swarm they are configs, replicated to \
                     every manager)",
                    m.target, budget.max_file_bytes
                ))
            }
            e => bad(e),
        })?;
        let files = match m.source_type {
            SourceType::Directory => files,
            // A file mount places one file at the target itself, which the
            // orchestrators spell as the empty name.
            SourceType::File => {
                let content = archive::single_file(files, &m.source_name).map_err(bad)?;
                std::iter::once((String::new(), content)).collect()
            }
        };
        let used: usize = files.values().map(Vec::len).sum();
        left = left.saturating_sub(u64::try_from(used).unwrap_or(u64::MAX));
        decoded.push(JobMount {
            target: m.target.clone(),
            read_only: m.read_only,
            files,
        });
    }
    Ok(decoded)
}

/// Index of a stream in per-stream counters.
fn stream_index(stream: LogStreamKind) -> usize {
    match stream {
        LogStreamKind::Stdout => 0,
        LogStreamKind::Stderr => 1,
    }
}

/// A fresh job id: 16 hex characters (64 random bits), valid as a Swarm
/// service name suffix and a path component.
fn new_job_id() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode(bytes)
}

/// The hard deadline: the timeout plus the start grace, from `now`.
fn deadline(now: DateTime<Utc>, timeout_seconds: u64, grace: Duration) -> DateTime<Utc> {
    let secs = i64::try_from(timeout_seconds.saturating_add(grace.as_secs())).unwrap_or(i64::MAX);
    now.checked_add_signed(TimeDelta::seconds(secs.min(10 * 86_400)))
        .unwrap_or(now)
}

/// The job's `timeout_seconds`, from its stored spec summary.
fn spec_timeout(record: &JobRecord) -> TimeDelta {
    let secs = record
        .spec
        .get("timeout_seconds")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(request::DEFAULT_TIMEOUT_SECONDS);
    TimeDelta::seconds(secs.clamp(1, request::MAX_TIMEOUT_SECONDS))
}

/// Why the cluster's view of a job says it is overdue, if it is.
fn overdue(status: &JobStatus, now: DateTime<Utc>) -> Option<String> {
    if let (Some(started), Some(timeout)) = (status.started_at, status.timeout_seconds) {
        let limit = i64::try_from(timeout).unwrap_or(request::MAX_TIMEOUT_SECONDS);
        if now >= started + TimeDelta::seconds(limit) {
            return Some(format!("timed out after {timeout} s of running"));
        }
    }
    match status.deadline_at {
        Some(deadline) if now >= deadline => Some(
            "timed out: the job did not finish before its deadline (it may never have started)"
                .to_string(),
        ),
        _ => None,
    }
}

/// [`overdue`] with the broker's own record as a second source of the start
/// time and the timeout (the record knows them even when the cluster no
/// longer reports `started_at`).
fn overdue_record(record: &JobRecord, status: &JobStatus, now: DateTime<Utc>) -> Option<String> {
    let started = record.started_at.or(status.started_at);
    if let Some(started) = started {
        let timeout = spec_timeout(record);
        if now >= started + timeout {
            return Some(format!(
                "timed out after {} s of running",
                timeout.num_seconds()
            ));
        }
    }
    let status = JobStatus {
        started_at: None,
        ..status.clone()
    };
    overdue(&status, now).or_else(|| match record.deadline_at {
        Some(d) if now >= d => {
            Some("timed out: the job did not start before its deadline".to_string())
        }
        _ => None,
    })
}

/// Why a job that no node has taken yet is given up on, once it has been
/// queued for `wait` (or its own timeout, if shorter) since it was
/// submitted; `None` while it may still be scheduled, or once it has moved
/// on (pulling, running: the start grace and the timeout apply then).
fn unscheduled(
    record: &JobRecord,
    status: &JobStatus,
    wait: Duration,
    now: DateTime<Utc>,
) -> Option<String> {
    if record.started_at.is_some()
        || record.state != JobState::Queued
        || status.state != JobState::Queued
    {
        return None;
    }
    let limit = TimeDelta::from_std(wait)
        .unwrap_or(TimeDelta::MAX)
        .min(spec_timeout(record));
    if now < record.created_at.checked_add_signed(limit)? {
        return None;
    }
    let reason = status
        .message
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Some(format!(
        "the job could not run: no node took it within {} s{reason}",
        limit.num_seconds()
    ))
}

/// How a job the cluster reports ended is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settled {
    state: JobState,
    exit_code: Option<i64>,
    error: Option<String>,
}

/// The record of a job the cluster reports ended. Only a job that exited
/// 0 succeeded; anything else that claims exit code 0 — a task the engine
/// rejected (its image could not be pulled, a mount was refused) reports
/// `ExitCode: 0` with no container at all — never ran, so it is recorded
/// failed with no exit code of its own (return code 125) and the
/// engine's reason as its error.
fn settle(status: &JobStatus) -> Settled {
    let reason = || {
        status
            .message
            .clone()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| "the cluster gave no reason".to_string())
    };
    match (status.state, status.exit_code) {
        (JobState::Succeeded, Some(0) | None) => Settled {
            state: JobState::Succeeded,
            exit_code: Some(0),
            error: None,
        },
        (state, Some(code)) if code != 0 => Settled {
            // "Succeeded" with a non-zero code is a contradiction: the code wins.
            state: if state == JobState::Succeeded {
                JobState::Failed
            } else {
                state
            },
            exit_code: Some(code),
            error: None,
        },
        (JobState::Cancelled, _) => Settled {
            state: JobState::Cancelled,
            exit_code: None,
            error: Some(reason()),
        },
        _ => Settled {
            state: JobState::Failed,
            exit_code: None,
            error: Some(format!("the job could not run: {}", reason())),
        },
    }
}

/// The targets of a job's writable mounts, in request order, from its
/// stored summary (so a restarted broker still knows them).
fn writable_targets(record: &JobRecord) -> Vec<String> {
    record
        .spec
        .get("mounts")
        .and_then(serde_json::Value::as_array)
        .map(|mounts| {
            mounts
                .iter()
                .filter(|m| m.get("read_only").and_then(serde_json::Value::as_bool) == Some(false))
                .filter_map(|m| m.get("target").and_then(serde_json::Value::as_str))
                .map(|t| t.trim_end_matches('/').to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What is kept of a request: everything but the mount contents.
fn summary(req: &BrokerRunRequest, spec: &crate::orchestrator::JobSpec) -> serde_json::Value {
    serde_json::json!({
        "job_id": req.job_id,
        "task_id": req.task_id,
        "image": req.image,
        "command": req.command,
        "workdir": req.workdir,
        "env_names": req.env.keys().collect::<Vec<_>>(),
        "labels": req.labels,
        "limits": req.limits,
        "mounts": req.mounts.iter().map(|m| serde_json::json!({
            "target": m.target,
            "read_only": m.read_only,
            "source_type": m.source_type,
            "source_name": m.source_name,
        })).collect::<Vec<_>>(),
        "timeout_seconds": spec.timeout_seconds,
    })
}

/// The synchronous run's answer for a finished record.
pub fn run_response(record: &JobRecord) -> BrokerRunResponse {
    let timed_out = record.state == JobState::TimedOut;
    let returncode = if timed_out {
        TIMEOUT_RETURNCODE
    } else {
        record.exit_code.unwrap_or(NO_EXIT_RETURNCODE)
    };
    let mut stderr = record.stderr_tail.clone();
    // A job with no exit code of its own (it never ran, or was stopped):
    // say why after whatever it printed.
    if record.exit_code.is_none()
        && let Some(error) = &record.error
        && !stderr.contains(error.as_str())
    {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(error);
        stderr.push('\n');
    }
    BrokerRunResponse {
        container_name: request::container_name(&record.id),
        stdout: record.stdout_tail.clone(),
        stderr,
        returncode,
        timed_out,
        outputs: Vec::new(),
    }
}

/// A record in the Python platform's `docker ps`-like shape.
fn container_info(record: &JobRecord) -> ContainerInfo {
    let mut labels: std::collections::BTreeMap<String, String> = [
        ("base.challenge".to_string(), record.slug.to_string()),
        ("base.job".to_string(), record.job_id.clone()),
        ("base.job.id".to_string(), record.id.clone()),
    ]
    .into_iter()
    .collect();
    if let Some(task) = &record.task_id {
        labels.insert("base.task".to_string(), task.clone());
    }
    ContainerInfo {
        container_id: record.id.clone(),
        container_name: request::container_name(&record.id),
        image: record.image.clone(),
        status: record.state.as_str().to_string(),
        job_id: Some(record.job_id.clone()),
        task_id: record.task_id.clone(),
        created: Some(
            record
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        started: Option<DateTime<Utc>>,
        timeout: Option<u64>,
        deadline: Option<DateTime<Utc>>,
    ) -> JobStatus {
        JobStatus {
            id: "j".into(),
            slug: Slug::parse("ab").unwrap(),
            state: JobState::Running,
            exit_code: None,
            node_id: None,
            started_at: started,
            finished_at: None,
            message: None,
            deadline_at: deadline,
            timeout_seconds: timeout,
        }
    }

    fn record(state: JobState, exit_code: Option<i64>, error: Option<&str>) -> JobRecord {
        JobRecord {
            id: "0123456789abcdef".into(),
            slug: Slug::parse("ab").unwrap(),
            job_id: "j".into(),
            task_id: None,
            image: "x".into(),
            state,
            spec: serde_json::json!({"timeout_seconds": 10}),
            node_id: None,
            gpu_count: 0,
            exit_code,
            error: error.map(str::to_string),
            stdout_tail: "out".into(),
            stderr_tail: String::new(),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            deadline_at: None,
        }
    }

    #[test]
    fn overdue_counts_from_the_start_not_from_creation() {
        let t0 = Utc::now();
        let running = |secs| status(Some(t0), Some(10), Some(t0 + TimeDelta::seconds(secs)));
        // Queued for a long time but started only now: not overdue.
        assert_eq!(
            overdue(
                &status(None, Some(10), Some(t0 + TimeDelta::seconds(700))),
                t0 + TimeDelta::seconds(600)
            ),
            None
        );
        assert_eq!(overdue(&running(700), t0 + TimeDelta::seconds(9)), None);
        assert!(overdue(&running(700), t0 + TimeDelta::seconds(10)).is_some());
        // The hard deadline applies whether or not it started.
        assert!(overdue(&status(None, Some(10), Some(t0)), t0).is_some());
        // No labels (an old service): nothing to act on.
        assert_eq!(
            overdue(&status(Some(t0), None, None), t0 + TimeDelta::days(2)),
            None
        );
    }

    #[test]
    fn record_supplies_the_start_when_the_cluster_forgets_it() {
        let t0 = Utc::now();
        let mut r = record(JobState::Running, None, None);
        r.started_at = Some(t0);
        let s = status(None, Some(10), None);
        assert_eq!(overdue_record(&r, &s, t0 + TimeDelta::seconds(9)), None);
        assert!(overdue_record(&r, &s, t0 + TimeDelta::seconds(10)).is_some());
    }

    #[test]
    fn run_response_maps_endings_to_return_codes() {
        let ok = run_response(&record(JobState::Succeeded, Some(0), None));
        assert_eq!(
            (ok.returncode, ok.timed_out, ok.stdout.as_str()),
            (0, false, "out")
        );
        assert_eq!(ok.container_name, "base-job-0123456789abcdef");
        let t = run_response(&record(JobState::TimedOut, Some(124), Some("timed out")));
        assert_eq!((t.returncode, t.timed_out), (124, true));
        let lost = run_response(&record(JobState::Failed, None, Some("refused")));
        assert_eq!(
            (lost.returncode, lost.stderr.as_str()),
            (NO_EXIT_RETURNCODE, "refused\n")
        );
        let failed = run_response(&record(JobState::Failed, Some(2), Some("ignored")));
        assert_eq!((failed.returncode, failed.stderr.as_str()), (2, ""));
    }

    #[test]
    fn a_job_that_never_ran_is_never_a_success() {
        let mut rejected = status(None, Some(10), None);
        rejected.state = JobState::Failed;
        rejected.exit_code = Some(0);
        rejected.message = Some("No such image: base.local/nope:1".into());
        let s = settle(&rejected);
        assert_eq!((s.state, s.exit_code), (JobState::Failed, None));
        assert_eq!(
            s.error.as_deref(),
            Some("the job could not run: No such image: base.local/nope:1")
        );
        rejected.message = None;
        assert_eq!(
            settle(&rejected).error.as_deref(),
            Some("the job could not run: the cluster gave no reason")
        );

        let mut ok = status(None, Some(10), None);
        ok.state = JobState::Succeeded;
        ok.exit_code = Some(0);
        assert_eq!(
            settle(&ok),
            Settled {
                state: JobState::Succeeded,
                exit_code: Some(0),
                error: None
            }
        );
        ok.exit_code = Some(3);
        assert_eq!(
            (settle(&ok).state, settle(&ok).exit_code),
            (JobState::Failed, Some(3))
        );
    }

    proptest::proptest! {
        /// Whatever the cluster reports, the synchronous answer's return
        /// code is 0 only for a job recorded as succeeded with exit code 0,
        /// and a job without an exit code of its own says why on stderr.
        #[test]
        fn returncode_zero_only_for_a_real_success(
            state in proptest::sample::select(JobState::ALL.to_vec()),
            exit_code in proptest::option::of(-2i64..3),
            message in proptest::option::of("[a-z ]{0,12}"),
        ) {
            let mut st = status(None, Some(10), None);
            st.state = state;
            st.exit_code = exit_code;
            st.message = message;
            let settled = settle(&st);
            let mut r = record(settled.state, settled.exit_code, settled.error.as_deref());
            r.stderr_tail = String::new();
            let response = run_response(&r);
            if response.returncode == 0 {
                proptest::prop_assert_eq!(settled.state, JobState::Succeeded);
            }
            if settled.exit_code.is_none() {
                proptest::prop_assert_eq!(response.returncode, NO_EXIT_RETURNCODE);
                proptest::prop_assert!(!response.stderr.is_empty());
            }
        }
    }

    #[test]
    fn an_unscheduled_job_is_given_up_after_the_schedule_timeout() {
        let t0 = Utc::now();
        let mut r = record(JobState::Queued, None, None);
        r.created_at = t0;
        let mut s = status(None, Some(10), None);
        s.state = JobState::Queued;
        s.message =
            Some("no suitable node (scheduling constraints not satisfied on 1 node)".into());
        let wait = Duration::from_secs(5);
        assert_eq!(unscheduled(&r, &s, wait, t0 + TimeDelta::seconds(4)), None);
        let why = unscheduled(&r, &s, wait, t0 + TimeDelta::seconds(5)).unwrap();
        assert_eq!(
            why,
            "the job could not run: no node took it within 5 s: no suitable node \
             (scheduling constraints not satisfied on 1 node)"
        );
        // The job's own timeout (10 s in its spec) bounds the wait too.
        let long = Duration::from_secs(3600);
        assert_eq!(unscheduled(&r, &s, long, t0 + TimeDelta::seconds(9)), None);
        assert!(unscheduled(&r, &s, long, t0 + TimeDelta::seconds(10)).is_some());
        // Once pulling or started, the start grace and the timeout apply.
        s.state = JobState::Pulling;
        assert_eq!(unscheduled(&r, &s, wait, t0 + TimeDelta::seconds(60)), None);
        s.state = JobState::Queued;
        r.started_at = Some(t0);
        assert_eq!(unscheduled(&r, &s, wait, t0 + TimeDelta::seconds(60)), None);
    }

    #[test]
    fn deadline_adds_the_start_grace_and_is_bounded() {
        let t0 = Utc::now();
        assert_eq!(
            deadline(t0, 60, Duration::from_secs(600)),
            t0 + TimeDelta::seconds(660)
        );
        assert_eq!(
            deadline(t0, u64::MAX, Duration::from_secs(600)),
            t0 + TimeDelta::days(10)
        );
    }

    #[test]
    fn job_ids_are_16_hex_and_distinct() {
        let a = new_job_id();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_job_id());
    }
}
