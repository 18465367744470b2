//! Scoring through the broker: pending submissions are evaluated in
//! batches by a broker job running this challenge's own image in its
//! `evaluate` mode, and scored from the job's parsed result. It exists so
//! the example exercises challenge → broker → job → score → weights, the
//! way a real challenge runs miners' code.
//!
//! A miner's POST never waits for a job: it stores the submission as
//! `pending` and wakes this loop. A job that fails, times out or prints an
//! unacceptable result costs every submission of the batch one attempt;
//! after [`MAX_ATTEMPTS`] they are marked `failed` (kept, never counted). A
//! broker that cannot be reached costs no attempt: the batch stays pending
//! and is retried after [`RETRY_DELAY`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base_sdk::broker::client::{BrokerClient, ClientError};
use base_sdk::broker::request::{BrokerRunRequest, Limits};
use base_sdk::orchestrator::JobState;

use crate::Quiz;
use crate::evaluate::{EvalInput, INPUT_ENV, MAX_BATCH, parse_result};

/// How many failed jobs a submission survives before it is marked failed.
pub const MAX_ATTEMPTS: i64 = 3;

/// The wait before retrying after the broker could not be reached.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);

/// How often pending submissions are looked for without a wake-up (covers
/// submissions left pending by a restart).
const POLL: Duration = Duration::from_secs(5);

/// The image run when `QUIZ_JOB_IMAGE` is unset: this crate's own image, as
/// `scripts/build-example-image.sh` tags it.
pub const DEFAULT_JOB_IMAGE: &str =
    concat!("base.local/quiz-challenge:", env!("CARGO_PKG_VERSION"));

/// The job timeout when `QUIZ_JOB_TIMEOUT_SECONDS` is unset.
pub const DEFAULT_JOB_TIMEOUT_SECONDS: u32 = 60;

/// Why the evaluation settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum EvaluatorError {
    /// A `QUIZ_*` variable has an unusable value (names it).
    #[error("invalid {key}: {reason}")]
    InvalidOption {
        /// The variable.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Broker evaluation was asked for but the platform's broker settings
    /// are missing or unreadable.
    #[error(
        "QUIZ_EVALUATE={mode} needs the platform's broker (CHALLENGE_DOCKER_BROKER_URL and \
         CHALLENGE_DOCKER_BROKER_TOKEN_FILE): {source}"
    )]
    NoBroker {
        /// The mode asked for.
        mode: &'static str,
        /// Why the client could not be built.
        #[source]
        source: ClientError,
    },
}

/// How submissions are scored (`QUIZ_EVALUATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvaluateMode {
    /// `auto` (default): by broker job when the platform gave a broker URL,
    /// inline otherwise.
    Auto,
    /// `broker`: by broker job; start-up fails without a broker.
    Broker,
    /// `inline`: scored at submission time in the challenge itself (the
    /// contract tests, a challenge run by hand).
    Inline,
}

/// The evaluation settings (`QUIZ_EVALUATE`, `QUIZ_JOB_IMAGE`,
/// `QUIZ_JOB_TIMEOUT_SECONDS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationOptions {
    /// How submissions are scored.
    pub mode: EvaluateMode,
    /// The image the job runs.
    pub image: String,
    /// The job's timeout.
    pub timeout_seconds: u32,
}

impl EvaluationOptions {
    /// Reads the options through `lookup`; unset or empty keep defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EvaluatorError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mode = match get("QUIZ_EVALUATE").as_deref() {
            None | Some("auto") => EvaluateMode::Auto,
            Some("broker") => EvaluateMode::Broker,
            Some("inline") => EvaluateMode::Inline,
            Some(other) => {
                return Err(EvaluatorError::InvalidOption {
                    key: "QUIZ_EVALUATE",
                    reason: format!("'{other}' is not auto, broker or inline"),
                });
            }
        };
        let image = get("QUIZ_JOB_IMAGE").unwrap_or_else(|| DEFAULT_JOB_IMAGE.to_string());
        let timeout_seconds = match get("QUIZ_JOB_TIMEOUT_SECONDS") {
            None => DEFAULT_JOB_TIMEOUT_SECONDS,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=3600).contains(n))
                .ok_or_else(|| EvaluatorError::InvalidOption {
                    key: "QUIZ_JOB_TIMEOUT_SECONDS",
                    reason: format!("'{v}' is not a whole number from 1 to 3600"),
                })?,
        };
        Ok(Self {
            mode,
            image,
            timeout_seconds,
        })
    }

    /// The evaluator these options and the platform's broker settings
    /// (`broker_url` set or not; `client` builds the client) give: `None`
    /// for inline scoring.
    pub fn resolve(
        &self,
        broker_url: Option<&str>,
        client: impl FnOnce() -> Result<BrokerClient, ClientError>,
    ) -> Result<Option<BrokerEvaluator>, EvaluatorError> {
        let mode = match (self.mode, broker_url.is_some_and(|u| !u.trim().is_empty())) {
            (EvaluateMode::Inline, _) | (EvaluateMode::Auto, false) => return Ok(None),
            (EvaluateMode::Broker, _) => "broker",
            (EvaluateMode::Auto, true) => "auto",
        };
        let client = client().map_err(|source| EvaluatorError::NoBroker { mode, source })?;
        Ok(Some(BrokerEvaluator {
            client,
            image: self.image.clone(),
            timeout_seconds: self.timeout_seconds,
        }))
    }
}

/// Runs batches of pending submissions as broker jobs.
#[derive(Debug, Clone)]
pub struct BrokerEvaluator {
    client: BrokerClient,
    image: String,
    timeout_seconds: u32,
}

/// How one batch's job went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Scored: the broker's job id and the verdict per submission id.
    Scored {
        /// The broker's id of the job.
        job: String,
        /// Submission id → correct.
        verdicts: BTreeMap<i64, bool>,
    },
    /// The job ran and did not give a usable result (costs an attempt).
    JobFailed {
        /// The broker's id of the job, when it was accepted.
        job: Option<String>,
        /// Why.
        reason: String,
    },
    /// The broker could not be reached (costs nothing; retried).
    Unreachable(String),
}

impl BrokerEvaluator {
    /// An evaluator over `client`, running `image` with `timeout_seconds`.
    pub fn new(client: BrokerClient, image: impl Into<String>, timeout_seconds: u32) -> Self {
        Self {
            client,
            image: image.into(),
            timeout_seconds,
        }
    }

    /// The broker request for `input` (pure): the image's `evaluate` mode
    /// with the batch in [`INPUT_ENV`], no network, small limits.
    pub fn request(&self, job_id: &str, input: &EvalInput) -> BrokerRunRequest {
        let limits = Limits {
            cpus: 0.5,
            memory: "128m".to_string(),
            memory_swap: Some("128m".to_string()),
            pids_limit: 64,
            ..Limits::default()
        };
        BrokerRunRequest {
            job_id: job_id.to_string(),
            task_id: None,
            image: self.image.clone(),
            image_pull_policy: Default::default(),
            command: vec!["evaluate".to_string()],
            workdir: None,
            env: BTreeMap::from([(
                INPUT_ENV.to_string(),
                serde_json::to_string(input).unwrap_or_default(),
            )]),
            labels: BTreeMap::new(),
            limits,
            mounts: Vec::new(),
            timeout_seconds: i64::from(self.timeout_seconds),
        }
    }

    /// Runs one job for `input` and waits for its result.
    pub async fn run_batch(&self, job_id: &str, input: &EvalInput) -> BatchOutcome {
        let ids: Vec<i64> = input.items.iter().map(|i| i.id).collect();
        let view = match self.client.submit(&self.request(job_id, input)).await {
            Ok(view) => view,
            // Refused by the broker (bad image, not allowed, …): retrying
            // the same request will not help, so it costs an attempt.
            Err(ClientError::Status { status, detail }) if (400..500).contains(&status) => {
                return BatchOutcome::JobFailed {
                    job: None,
                    reason: format!("the broker refused the job ({status}): {detail}"),
                };
            }
            Err(e) => return BatchOutcome::Unreachable(e.to_string()),
        };
        // The broker ends the job at its timeout; the grace covers
        // scheduling and the broker's own bookkeeping.
        let patience = Duration::from_secs(u64::from(self.timeout_seconds) + 60);
        let ended = match self.client.wait(&view.id, Some(patience)).await {
            Ok(ended) => ended,
            Err(e) => return BatchOutcome::Unreachable(e.to_string()),
        };
        let failed = |reason: String| BatchOutcome::JobFailed {
            job: Some(view.id.clone()),
            reason,
        };
        match ended.state {
            JobState::Succeeded => {}
            state if state.is_terminal() => {
                return failed(format!(
                    "job {} ended {} (exit {:?}): {}",
                    view.id,
                    state.as_str(),
                    ended.exit_code,
                    ended.error.unwrap_or_default()
                ));
            }
            state => {
                let _ = self.client.cancel(&view.id).await;
                return failed(format!(
                    "job {} still {} after {} s; cancelled",
                    view.id,
                    state.as_str(),
                    patience.as_secs()
                ));
            }
        }
        let logs = match self.client.logs(&view.id).await {
            Ok(logs) => logs,
            Err(e) => return BatchOutcome::Unreachable(e.to_string()),
        };
        match parse_result(&logs.stdout, logs.truncated, &ids) {
            Ok(verdicts) => BatchOutcome::Scored {
                job: view.id,
                verdicts,
            },
            Err(e) => failed(format!("job {}: {e}", view.id)),
        }
    }

    /// Evaluates pending submissions of `quiz` until `shutdown` completes.
    pub async fn run(self, quiz: Arc<Quiz>, shutdown: impl Future<Output = ()> + Send + 'static) {
        tokio::pin!(shutdown);
        loop {
            let batch = match quiz.pending_batch(MAX_BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "reading pending submissions");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = quiz.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let input = EvalInput { items: batch };
            let job_id = job_id(&input);
            let outcome = tokio::select! {
                () = &mut shutdown => return,
                outcome = self.run_batch(&job_id, &input) => outcome,
            };
            let ids: Vec<i64> = input.items.iter().map(|i| i.id).collect();
            let recorded = match &outcome {
                BatchOutcome::Scored { job, verdicts } => {
                    tracing::info!(job = %job, scored = verdicts.len(), "batch scored by broker job");
                    quiz.record_verdicts(job, verdicts).await
                }
                BatchOutcome::JobFailed { job, reason } => {
                    tracing::warn!(reason = %reason, "evaluation job failed");
                    quiz.record_failure(&ids, job.as_deref(), reason, MAX_ATTEMPTS)
                        .await
                }
                BatchOutcome::Unreachable(why) => {
                    tracing::warn!(error = %why, "broker unreachable; batch stays pending");
                    Ok(())
                }
            };
            let record_failed = recorded.is_err();
            if let Err(e) = recorded {
                tracing::error!(error = %e, "recording an evaluation");
            }
            if matches!(outcome, BatchOutcome::Unreachable(_)) || record_failed {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    }
}

/// A job id unique per batch and attempt: the first submission id, the
/// batch size and the time in milliseconds (`[A-Za-z0-9._-]`, short).
fn job_id(input: &EvalInput) -> String {
    let first = input.items.first().map_or(0, |i| i.id);
    format!(
        "quiz-eval-{first}-{}-{}",
        input.items.len(),
        chrono::Utc::now().timestamp_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_resolve() {
        let o = EvaluationOptions::from_lookup(|_| None).unwrap();
        assert_eq!(o.mode, EvaluateMode::Auto);
        assert_eq!(o.image, DEFAULT_JOB_IMAGE);
        assert!(o.resolve(None, || unreachable!()).unwrap().is_none());
        let e = o
            .resolve(Some("http://b:1"), || {
                Err(ClientError::Config("no token".into()))
            })
            .unwrap_err();
        assert!(e.to_string().contains("CHALLENGE_DOCKER_BROKER_URL"), "{e}");
        let b = EvaluationOptions::from_lookup(|k| (k == "QUIZ_EVALUATE").then(|| "broker".into()))
            .unwrap();
        assert!(
            b.resolve(None, || Err(ClientError::Config("x".into())))
                .is_err()
        );
        let i = EvaluationOptions::from_lookup(|k| (k == "QUIZ_EVALUATE").then(|| "inline".into()))
            .unwrap();
        assert!(
            i.resolve(Some("http://b:1"), || unreachable!())
                .unwrap()
                .is_none()
        );
        for (key, bad) in [
            ("QUIZ_EVALUATE", "sometimes"),
            ("QUIZ_JOB_TIMEOUT_SECONDS", "0"),
            ("QUIZ_JOB_TIMEOUT_SECONDS", "x"),
        ] {
            let e = EvaluationOptions::from_lookup(|k| (k == key).then(|| bad.to_string()))
                .unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}
