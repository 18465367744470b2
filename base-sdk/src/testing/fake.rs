//! An in-memory [`Orchestrator`] whose jobs behave like real ones — they
//! queue, start, print, exit, time out and can be stopped — so the broker
//! can be tested end to end without a cluster.
//!
//! A job's command says what it does:
//! - `echo <words…>`: prints the words on stdout and exits 0;
//! - `stderr <words…>`: prints them on stderr and exits 0;
//! - `exit <code>`: exits with that code;
//! - `sleep <seconds>`: runs that long (fractions allowed), then exits 0;
//! - `never-starts`: stays queued with the scheduler's message, like a job
//!   no node can take;
//! - `cat <path>`: prints a mounted file (the mount target joined with its
//!   relative name), exit 1 if there is none;
//! - `write <path> <words…>`: writes the words and a newline to `path`
//!   inside a writable mount (what `job_outputs` returns), exit 1 if no
//!   writable mount holds the path;
//! - anything else: exits 0 silently.
//!
//! An image whose tag is `missing` (`…:missing`) cannot be pulled: the job
//! ends `failed` without starting, reported as Docker reports a rejected
//! task — `ExitCode: 0` (with no container) and the reason
//! `No such image: <image>` — which the broker must not take for success.
//!
//! Challenge services are not simulated (those calls answer `Missing`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::model::Slug;
use crate::orchestrator::{
    ChallengeSpec, JobLogs, JobOutputs, JobSpec, JobState, JobStatus, LogChunk, LogStream,
    LogStreamKind, Orchestrator, OrchestratorError, ServiceState, ServiceStatus,
};

/// One simulated job.
/// A writable mount's target and its files, as the job left them.
type Writable = Vec<(String, std::collections::BTreeMap<String, Vec<u8>>)>;

struct FakeJob {
    status: watch::Sender<JobStatus>,
    writable: Arc<Mutex<Writable>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The fake orchestrator; clones share their jobs.
#[derive(Clone, Default)]
pub struct FakeOrchestrator {
    jobs: Arc<Mutex<HashMap<String, FakeJob>>>,
    /// Every spec ever run, in order (kept after removal, for assertions).
    specs: Arc<Mutex<Vec<JobSpec>>>,
    /// GPUs advertised.
    gpus: Arc<Mutex<u32>>,
    /// How long a job stays queued before it starts.
    start_delay: Arc<Mutex<Duration>>,
    /// Ids of jobs removed, in order.
    removed: Arc<Mutex<Vec<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeOrchestrator {
    /// A fake with no GPUs and jobs that start at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Advertises `gpus` GPUs.
    pub fn with_gpus(self, gpus: u32) -> Self {
        *lock(&self.gpus) = gpus;
        self
    }

    /// Makes every job wait `delay` in `queued` before it starts (as if
    /// its image were pulled).
    pub fn with_start_delay(self, delay: Duration) -> Self {
        *lock(&self.start_delay) = delay;
        self
    }

    /// Every spec run so far.
    pub fn specs(&self) -> Vec<JobSpec> {
        lock(&self.specs).clone()
    }

    /// Ids of jobs present now (not yet removed).
    pub fn live_jobs(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.jobs).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Ids removed so far, in order.
    pub fn removed(&self) -> Vec<String> {
        lock(&self.removed).clone()
    }

    fn status_of(&self, id: &str) -> Result<watch::Receiver<JobStatus>, OrchestratorError> {
        lock(&self.jobs)
            .get(id)
            .map(|j| j.status.subscribe())
            .ok_or_else(|| OrchestratorError::NotFound(format!("job '{id}'")))
    }
}

/// What a command does, parsed once.
enum Behaviour {
    Print(LogStreamKind, String),
    Exit(i64),
    Sleep(Duration),
    NeverStarts,
    Cat(String),
    Write(String, String),
    Nothing,
}

fn behaviour(command: &[String]) -> Behaviour {
    let rest = || command.get(1..).unwrap_or_default().join(" ");
    match command.first().map(String::as_str) {
        Some("echo") => Behaviour::Print(LogStreamKind::Stdout, format!("{}\n", rest())),
        Some("stderr") => Behaviour::Print(LogStreamKind::Stderr, format!("{}\n", rest())),
        Some("exit") => Behaviour::Exit(rest().trim().parse().unwrap_or(1)),
        Some("sleep") => Behaviour::Sleep(Duration::from_secs_f64(
            rest().trim().parse::<f64>().unwrap_or(1.0).max(0.0),
        )),
        Some("never-starts") => Behaviour::NeverStarts,
        Some("cat") => Behaviour::Cat(rest()),
        Some("write") => Behaviour::Write(
            command.get(1).cloned().unwrap_or_default(),
            format!("{}\n", command.get(2..).unwrap_or_default().join(" ")),
        ),
        _ => Behaviour::Nothing,
    }
}

/// The content of a mounted file at `path`, if a mount places one there.
/// `files` as a gzip tar.
fn tar_gz(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // In-memory writes cannot fail.
        let _ = tar.append_data(&mut header, path, data.as_slice());
    }
    tar.into_inner()
        .and_then(flate2::write::GzEncoder::finish)
        .unwrap_or_default()
}

fn mounted_file(spec: &JobSpec, path: &str) -> Option<Vec<u8>> {
    spec.mounts.iter().find_map(|m| {
        m.files.iter().find_map(|(name, content)| {
            let full = if name.is_empty() {
                m.target.clone()
            } else {
                format!("{}/{name}", m.target.trim_end_matches('/'))
            };
            (full == path).then(|| content.clone())
        })
    })
}

#[async_trait]
impl Orchestrator for FakeOrchestrator {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn ensure_challenge(
        &self,
        spec: &ChallengeSpec,
    ) -> Result<ServiceStatus, OrchestratorError> {
        self.challenge_status(&spec.slug).await
    }

    async fn remove_challenge(&self, _slug: &Slug, _purge: bool) -> Result<(), OrchestratorError> {
        Ok(())
    }

    async fn challenge_status(&self, slug: &Slug) -> Result<ServiceStatus, OrchestratorError> {
        Ok(ServiceStatus {
            slug: slug.clone(),
            state: ServiceState::Missing,
            image: None,
            endpoint: None,
            message: None,
            started_at: None,
        })
    }

    async fn list_challenges(&self) -> Result<Vec<ServiceStatus>, OrchestratorError> {
        Ok(Vec::new())
    }

    async fn run_job(&self, spec: &JobSpec) -> Result<JobStatus, OrchestratorError> {
        if let Some(existing) = lock(&self.jobs).get(&spec.id) {
            return Ok(existing.status.borrow().clone());
        }
        lock(&self.specs).push(spec.clone());
        let initial = JobStatus {
            id: spec.id.clone(),
            slug: spec.slug.clone(),
            state: JobState::Queued,
            exit_code: None,
            node_id: None,
            started_at: None,
            finished_at: None,
            message: None,
            deadline_at: Some(spec.deadline_at),
            timeout_seconds: Some(spec.timeout_seconds),
        };
        let (tx, _) = watch::channel(initial.clone());
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let what = behaviour(&spec.command);
        let writable: Arc<Mutex<Writable>> = Arc::new(Mutex::new(
            spec.mounts
                .iter()
                .filter(|m| !m.read_only)
                .map(|m| (m.target.trim_end_matches('/').to_string(), m.files.clone()))
                .collect(),
        ));
        let delay = *lock(&self.start_delay);
        let task = {
            let tx = tx.clone();
            let stdout = Arc::clone(&stdout);
            let stderr = Arc::clone(&stderr);
            let spec = spec.clone();
            let writable = Arc::clone(&writable);
            let image = spec.image.to_string();
            tokio::spawn(async move {
                if matches!(what, Behaviour::NeverStarts) {
                    tx.send_modify(|s| {
                        s.message = Some(
                            "no suitable node (scheduling constraints not satisfied on 1 node)"
                                .to_string(),
                        );
                    });
                    return;
                }
                if image.ends_with(":missing") {
                    tx.send_modify(|s| {
                        s.state = JobState::Failed;
                        s.exit_code = Some(0);
                        s.message = Some(format!("No such image: {image}"));
                        s.finished_at = Some(crate::model::now());
                    });
                    return;
                }
                tokio::time::sleep(delay).await;
                tx.send_modify(|s| {
                    s.state = JobState::Running;
                    s.node_id = Some("fake-node".to_string());
                    s.started_at = Some(crate::model::now());
                });
                let code = match what {
                    Behaviour::Print(LogStreamKind::Stdout, text) => {
                        lock(&stdout).extend_from_slice(text.as_bytes());
                        0
                    }
                    Behaviour::Print(LogStreamKind::Stderr, text) => {
                        lock(&stderr).extend_from_slice(text.as_bytes());
                        0
                    }
                    Behaviour::Exit(code) => code,
                    Behaviour::Sleep(d) => {
                        tokio::time::sleep(d).await;
                        0
                    }
                    Behaviour::Cat(path) => match mounted_file(&spec, &path) {
                        Some(content) => {
                            lock(&stdout).extend_from_slice(&content);
                            0
                        }
                        None => {
                            lock(&stderr)
                                .extend_from_slice(format!("cat: {path}: not found\n").as_bytes());
                            1
                        }
                    },
                    Behaviour::Write(path, text) => {
                        let mut mounts = lock(&writable);
                        let slot = mounts.iter_mut().find_map(|(target, files)| {
                            let rel = path.strip_prefix(target.as_str())?.strip_prefix('/')?;
                            Some(files.entry(rel.to_string()).or_default())
                        });
                        match slot {
                            Some(file) => {
                                file.extend_from_slice(text.as_bytes());
                                0
                            }
                            None => {
                                lock(&stderr).extend_from_slice(
                                    format!("write: {path}: not in a writable mount\n").as_bytes(),
                                );
                                1
                            }
                        }
                    }
                    Behaviour::Nothing | Behaviour::NeverStarts => 0,
                };
                tx.send_modify(|s| {
                    s.state = if code == 0 {
                        JobState::Succeeded
                    } else {
                        JobState::Failed
                    };
                    s.exit_code = Some(code);
                    s.finished_at = Some(crate::model::now());
                });
            })
        };
        lock(&self.jobs).insert(
            spec.id.clone(),
            FakeJob {
                status: tx,
                writable,
                stdout,
                stderr,
                task,
            },
        );
        Ok(initial)
    }

    async fn job_status(&self, id: &str) -> Result<JobStatus, OrchestratorError> {
        let rx = self.status_of(id)?;
        let status = rx.borrow().clone();
        Ok(status)
    }

    async fn wait_job(&self, id: &str, timeout: Duration) -> Result<JobStatus, OrchestratorError> {
        let mut rx = self.status_of(id)?;
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.state.is_terminal())).await;
        // Like Swarm: a job removed while waited on is gone, not finished
        // (the broker must not mistake someone else's removal for an exit).
        if !lock(&self.jobs).contains_key(id) {
            return Err(OrchestratorError::NotFound(format!("job '{id}'")));
        }
        let status = rx.borrow().clone();
        Ok(status)
    }

    async fn job_logs(&self, id: &str, max_bytes: usize) -> Result<JobLogs, OrchestratorError> {
        let jobs = lock(&self.jobs);
        let job = jobs
            .get(id)
            .ok_or_else(|| OrchestratorError::NotFound(format!("job '{id}'")))?;
        let tail = |buf: &Mutex<Vec<u8>>| {
            let buf = lock(buf);
            let start = buf.len().saturating_sub(max_bytes);
            (
                String::from_utf8_lossy(&buf[start..]).into_owned(),
                start > 0,
            )
        };
        let (stdout, a) = tail(&job.stdout);
        let (stderr, b) = tail(&job.stderr);
        Ok(JobLogs {
            stdout,
            stderr,
            truncated: a || b,
        })
    }

    /// Each writable mount's files as a gzip tar, the way the shim packs
    /// them (regular files only, in name order).
    async fn job_outputs(
        &self,
        id: &str,
        writable: usize,
    ) -> Result<JobOutputs, OrchestratorError> {
        let mounts = {
            let jobs = lock(&self.jobs);
            let job = jobs
                .get(id)
                .ok_or_else(|| OrchestratorError::NotFound(format!("job '{id}'")))?;
            lock(&job.writable).clone()
        };
        if mounts.len() != writable {
            return Err(OrchestratorError::InvalidSpec(format!(
                "job '{id}' has {} writable mounts, not {writable}",
                mounts.len()
            )));
        }
        Ok(mounts.iter().map(|(_, files)| Ok(tar_gz(files))).collect())
    }

    async fn remove_job(&self, id: &str) -> Result<(), OrchestratorError> {
        if let Some(job) = lock(&self.jobs).remove(id) {
            job.task.abort();
            job.status.send_modify(|s| {
                if !s.state.is_terminal() {
                    s.state = JobState::Cancelled;
                    s.finished_at = Some(crate::model::now());
                }
            });
            lock(&self.removed).push(id.to_string());
        }
        Ok(())
    }

    async fn list_jobs(&self, slug: Option<Slug>) -> Result<Vec<JobStatus>, OrchestratorError> {
        let jobs = lock(&self.jobs);
        Ok(jobs
            .values()
            .map(|j| j.status.borrow().clone())
            .filter(|s| slug.as_ref().is_none_or(|x| *x == s.slug))
            .collect())
    }

    async fn follow_job_logs(&self, id: &str) -> Result<LogStream, OrchestratorError> {
        let mut rx = self.status_of(id)?;
        let (stdout, stderr) = {
            let jobs = lock(&self.jobs);
            let job = jobs
                .get(id)
                .ok_or_else(|| OrchestratorError::NotFound(format!("job '{id}'")))?;
            (Arc::clone(&job.stdout), Arc::clone(&job.stderr))
        };
        // The fake's output appears all at once, so following waits for
        // the end and then yields both streams.
        let _ = rx.wait_for(|s| s.state.is_terminal()).await;
        let chunks: Vec<Result<LogChunk, OrchestratorError>> = [
            (LogStreamKind::Stdout, lock(&stdout).clone()),
            (LogStreamKind::Stderr, lock(&stderr).clone()),
        ]
        .into_iter()
        .filter(|(_, data)| !data.is_empty())
        .map(|(stream, data)| {
            Ok(LogChunk {
                stream,
                data: bytes::Bytes::from(data),
            })
        })
        .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn gpu_capacity(&self) -> Result<u32, OrchestratorError> {
        Ok(*lock(&self.gpus))
    }
}
