//! The example BASE challenge, as a library: a small but real challenge
//! written only against `base_sdk::challenge`, so it shows an author the
//! whole shape (settings, database, public routes, scoring) and gives the
//! platform something real to run in `dev` and in end-to-end tests.
//!
//! Miners answer arithmetic questions generated deterministically from a
//! seed. Each hotkey gets one answer per question (a second one is 409, so
//! guessing does not pay); its weight is the fraction of all questions it
//! answered correctly. Submissions live in the challenge's own SQLite file
//! on its `/data` volume, keyed by seed, so changing `QUIZ_SEED`
//! starts a fresh round without deleting history.
//!
//! Who the miner is: this example trusts the `hotkey` field of a public
//! submission, which is only acceptable for a demonstration. A real
//! challenge takes submissions through the master's signed upload bridge:
//! the master verifies the miner's sr25519 signature and forwards the body
//! to `POST /internal/v1/bridge/submissions` with the shared token and
//! `X-Base-Verified-Hotkey`. This crate serves that route too, and on the
//! public route a present `X-Base-Verified-Hotkey` wins over the body (the
//! master's proxy strips every inbound `x-base-*` header, so only the
//! master can set it).
//!
//! `run_from_env` is the single entry point of the service, used by this
//! crate's binary and by `base-server dev`, which re-executes itself to run
//! the example challenge as a child process. It reads the platform's
//! `CHALLENGE_*` variables and the quiz's own optional `QUIZ_SEED` and
//! `QUIZ_TASKS` — never a `BASE_*` one. (The quiz's knobs are not
//! `CHALLENGE_*` because the master reserves that prefix: an operator sets
//! them with `base challenge register --env QUIZ_SEED=7`.)

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base_sdk::challenge::{
    self, Challenge, ChallengeError, ChallengeSettings, MasterAuthorized, VERIFIED_HOTKEY_HEADER,
    Weights,
};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

pub mod evaluate;
pub mod evaluator;

use evaluate::EvalItem;
use evaluator::{BrokerEvaluator, EvaluationOptions};

/// The seed used when `QUIZ_SEED` is unset.
pub const DEFAULT_SEED: u64 = 2026;

/// The number of questions when `QUIZ_TASKS` is unset.
pub const DEFAULT_TASK_COUNT: u32 = 10;

/// The most questions a round may have (keeps `/tasks` small).
pub const MAX_TASK_COUNT: u32 = 1000;

/// The longest hotkey accepted (an ss58 address is 47–48 characters).
pub const MAX_HOTKEY_LEN: usize = 64;

/// Everything that can go wrong in the quiz. As an axum response it is
/// `{"detail": "<message>"}` with the status each variant documents.
#[derive(Debug, thiserror::Error)]
pub enum QuizError {
    /// A `QUIZ_*` variable has an unusable value (names it).
    #[error("invalid {key}: {reason}")]
    InvalidOption {
        /// The variable.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The request body is not what the route expects (400).
    #[error("{0}")]
    BadRequest(String),
    /// No hotkey in the body or the verified header (400).
    #[error("hotkey is required (body field 'hotkey' or X-Base-Verified-Hotkey)")]
    MissingHotkey,
    /// The hotkey is too long or has characters an ss58 address cannot have (400).
    #[error("hotkey must be 1 to {MAX_HOTKEY_LEN} ASCII letters or digits")]
    InvalidHotkey,
    /// The question does not exist in this round (404).
    #[error("unknown task {0}")]
    UnknownTask(u32),
    /// No submission with this id (404).
    #[error("submission {0} not found")]
    SubmissionNotFound(i64),
    /// This hotkey already answered this question (409).
    #[error("task {0} already answered by this hotkey")]
    AlreadyAnswered(u32),
    /// The database failed (500; the detail stays generic).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The SDK refused (its own status: settings, master authentication, serving).
    #[error(transparent)]
    Sdk(#[from] ChallengeError),
    /// The evaluation settings are unusable (start-up only).
    #[error(transparent)]
    Evaluation(#[from] evaluator::EvaluatorError),
}

impl QuizError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::MissingHotkey | Self::InvalidHotkey => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownTask(_) | Self::SubmissionNotFound(_) => StatusCode::NOT_FOUND,
            Self::AlreadyAnswered(_) => StatusCode::CONFLICT,
            Self::Sdk(e) => e.status(),
            Self::InvalidOption { .. } | Self::Database(_) | Self::Evaluation(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for QuizError {
    fn into_response(self) -> Response {
        let err = match self {
            // The SDK's own answer (its 503/401/400 details are the contract's).
            Self::Sdk(e) => return e.into_response(),
            other => other,
        };
        let status = err.status();
        let detail = if status.is_server_error() {
            tracing::error!(error = %err, "quiz request failed");
            // Miners see this answer: no SQL text or file paths.
            "internal error".to_string()
        } else {
            err.to_string()
        };
        (status, Json(serde_json::json!({ "detail": detail }))).into_response()
    }
}

/// The round's parameters, from `QUIZ_SEED` and `QUIZ_TASKS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuizOptions {
    /// Seed of the question generator; a new seed is a new round.
    pub seed: u64,
    /// How many questions a round has (1..=[`MAX_TASK_COUNT`]).
    pub task_count: u32,
}

impl Default for QuizOptions {
    fn default() -> Self {
        Self {
            seed: DEFAULT_SEED,
            task_count: DEFAULT_TASK_COUNT,
        }
    }
}

impl QuizOptions {
    /// Reads the options through `lookup` (variable name → value); unset
    /// or empty variables keep their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, QuizError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut o = Self::default();
        if let Some(v) = get("QUIZ_SEED") {
            o.seed = v.parse().map_err(|e| QuizError::InvalidOption {
                key: "QUIZ_SEED",
                reason: format!("'{v}': {e}"),
            })?;
        }
        if let Some(v) = get("QUIZ_TASKS") {
            o.task_count = v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_TASK_COUNT).contains(n))
                .ok_or_else(|| QuizError::InvalidOption {
                    key: "QUIZ_TASKS",
                    reason: format!("'{v}' is not a whole number from 1 to {MAX_TASK_COUNT}"),
                })?;
        }
        Ok(o)
    }
}

/// An arithmetic operator of a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
}

/// One question of a round. The answer is not secret (anyone can compute
/// it); what is scored is answering, once, correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// Position in the round, from 0.
    pub id: u32,
    /// Left operand.
    pub a: i64,
    /// Right operand.
    pub b: i64,
    /// Operator.
    pub op: Op,
}

impl Task {
    /// The question as miners see it, e.g. `17 * 42`.
    pub fn question(&self) -> String {
        let sym = match self.op {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
        };
        format!("{} {sym} {}", self.a, self.b)
    }

    /// The correct answer.
    pub fn answer(&self) -> i64 {
        match self.op {
            Op::Add => self.a + self.b,
            Op::Sub => self.a - self.b,
            Op::Mul => self.a * self.b,
        }
    }
}

/// SplitMix64: a tiny, well-mixed generator, so that the same seed gives
/// the same questions on every platform and version without a `rand`
/// dependency whose streams may change.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The questions of the round `seed`: a pure function, so miners, tests
/// and the challenge agree.
pub fn generate_tasks(seed: u64, count: u32) -> Vec<Task> {
    (0..count)
        .map(|id| {
            let r = splitmix64(seed ^ splitmix64(u64::from(id)));
            let op = match r % 3 {
                0 => Op::Add,
                1 => Op::Sub,
                _ => Op::Mul,
            };
            Task {
                id,
                a: ((r >> 8) % 100) as i64,
                b: ((r >> 24) % 100) as i64,
                op,
            }
        })
        .collect()
}

/// A question on the wire (`GET /tasks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Question id, used in submissions.
    pub id: u32,
    /// The question text.
    pub question: String,
}

/// `GET /tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TasksResponse {
    /// The round's seed.
    pub seed: u64,
    /// Every question of the round.
    pub tasks: Vec<TaskView>,
}

/// The body of `POST /submissions` (and of the bridge route, where
/// `hotkey` is ignored in favour of the verified one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionRequest {
    /// The miner; trusted only in this example (see the crate docs).
    #[serde(default)]
    pub hotkey: Option<String>,
    /// Which question.
    pub task_id: u32,
    /// The miner's answer.
    pub answer: i64,
}

/// Where a submission is in its evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionStatus {
    /// Stored, waiting for its evaluation job.
    Pending,
    /// Evaluated; `correct` says how. Only these count in the weights.
    Scored,
    /// Its jobs failed too often: kept, never counted.
    Failed,
}

impl SubmissionStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Scored => "scored",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "scored" => Self::Scored,
            "pending" => Self::Pending,
            // Anything unexpected in the file is never counted.
            _ => Self::Failed,
        }
    }
}

/// A stored submission (`POST /submissions` → 201, `GET /submissions/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// Submission id.
    pub id: i64,
    /// The miner.
    pub hotkey: String,
    /// The round.
    pub seed: u64,
    /// Which question.
    pub task_id: u32,
    /// The answer given.
    pub answer: i64,
    /// Whether it was right; `null` until scored.
    pub correct: Option<bool>,
    /// Pending, scored or failed.
    pub status: SubmissionStatus,
    /// The broker job that scored it (or last failed on it); `null` when
    /// scored inline.
    pub job_id: Option<String>,
    /// Why its evaluation failed, when it did.
    pub error: Option<String>,
    /// When it arrived, unix seconds.
    pub submitted_at: i64,
}

/// One row of `GET /leaderboard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardEntry {
    /// The miner.
    pub hotkey: String,
    /// Questions answered this round.
    pub answered: u32,
    /// Of which correct.
    pub correct: u32,
    /// `correct / task_count`: the weight reported to the master.
    pub score: f64,
}

/// `GET /leaderboard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardResponse {
    /// The round's seed.
    pub seed: u64,
    /// Questions in the round.
    pub task_count: u32,
    /// Best first; ties by hotkey.
    pub entries: Vec<LeaderboardEntry>,
}

/// The quiz challenge: the round's questions and the submissions database.
pub struct Quiz {
    /// The challenge's own database (not the control plane's).
    pool: SqlitePool,
    /// The round.
    options: QuizOptions,
    /// `generate_tasks(options.seed, options.task_count)`, computed once.
    tasks: Vec<Task>,
    /// Whether submissions wait for a broker job (else scored inline).
    deferred: bool,
    /// Wakes the evaluator when a submission arrives.
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Quiz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quiz")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS quiz_submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hotkey TEXT NOT NULL,
    seed TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    answer INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    submitted_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'scored',
    attempts INTEGER NOT NULL DEFAULT 0,
    job_id TEXT,
    error TEXT,
    UNIQUE (hotkey, seed, task_id)
)";

/// Columns added when evaluation moved to broker jobs: a file written by
/// an earlier version gets them, its rows keeping `status = 'scored'` (they
/// were scored inline when they arrived).
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("status", "TEXT NOT NULL DEFAULT 'scored'"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("job_id", "TEXT"),
    ("error", "TEXT"),
];

type SubmissionRow = (
    i64,
    String,
    String,
    i64,
    i64,
    bool,
    i64,
    String,
    Option<String>,
    Option<String>,
);

impl Quiz {
    /// The quiz over `pool` (see `base_sdk::challenge::open_database`),
    /// creating its table if missing.
    pub async fn new(pool: SqlitePool, options: QuizOptions) -> Result<Self, QuizError> {
        if options.task_count == 0 || options.task_count > MAX_TASK_COUNT {
            return Err(QuizError::InvalidOption {
                key: "QUIZ_TASKS",
                reason: format!("{} is not from 1 to {MAX_TASK_COUNT}", options.task_count),
            });
        }
        sqlx::query(SCHEMA).execute(&pool).await?;
        let columns: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM pragma_table_info('quiz_submissions')")
                .fetch_all(&pool)
                .await?;
        for (name, decl) in ADDED_COLUMNS {
            if !columns.iter().any(|(c,)| c == name) {
                sqlx::query(&format!(
                    "ALTER TABLE quiz_submissions ADD COLUMN {name} {decl}"
                ))
                .execute(&pool)
                .await?;
            }
        }
        Ok(Self {
            pool,
            tasks: generate_tasks(options.seed, options.task_count),
            options,
            deferred: false,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Submissions are stored pending and scored later by a broker job
    /// (see [`evaluator::BrokerEvaluator::run`]) instead of at once.
    pub fn deferred(mut self) -> Self {
        self.deferred = true;
        self
    }

    /// Up to `limit` pending submissions, oldest first, as job input.
    pub async fn pending_batch(&self, limit: usize) -> Result<Vec<EvalItem>, QuizError> {
        let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT id, seed, task_id, answer FROM quiz_submissions \
             WHERE status = 'pending' ORDER BY id LIMIT ?",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, seed, task_id, answer)| {
                Some(EvalItem {
                    id,
                    seed: seed.parse().ok()?,
                    task_id: u32::try_from(task_id).ok()?,
                    answer,
                })
            })
            .collect())
    }

    /// Scores pending submissions from job `job`'s verdicts, all or none.
    pub async fn record_verdicts(
        &self,
        job: &str,
        verdicts: &std::collections::BTreeMap<i64, bool>,
    ) -> Result<(), QuizError> {
        let mut tx = self.pool.begin().await?;
        for (id, correct) in verdicts {
            sqlx::query(
                "UPDATE quiz_submissions SET status = 'scored', correct = ?, job_id = ?, \
                 error = NULL WHERE id = ? AND status = 'pending'",
            )
            .bind(correct)
            .bind(job)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Charges one failed attempt to each pending submission of `ids`;
    /// those reaching `max_attempts` become failed (never counted).
    pub async fn record_failure(
        &self,
        ids: &[i64],
        job: Option<&str>,
        reason: &str,
        max_attempts: i64,
    ) -> Result<(), QuizError> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE quiz_submissions SET attempts = attempts + 1, \
                 status = CASE WHEN attempts + 1 >= ? THEN 'failed' ELSE 'pending' END, \
                 job_id = COALESCE(?, job_id), error = ? WHERE id = ? AND status = 'pending'",
            )
            .bind(max_attempts)
            .bind(job)
            .bind(reason)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The round's parameters.
    pub fn options(&self) -> QuizOptions {
        self.options
    }

    /// The round's questions.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// Records `hotkey`'s answer to `task_id`; one answer per question.
    pub async fn submit(
        &self,
        hotkey: &str,
        task_id: u32,
        answer: i64,
    ) -> Result<Submission, QuizError> {
        if hotkey.is_empty()
            || hotkey.len() > MAX_HOTKEY_LEN
            || !hotkey.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(QuizError::InvalidHotkey);
        }
        let task = self
            .tasks
            .get(task_id as usize)
            .ok_or(QuizError::UnknownTask(task_id))?;
        // Deferred: the broker job decides; until then it counts for nothing.
        let (correct, status) = if self.deferred {
            (None, SubmissionStatus::Pending)
        } else {
            (Some(task.answer() == answer), SubmissionStatus::Scored)
        };
        let submitted_at = chrono::Utc::now().timestamp();
        // The seed is a u64; SQLite integers are i64, so it is stored as text.
        let inserted = sqlx::query(
            "INSERT INTO quiz_submissions \
             (hotkey, seed, task_id, answer, correct, submitted_at, status) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(hotkey)
        .bind(self.options.seed.to_string())
        .bind(i64::from(task_id))
        .bind(answer)
        .bind(correct.unwrap_or(false))
        .bind(submitted_at)
        .bind(status.as_str())
        .execute(&self.pool)
        .await;
        let done = match inserted {
            Ok(done) => done,
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                return Err(QuizError::AlreadyAnswered(task_id));
            }
            Err(e) => return Err(e.into()),
        };
        if self.deferred {
            self.wake.notify_one();
        }
        Ok(Submission {
            id: done.last_insert_rowid(),
            hotkey: hotkey.to_string(),
            seed: self.options.seed,
            task_id,
            answer,
            correct,
            status,
            job_id: None,
            error: None,
            submitted_at,
        })
    }

    /// One stored submission, of any round.
    pub async fn submission(&self, id: i64) -> Result<Submission, QuizError> {
        let row: Option<SubmissionRow> = sqlx::query_as(
            "SELECT id, hotkey, seed, task_id, answer, correct, submitted_at, status, job_id, \
             error FROM quiz_submissions WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let (id, hotkey, seed, task_id, answer, correct, submitted_at, status, job_id, error) =
            row.ok_or(QuizError::SubmissionNotFound(id))?;
        let status = SubmissionStatus::parse(&status);
        Ok(Submission {
            id,
            hotkey,
            seed: seed.parse().unwrap_or_default(),
            task_id: u32::try_from(task_id).unwrap_or_default(),
            answer,
            correct: (status == SubmissionStatus::Scored).then_some(correct),
            status,
            job_id,
            error,
            submitted_at,
        })
    }

    /// This round's standings, best first, over scored submissions only
    /// (pending and failed ones count for nothing).
    pub async fn leaderboard(&self) -> Result<Vec<LeaderboardEntry>, QuizError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT hotkey, COUNT(*), COALESCE(SUM(correct), 0) FROM quiz_submissions \
             WHERE seed = ? AND task_id < ? AND status = 'scored' GROUP BY hotkey",
        )
        .bind(self.options.seed.to_string())
        .bind(i64::from(self.options.task_count))
        .fetch_all(&self.pool)
        .await?;
        let total = f64::from(self.options.task_count);
        let mut entries: Vec<LeaderboardEntry> = rows
            .into_iter()
            .map(|(hotkey, answered, correct)| {
                let correct = u32::try_from(correct).unwrap_or_default();
                LeaderboardEntry {
                    hotkey,
                    answered: u32::try_from(answered).unwrap_or_default(),
                    correct,
                    score: f64::from(correct) / total,
                }
            })
            .collect();
        entries.sort_by(|x, y| {
            y.score
                .total_cmp(&x.score)
                .then_with(|| x.hotkey.cmp(&y.hotkey))
        });
        Ok(entries)
    }
}

#[async_trait]
impl Challenge for Quiz {
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    /// Every hotkey that answered this round, with the fraction of the
    /// round's questions it got right (0 for none: it still took part).
    async fn weights(&self) -> Result<Weights, ChallengeError> {
        let board = self.leaderboard().await.map_err(|e| match e {
            QuizError::Database(e) => ChallengeError::Database(e),
            QuizError::Sdk(e) => e,
            other => ChallengeError::other(other.to_string()),
        })?;
        Ok(board.into_iter().map(|e| (e.hotkey, e.score)).collect())
    }

    fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/tasks", get(list_tasks))
            .route("/submissions", post(submit_public))
            .route("/submissions/{id}", get(get_submission))
            .route("/leaderboard", get(leaderboard))
            .route("/internal/v1/bridge/submissions", post(submit_bridged))
            .with_state(self)
    }
}

async fn list_tasks(State(q): State<Arc<Quiz>>) -> Json<TasksResponse> {
    Json(TasksResponse {
        seed: q.options.seed,
        tasks: q
            .tasks
            .iter()
            .map(|t| TaskView {
                id: t.id,
                question: t.question(),
            })
            .collect(),
    })
}

fn verified_hotkey(headers: &HeaderMap) -> Option<String> {
    headers
        .get(VERIFIED_HOTKEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn body(
    payload: Result<Json<SubmissionRequest>, JsonRejection>,
) -> Result<SubmissionRequest, QuizError> {
    payload
        .map(|Json(b)| b)
        .map_err(|e| QuizError::BadRequest(e.body_text()))
}

/// `POST /submissions`: the verified header (set only by the master) wins
/// over the body's `hotkey`.
async fn submit_public(
    State(q): State<Arc<Quiz>>,
    headers: HeaderMap,
    payload: Result<Json<SubmissionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Submission>), QuizError> {
    let req = body(payload)?;
    let hotkey = verified_hotkey(&headers)
        .or(req.hotkey)
        .ok_or(QuizError::MissingHotkey)?;
    let s = q.submit(&hotkey, req.task_id, req.answer).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

/// `POST /internal/v1/bridge/submissions`: the signed upload bridge's
/// target. The master authenticated the miner; the hotkey comes only from
/// `X-Base-Verified-Hotkey`.
async fn submit_bridged(
    _master: MasterAuthorized,
    State(q): State<Arc<Quiz>>,
    headers: HeaderMap,
    payload: Result<Json<SubmissionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Submission>), QuizError> {
    let hotkey = verified_hotkey(&headers).ok_or(QuizError::MissingHotkey)?;
    let req = body(payload)?;
    let s = q.submit(&hotkey, req.task_id, req.answer).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

async fn get_submission(
    State(q): State<Arc<Quiz>>,
    Path(id): Path<i64>,
) -> Result<Json<Submission>, QuizError> {
    Ok(Json(q.submission(id).await?))
}

async fn leaderboard(State(q): State<Arc<Quiz>>) -> Result<Json<LeaderboardResponse>, QuizError> {
    Ok(Json(LeaderboardResponse {
        seed: q.options.seed,
        task_count: q.options.task_count,
        entries: q.leaderboard().await?,
    }))
}

/// Runs the quiz with explicit settings until `shutdown` completes: opens
/// the database, creates the table, serves, scoring inline. For tests and
/// embedding; services use [`run_from_env`].
pub async fn run(
    settings: ChallengeSettings,
    options: QuizOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QuizError> {
    run_with(settings, options, None, shutdown).await
}

/// [`run`], scoring through `evaluator`'s broker jobs when one is given.
pub async fn run_with(
    settings: ChallengeSettings,
    options: QuizOptions,
    evaluator: Option<BrokerEvaluator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QuizError> {
    if settings.shared_token.is_none() {
        tracing::warn!(
            "no challenge token configured (CHALLENGE_SHARED_TOKEN_FILE): get_weights answers 503"
        );
    }
    let pool = challenge::open_database(&settings).await?;
    let mut quiz = Quiz::new(pool.clone(), options).await?;
    if evaluator.is_some() {
        quiz = quiz.deferred();
    }
    let quiz = Arc::new(quiz);
    tracing::info!(
        slug = %settings.slug,
        seed = options.seed,
        tasks = options.task_count,
        broker_jobs = evaluator.is_some(),
        "quiz challenge starting"
    );
    // The evaluator stops with the service: a watch both futures observe.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let evaluating = evaluator.map(|e| {
        tokio::spawn(e.run(quiz.clone(), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }))
    });
    let served = challenge::serve(settings, quiz, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(task) = evaluating {
        let _ = task.await;
    }
    // Checkpoints the WAL so the file on /data is complete on its own.
    pool.close().await;
    served.map_err(QuizError::from)
}

/// The service entry point: settings from the `CHALLENGE_*` variables
/// (see `base_sdk::challenge::ChallengeSettings`), the round from
/// `QUIZ_SEED` / `QUIZ_TASKS` ([`QuizOptions`]) and the scoring from
/// `QUIZ_EVALUATE` / `QUIZ_JOB_IMAGE` / `QUIZ_JOB_TIMEOUT_SECONDS`
/// ([`EvaluationOptions`]: broker jobs when the platform gave a broker),
/// served until Ctrl-C or SIGTERM.
pub async fn run_from_env() -> Result<(), QuizError> {
    let settings = ChallengeSettings::from_env()?;
    let lookup = |k: &str| std::env::var(k).ok();
    let options = QuizOptions::from_lookup(lookup)?;
    let evaluation = EvaluationOptions::from_lookup(lookup)?;
    let evaluator = evaluation.resolve(
        lookup("CHALLENGE_DOCKER_BROKER_URL").as_deref(),
        base_sdk::broker::client::BrokerClient::from_env,
    )?;
    run_with(settings, options, evaluator, challenge::shutdown_signal()).await
}

/// The `evaluate` mode of the image (a broker job): reads the batch from
/// `QUIZ_EVAL_INPUT`, prints one result line; exit code 0, or 2 with the
/// reason on stderr when the input is refused.
pub fn evaluate_main() -> i32 {
    match evaluate::evaluate_mode(|k| std::env::var(k).ok()) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("quiz-challenge evaluate: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_deterministic_and_varied() {
        let a = generate_tasks(7, 50);
        assert_eq!(a, generate_tasks(7, 50));
        assert_ne!(a, generate_tasks(8, 50));
        assert_eq!(a[..10], generate_tasks(7, 10)[..]);
        for op in [Op::Add, Op::Sub, Op::Mul] {
            assert!(a.iter().any(|t| t.op == op), "{op:?} never drawn");
        }
        assert!(
            a.iter()
                .all(|t| (0..100).contains(&t.a) && (0..100).contains(&t.b))
        );
        let t = Task {
            id: 0,
            a: 6,
            b: 7,
            op: Op::Mul,
        };
        assert_eq!((t.question().as_str(), t.answer()), ("6 * 7", 42));
    }

    #[test]
    fn options_parse() {
        let o = QuizOptions::from_lookup(|_| None).unwrap();
        assert_eq!(o, QuizOptions::default());
        let o = QuizOptions::from_lookup(|k| match k {
            "QUIZ_SEED" => Some("99".into()),
            "QUIZ_TASKS" => Some(" 3 ".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((o.seed, o.task_count), (99, 3));
        for bad in ["0", "1001", "x", "-1"] {
            let e = QuizOptions::from_lookup(|k| (k == "QUIZ_TASKS").then(|| bad.to_string()))
                .unwrap_err();
            assert!(e.to_string().contains("QUIZ_TASKS"), "{e}");
        }
        let e = QuizOptions::from_lookup(|k| (k == "QUIZ_SEED").then(|| "s".into())).unwrap_err();
        assert!(e.to_string().contains("QUIZ_SEED"));
    }
}
