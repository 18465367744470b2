//! The SDK a challenge author embeds, so that a challenge only writes its
//! own routes and its scoring, and gets the contract of CONTRACTS.md §2 —
//! `/health`, `/version` and the authenticated `/internal/v1/get_weights` —
//! right without thinking about it.
//!
//! A challenge is a value implementing [`Challenge`]. The author loads
//! [`ChallengeSettings`] from the `CHALLENGE_*` environment the platform
//! gives every challenge service, opens its SQLite file with
//! [`open_database`], and hands both to [`serve`] (or mounts [`router`]
//! in an `axum::serve` of its own). The master is the only caller of the
//! internal routes; it proves itself with the per-challenge shared token
//! and names the slug it thinks it is talking to, and the same check is
//! available to the author's own internal routes through the
//! [`MasterAuthorized`] extractor.
//!
//! Decisions worth knowing:
//! - No token configured answers 503, not 401: the service is up but was
//!   deployed without its secret, which is an operator problem to surface,
//!   not a credential to retry.
//! - Token comparison goes through [`crate::registry::token::secrets_equal`],
//!   constant time over hashes, so timing and length leak nothing.
//! - The weights function is the author's code: an error or even a panic
//!   becomes a 500 with a `detail`, and negative or non-finite scores are
//!   refused here rather than left for the master to misread.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures::FutureExt;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::auth::bearer;
use crate::model::Slug;
use crate::registry::token;

/// The contract version this SDK serves (`/version` → `api_version`).
pub const API_VERSION: &str = "1.0";

/// This SDK's version (`/version` → `sdk_version`).
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The header naming the slug the master believes it is calling.
pub const SLUG_HEADER: &str = "x-base-challenge-slug";

/// The header the master's signed upload bridge sets to the miner hotkey
/// whose signature it verified. The public proxy strips every inbound
/// `x-base-*` header, so a challenge can trust it on requests that carry
/// the shared token (see [`MasterAuthorized`]).
pub const VERIFIED_HOTKEY_HEADER: &str = "x-base-verified-hotkey";

/// Where the platform mounts the shared token when no variable names it.
pub const DEFAULT_SHARED_TOKEN_FILE: &str = "/run/secrets/base/challenge_token";

/// Where the platform mounts the broker token when no variable names it.
pub const DEFAULT_BROKER_TOKEN_FILE: &str = "/run/secrets/base/docker_broker_token";

/// The database every challenge gets: a SQLite file on its `/data` volume
/// (written in the Python platform's SQLAlchemy form, which is accepted).
pub const DEFAULT_DATABASE_URL: &str = "sqlite+aiosqlite:////data/challenge.sqlite3";

/// The container port of every challenge service.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";

/// Scores per miner hotkey (ss58). Raw scores are fine: the master
/// normalizes; each must be finite and `>= 0`.
pub type Weights = BTreeMap<String, f64>;

/// Everything that can go wrong in this module: loading settings,
/// authenticating the master, the author's weights function, the database
/// and the listener. As an axum response it is `{"detail": "<message>"}`
/// with the status each variant documents.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// A required variable is unset or empty (names it).
    #[error("{0} is required")]
    MissingEnv(&'static str),
    /// A variable has a value that cannot be used (names it).
    #[error("invalid {key}: {reason}")]
    InvalidEnv {
        /// The variable.
        key: &'static str,
        /// What is wrong with it (never contains a secret).
        reason: String,
    },
    /// A `*_FILE` variable names a file that cannot be read.
    #[error("cannot read {key} from '{}': {source}", path.display())]
    SecretFile {
        /// The variable that named the file (or whose default was used).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The service was deployed without a shared token (503).
    #[error("challenge token not configured")]
    TokenNotConfigured,
    /// The bearer token is missing or wrong (401).
    #[error("invalid challenge token")]
    Unauthorized,
    /// No `X-Base-Challenge-Slug` header (400).
    #[error("missing challenge slug")]
    MissingSlug,
    /// `X-Base-Challenge-Slug` names another challenge (400).
    #[error("challenge slug mismatch")]
    SlugMismatch,
    /// The weights function returned a score that is negative or not
    /// finite (500).
    #[error("invalid weight for hotkey '{hotkey}': {value} (must be finite and >= 0)")]
    InvalidWeight {
        /// The hotkey.
        hotkey: String,
        /// The offending value.
        value: f64,
    },
    /// The weights function failed or panicked (500).
    #[error("weights unavailable: {0}")]
    Weights(#[source] Box<ChallengeError>),
    /// The database failed (500).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// [`open_database`] could not open or create the file (names it).
    #[error("cannot open database '{}': {source}", path.display())]
    DatabaseOpen {
        /// The SQLite file.
        path: PathBuf,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A file-system or socket operation failed (500).
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Anything else from the author's code (500); see [`ChallengeError::other`].
    #[error("{0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ChallengeError {
    /// Wraps any error of the author's code (also accepts a `String`).
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Other(e.into())
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TokenNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MissingSlug | Self::SlugMismatch => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ChallengeError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "challenge request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "challenge request refused");
        }
        (
            status,
            Json(serde_json::json!({ "detail": self.to_string() })),
        )
            .into_response()
    }
}

/// The runtime settings the platform gives a challenge service through
/// `CHALLENGE_*` variables (CONTRACTS.md §2). Secrets are [`SecretString`]s
/// and `Debug` shows only whether they are set.
#[derive(Clone)]
pub struct ChallengeSettings {
    /// `CHALLENGE_SLUG`: which challenge this service is; the master's
    /// `X-Base-Challenge-Slug` must match it.
    pub slug: Slug,
    /// `CHALLENGE_SHARED_TOKEN` / `CHALLENGE_SHARED_TOKEN_FILE`: the token
    /// the master presents. `None` makes the internal routes answer 503.
    pub shared_token: Option<SecretString>,
    /// `CHALLENGE_DATABASE_URL`, already in sqlx form (`sqlite://…`).
    pub database_url: String,
    /// `CHALLENGE_DOCKER_BROKER_URL`: where evaluation jobs are submitted,
    /// for challenges that run them.
    pub docker_broker_url: Option<String>,
    /// `CHALLENGE_DOCKER_BROKER_TOKEN` / `_FILE`: the credential for the broker.
    pub docker_broker_token: Option<SecretString>,
    /// `CHALLENGE_LISTEN`: the address [`serve`] binds.
    pub listen: SocketAddr,
    /// `CHALLENGE_VERSION`: overrides [`Challenge::version`] in `/health`
    /// and `/version`, so an image can be re-tagged without a rebuild.
    pub version: Option<String>,
}

impl fmt::Debug for ChallengeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeSettings")
            .field("slug", &self.slug)
            .field("shared_token", &redacted(&self.shared_token))
            .field("database_url", &mask_password(&self.database_url))
            .field("docker_broker_url", &self.docker_broker_url)
            .field("docker_broker_token", &redacted(&self.docker_broker_token))
            .field("listen", &self.listen)
            .field("version", &self.version)
            .finish()
    }
}

fn redacted(s: &Option<SecretString>) -> &'static str {
    if s.is_some() { "[REDACTED]" } else { "None" }
}

/// A database URL with any password replaced, for logs and `Debug`.
fn mask_password(raw: &str) -> String {
    // The one redaction rule (userinfo and `?password=` alike).
    crate::config::redact_url(raw)
}

impl ChallengeSettings {
    /// Settings for `slug` with every default: no tokens, the default
    /// database and listen address. Handy in tests and embedding.
    pub fn new(slug: Slug) -> Self {
        Self {
            slug,
            shared_token: None,
            database_url: "sqlite:///data/challenge.sqlite3".to_string(),
            docker_broker_url: None,
            docker_broker_token: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            version: None,
        }
    }

    /// Reads the process environment (and the secret files it names).
    pub fn from_env() -> Result<Self, ChallengeError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup` (a variable name → its value), so
    /// tests can pass a map instead of touching the process environment.
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ChallengeError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());

        let raw_slug = get("CHALLENGE_SLUG").ok_or(ChallengeError::MissingEnv("CHALLENGE_SLUG"))?;
        let slug = Slug::parse(raw_slug.trim()).map_err(|e| ChallengeError::InvalidEnv {
            key: "CHALLENGE_SLUG",
            reason: e.to_string(),
        })?;

        let shared_token = secret(
            &get,
            "CHALLENGE_SHARED_TOKEN",
            "CHALLENGE_SHARED_TOKEN_FILE",
            DEFAULT_SHARED_TOKEN_FILE,
        )?;
        let docker_broker_token = secret(
            &get,
            "CHALLENGE_DOCKER_BROKER_TOKEN",
            "CHALLENGE_DOCKER_BROKER_TOKEN_FILE",
            DEFAULT_BROKER_TOKEN_FILE,
        )?;

        let raw_db = get("CHALLENGE_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        let database_url = sqlx_database_url(raw_db.trim())?;

        let docker_broker_url = match get("CHALLENGE_DOCKER_BROKER_URL") {
            Some(u) => {
                let u = u.trim().to_string();
                url::Url::parse(&u).map_err(|e| ChallengeError::InvalidEnv {
                    key: "CHALLENGE_DOCKER_BROKER_URL",
                    reason: e.to_string(),
                })?;
                Some(u)
            }
            None => None,
        };

        let raw_listen = get("CHALLENGE_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen =
            SocketAddr::from_str(raw_listen.trim()).map_err(|e| ChallengeError::InvalidEnv {
                key: "CHALLENGE_LISTEN",
                reason: format!("'{}': {e}", raw_listen.trim()),
            })?;

        let version = get("CHALLENGE_VERSION").map(|v| v.trim().to_string());

        Ok(Self {
            slug,
            shared_token,
            database_url,
            docker_broker_url,
            docker_broker_token,
            listen,
            version,
        })
    }

    /// Sets the shared token (builder style, for tests and embedding).
    pub fn with_shared_token(mut self, token: impl Into<String>) -> Self {
        self.shared_token = Some(SecretString::from(token.into()));
        self
    }

    /// Sets the database URL, converting the SQLAlchemy form.
    pub fn with_database_url(mut self, url: &str) -> Result<Self, ChallengeError> {
        self.database_url = sqlx_database_url(url)?;
        Ok(self)
    }
}

/// A secret from `key`, else from the file `file_key` names (which must be
/// readable), else from `default_file` when it exists. Surrounding white
/// space (a trailing newline in a secret file) is dropped; empty is none.
fn secret(
    get: &impl Fn(&str) -> Option<String>,
    key: &'static str,
    file_key: &'static str,
    default_file: &str,
) -> Result<Option<SecretString>, ChallengeError> {
    let text = if let Some(v) = get(key) {
        v
    } else if let Some(path) = get(file_key) {
        let path = PathBuf::from(path.trim());
        std::fs::read_to_string(&path).map_err(|source| ChallengeError::SecretFile {
            key: file_key,
            path,
            source,
        })?
    } else {
        match std::fs::read_to_string(default_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ChallengeError::SecretFile {
                    key: file_key,
                    path: PathBuf::from(default_file),
                    source,
                });
            }
        }
    };
    let text = text.trim();
    Ok((!text.is_empty()).then(|| SecretString::from(text.to_string())))
}

/// Converts a database URL to the form sqlx understands.
///
/// The platform writes SQLAlchemy URLs (`sqlite+aiosqlite:////data/x.db`:
/// after the `:///`, an absolute path keeps its leading slash, a relative
/// one has none; nothing after `://` means in memory). Those become
/// `sqlite:///data/x.db`, `sqlite://x.db` and `sqlite::memory:`; a query
/// string is kept. Any other URL (`sqlite://…`, `sqlite::memory:`, or a
/// non-SQLite URL a challenge uses on its own) is returned unchanged.
pub fn sqlx_database_url(raw: &str) -> Result<String, ChallengeError> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Ok(raw.to_string());
    };
    let Some(driver) = scheme.strip_prefix("sqlite+") else {
        return Ok(raw.to_string());
    };
    if driver.is_empty() {
        return Err(ChallengeError::InvalidEnv {
            key: "CHALLENGE_DATABASE_URL",
            reason: format!("'{raw}' names no driver after 'sqlite+'"),
        });
    }
    if rest.is_empty() || rest.starts_with('?') {
        return Ok("sqlite::memory:".to_string());
    }
    // SQLAlchemy: `sqlite+driver:///<path>`; the host part must be empty.
    let path = rest.strip_prefix('/').ok_or_else(|| ChallengeError::InvalidEnv {
        key: "CHALLENGE_DATABASE_URL",
        reason: format!(
            "'{raw}' must be sqlite+{driver}:///relative/path or sqlite+{driver}:////absolute/path"
        ),
    })?;
    if path.is_empty() || path.starts_with('?') {
        return Ok("sqlite::memory:".to_string());
    }
    Ok(format!("sqlite://{path}"))
}

/// What a challenge author implements: a version, the scoring, and
/// optionally public routes. The SDK adds the contract routes around it.
///
/// ```no_run
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use base_sdk::challenge::{Challenge, ChallengeError, Weights};
///
/// struct Constant;
///
/// #[async_trait]
/// impl Challenge for Constant {
///     fn version(&self) -> &str { "0.1.0" }
///     async fn weights(&self) -> Result<Weights, ChallengeError> {
///         Ok(Weights::from([("5F3sa2TJ...".to_string(), 1.0)]))
///     }
/// }
/// ```
#[async_trait]
pub trait Challenge: Send + Sync + 'static {
    /// The challenge version; must equal the version it is registered with
    /// (`CHALLENGE_VERSION` overrides it at run time).
    fn version(&self) -> &str;

    /// What the challenge serves, checked against the record's
    /// `required_capabilities` (default `get_weights`, `proxy_routes`).
    fn capabilities(&self) -> Vec<String> {
        crate::registry::default_capabilities()
    }

    /// The current score of every miner hotkey this challenge has seen;
    /// called by the master once per epoch through `get_weights`.
    async fn weights(&self) -> Result<Weights, ChallengeError>;

    /// The challenge's own routes: miners reach them through the master's
    /// proxy at `/challenges/<slug>/<path>`. Give them their state with
    /// `Router::with_state(self)`. `/health`, `/version` and `/internal/*`
    /// are unreachable through the proxy. Default: none.
    fn routes(self: Arc<Self>) -> Router {
        Router::new()
    }
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Always `ok` when the service answers.
    pub status: String,
    /// The challenge slug.
    pub slug: String,
    /// The challenge version.
    pub version: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResponse {
    /// Contract version, [`API_VERSION`].
    pub api_version: String,
    /// The challenge version.
    pub challenge_version: String,
    /// [`SDK_VERSION`].
    pub sdk_version: String,
    /// [`Challenge::capabilities`].
    pub capabilities: Vec<String>,
}

/// `GET /internal/v1/get_weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsResponse {
    /// The challenge slug.
    pub challenge_slug: String,
    /// When the weights were computed, unix seconds.
    pub epoch: u64,
    /// Score per hotkey.
    pub weights: Weights,
    /// Free-form extra information (empty from this SDK).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Proof that a request came from the master: it carried the shared token
/// and this challenge's slug. Add it as a handler argument to protect an
/// internal route of the challenge's own (for example the bridge target
/// `POST /internal/v1/bridge/submissions`). The rejection is the
/// corresponding [`ChallengeError`] (503, 401 or 400). Works on any route
/// of a [`router`].
#[derive(Debug, Clone, Copy)]
pub struct MasterAuthorized;

/// What [`MasterAuthorized`] checks against, installed by [`router`] as a
/// request extension.
#[derive(Clone)]
struct Gate {
    slug: Slug,
    token: Option<SecretString>,
}

impl<S: Send + Sync> FromRequestParts<S> for MasterAuthorized {
    type Rejection = ChallengeError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let gate = parts.extensions.get::<Arc<Gate>>().ok_or_else(|| {
            ChallengeError::other("MasterAuthorized used outside base_sdk::challenge::router")
        })?;
        authorize(gate.token.as_ref(), &gate.slug, &parts.headers)?;
        Ok(MasterAuthorized)
    }
}

/// The master's credentials, in the contract's order: a token must be
/// configured (503), the bearer must match it (401), the slug header must
/// be present and name this challenge (400).
fn authorize(
    token: Option<&SecretString>,
    slug: &Slug,
    headers: &HeaderMap,
) -> Result<(), ChallengeError> {
    let configured = token.ok_or(ChallengeError::TokenNotConfigured)?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presented = bearer(authorization).ok_or(ChallengeError::Unauthorized)?;
    if !token::secrets_equal(configured, presented) {
        return Err(ChallengeError::Unauthorized);
    }
    let named = headers
        .get(SLUG_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(ChallengeError::MissingSlug)?;
    if named.eq_ignore_ascii_case(slug.as_str()) {
        Ok(())
    } else {
        Err(ChallengeError::SlugMismatch)
    }
}

#[derive(Clone)]
struct AppState {
    challenge: Arc<dyn Challenge>,
    slug: Slug,
    version: String,
}

/// The whole service: the contract routes plus [`Challenge::routes`].
/// Mount it with `axum::serve`, or call [`serve`].
pub fn router(settings: ChallengeSettings, challenge: Arc<dyn Challenge>) -> Router {
    let version = settings
        .version
        .clone()
        .unwrap_or_else(|| challenge.version().to_string());
    let gate = Arc::new(Gate {
        slug: settings.slug.clone(),
        token: settings.shared_token.clone(),
    });
    let state = AppState {
        challenge: challenge.clone(),
        slug: settings.slug,
        version,
    };
    let contract = Router::new()
        .route("/health", get(health))
        .route("/version", get(version_info))
        .route("/internal/v1/get_weights", get(get_weights))
        .with_state(state);
    challenge.routes().merge(contract).layer(Extension(gate))
}

async fn health(State(s): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        slug: s.slug.to_string(),
        version: s.version,
    })
}

async fn version_info(State(s): State<AppState>) -> Json<VersionResponse> {
    Json(VersionResponse {
        api_version: API_VERSION.into(),
        challenge_version: s.version,
        sdk_version: SDK_VERSION.into(),
        capabilities: s.challenge.capabilities(),
    })
}

async fn get_weights(
    _master: MasterAuthorized,
    State(s): State<AppState>,
) -> Result<Json<WeightsResponse>, ChallengeError> {
    let outcome = AssertUnwindSafe(s.challenge.weights()).catch_unwind().await;
    let weights = match outcome {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return Err(ChallengeError::Weights(Box::new(e))),
        Err(_) => {
            return Err(ChallengeError::Weights(Box::new(ChallengeError::other(
                "the weights function panicked",
            ))));
        }
    };
    if let Some((hotkey, value)) = weights.iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
        return Err(ChallengeError::InvalidWeight {
            hotkey: hotkey.clone(),
            value: *value,
        });
    }
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Ok(Json(WeightsResponse {
        challenge_slug: s.slug.to_string(),
        epoch,
        weights,
        metadata: serde_json::Map::new(),
    }))
}

/// Opens the challenge's SQLite database, creating the file and its
/// directory if missing, in WAL mode so the weights query never waits for
/// a writer. Non-SQLite URLs are refused: bring your own pool for those.
pub async fn open_database(settings: &ChallengeSettings) -> Result<SqlitePool, ChallengeError> {
    let url = settings.database_url.as_str();
    if !url.starts_with("sqlite:") {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        return Err(ChallengeError::InvalidEnv {
            key: "CHALLENGE_DATABASE_URL",
            reason: format!("open_database supports SQLite only, got scheme '{scheme}'"),
        });
    }
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .busy_timeout(std::time::Duration::from_secs(5));
    let file = opts.get_filename().to_path_buf();
    let in_memory = file.to_string_lossy().starts_with("file:");
    let opts = if in_memory {
        opts
    } else {
        create_parent(&file).await?;
        opts.journal_mode(SqliteJournalMode::Wal)
    };
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .map_err(|source| ChallengeError::DatabaseOpen { path: file, source })
}

async fn create_parent(file: &Path) -> Result<(), ChallengeError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| ChallengeError::Io {
                    action: format!("create database directory '{}'", dir.display()),
                    source,
                })
        }
        _ => Ok(()),
    }
}

/// Binds `settings.listen` and serves [`router`] until `shutdown`
/// completes (see [`shutdown_signal`]).
pub async fn serve(
    settings: ChallengeSettings,
    challenge: Arc<dyn Challenge>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ChallengeError> {
    let addr = settings.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ChallengeError::Io {
            action: format!("listen on {addr}"),
            source,
        })?;
    serve_listener(listener, settings, challenge, shutdown).await
}

/// Serves [`router`] on an already bound listener (tests bind
/// `127.0.0.1:0`) until `shutdown` completes.
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    settings: ChallengeSettings,
    challenge: Arc<dyn Challenge>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ChallengeError> {
    let local = listener.local_addr().ok();
    tracing::info!(slug = %settings.slug, addr = ?local, "challenge listening");
    axum::serve(listener, router(settings, challenge))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ChallengeError::Io {
            action: "serve HTTP".into(),
            source,
        })
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what Docker and the `dev`
/// orchestrator send). If a handler cannot be installed, that signal is
/// simply not awaited.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use secrecy::ExposeSecret;
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "0123456789abcdef-challenge-token";

    struct Fixed {
        result: Result<Weights, String>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Challenge for Fixed {
        fn version(&self) -> &str {
            "1.2.3"
        }
        async fn weights(&self) -> Result<Weights, ChallengeError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.result.clone().map_err(ChallengeError::other)
        }
        fn routes(self: Arc<Self>) -> Router {
            Router::new()
                .route("/ping", get(|| async { "pong" }))
                .route(
                    "/internal/v1/mine",
                    get(|_: MasterAuthorized| async { "mine" }),
                )
        }
    }

    struct Panics;

    #[async_trait]
    impl Challenge for Panics {
        fn version(&self) -> &str {
            "0.0.1"
        }
        async fn weights(&self) -> Result<Weights, ChallengeError> {
            panic!("author bug")
        }
    }

    fn fixed(result: Result<Weights, String>) -> Arc<Fixed> {
        Arc::new(Fixed {
            result,
            calls: AtomicUsize::new(0),
        })
    }

    fn settings(token: Option<&str>) -> ChallengeSettings {
        let s = ChallengeSettings::new(Slug::parse("quiz").unwrap());
        match token {
            Some(t) => s.with_shared_token(t),
            None => s,
        }
    }

    fn app(token: Option<&str>) -> (Router, Arc<Fixed>) {
        let c = fixed(Ok(Weights::from([
            ("hk-a".to_string(), 3.0),
            ("hk-b".to_string(), 0.5),
        ])));
        (router(settings(token), c.clone()), c)
    }

    async fn call(
        app: Router,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }

    const GOOD: [(&str, &str); 2] = [
        ("authorization", "Bearer 0123456789abcdef-challenge-token"),
        ("x-base-challenge-slug", "quiz"),
    ];

    #[tokio::test]
    async fn health_and_version_shapes() {
        let (app, _) = app(None);
        let (s, body) = call(app.clone(), "/health", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({"status": "ok", "slug": "quiz", "version": "1.2.3"})
        );
        let (s, body) = call(app, "/version", &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({
                "api_version": "1.0",
                "challenge_version": "1.2.3",
                "sdk_version": env!("CARGO_PKG_VERSION"),
                "capabilities": ["get_weights", "proxy_routes"],
            })
        );
    }

    #[tokio::test]
    async fn version_override_applies_everywhere() {
        let mut s = settings(None);
        s.version = Some("9.9.9".into());
        let app = router(s, fixed(Ok(Weights::new())));
        let (_, h) = call(app.clone(), "/health", &[]).await;
        assert_eq!(h["version"], "9.9.9");
        let (_, v) = call(app, "/version", &[]).await;
        assert_eq!(v["challenge_version"], "9.9.9");
    }

    #[tokio::test]
    async fn get_weights_with_right_credentials() {
        let (app, c) = app(Some(TOKEN));
        let (s, body) = call(app, "/internal/v1/get_weights", &GOOD).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let parsed: WeightsResponse = serde_json::from_value(body).unwrap();
        assert_eq!(parsed.challenge_slug, "quiz");
        assert_eq!(parsed.weights["hk-a"], 3.0);
        assert_eq!(parsed.weights["hk-b"], 0.5);
        assert!(parsed.metadata.is_empty());
        let now = chrono::Utc::now().timestamp() as u64;
        assert!(parsed.epoch <= now && parsed.epoch + 60 > now);
        assert_eq!(c.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_token_configured_is_503_before_anything_else() {
        let (app, c) = app(None);
        for headers in [&GOOD[..], &[]] {
            let (s, body) = call(app.clone(), "/internal/v1/get_weights", headers).await;
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                body,
                serde_json::json!({"detail": "challenge token not configured"})
            );
        }
        assert_eq!(c.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn wrong_or_missing_bearer_is_401_before_the_slug() {
        let (app, c) = app(Some(TOKEN));
        let cases: [&[(&str, &str)]; 5] = [
            &[("x-base-challenge-slug", "quiz")],
            &[
                ("authorization", "Bearer wrong"),
                ("x-base-challenge-slug", "quiz"),
            ],
            &[("authorization", "Basic 0123456789abcdef-challenge-token")],
            &[("authorization", "Bearer 0123456789abcdef-challenge-toke")],
            // Slug also wrong: the bearer is checked first.
            &[
                ("authorization", "Bearer nope"),
                ("x-base-challenge-slug", "other"),
            ],
        ];
        for headers in cases {
            let (s, body) = call(app.clone(), "/internal/v1/get_weights", headers).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{headers:?}");
            assert_eq!(body["detail"], "invalid challenge token");
        }
        assert_eq!(c.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn slug_missing_or_mismatched_is_400() {
        let (app, _) = app(Some(TOKEN));
        let auth = ("authorization", "bearer 0123456789abcdef-challenge-token");
        let (s, body) = call(app.clone(), "/internal/v1/get_weights", &[auth]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["detail"], "missing challenge slug");
        let (s, body) = call(
            app.clone(),
            "/internal/v1/get_weights",
            &[auth, ("x-base-challenge-slug", "other")],
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(body["detail"], "challenge slug mismatch");
        // Slugs are case-insensitive, as Slug::parse lowercases them.
        let (s, _) = call(
            app,
            "/internal/v1/get_weights",
            &[auth, ("x-base-challenge-slug", "QUIZ")],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn weights_errors_and_panics_are_500_with_detail() {
        let app = router(settings(Some(TOKEN)), fixed(Err("db is gone".into())));
        let (s, body) = call(app, "/internal/v1/get_weights", &GOOD).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["detail"], "weights unavailable: db is gone");

        let app = router(settings(Some(TOKEN)), Arc::new(Panics));
        let (s, body) = call(app, "/internal/v1/get_weights", &GOOD).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body["detail"].as_str().unwrap().contains("panicked"));
    }

    #[tokio::test]
    async fn bad_scores_are_refused() {
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let c = fixed(Ok(Weights::from([("hk".to_string(), bad)])));
            let app = router(settings(Some(TOKEN)), c);
            let (s, body) = call(app, "/internal/v1/get_weights", &GOOD).await;
            assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(body["detail"].as_str().unwrap().contains("hk"), "{body}");
        }
    }

    #[tokio::test]
    async fn author_routes_are_served_and_can_require_the_master() {
        let (app, _) = app(Some(TOKEN));
        let (s, body) = call(app.clone(), "/ping", &[]).await;
        assert_eq!((s, body), (StatusCode::OK, "pong".into()));
        let (s, _) = call(app.clone(), "/internal/v1/mine", &[]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, body) = call(app, "/internal/v1/mine", &GOOD).await;
        assert_eq!((s, body), (StatusCode::OK, "mine".into()));
    }

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// A token file that cannot exist, so the machine's own
    /// `/run/secrets` never leaks into a test.
    const NO_FILE: &str = "/nonexistent/base-test/token";

    #[test]
    fn settings_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let s = ChallengeSettings::from_lookup(lookup(&[
            ("CHALLENGE_SLUG", "Quiz"),
            ("CHALLENGE_SHARED_TOKEN_FILE", empty.to_str().unwrap()),
            ("CHALLENGE_DOCKER_BROKER_TOKEN", ""),
            (
                "CHALLENGE_DOCKER_BROKER_TOKEN_FILE",
                empty.to_str().unwrap(),
            ),
        ]))
        .unwrap();
        assert_eq!(s.slug.as_str(), "quiz");
        assert!(s.shared_token.is_none(), "an empty file is no token");
        assert!(s.docker_broker_token.is_none());
        assert_eq!(s.database_url, "sqlite:///data/challenge.sqlite3");
        assert_eq!(s.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(s.docker_broker_url, None);
        assert_eq!(s.version, None);
    }

    #[test]
    fn settings_full() {
        let dir = tempfile::tempdir().unwrap();
        let tf = dir.path().join("token");
        std::fs::write(&tf, format!("{TOKEN}\n")).unwrap();
        let s = ChallengeSettings::from_lookup(lookup(&[
            ("CHALLENGE_SLUG", "quiz"),
            ("CHALLENGE_SHARED_TOKEN_FILE", tf.to_str().unwrap()),
            ("CHALLENGE_DOCKER_BROKER_TOKEN", "broker-secret-value"),
            ("CHALLENGE_DOCKER_BROKER_URL", "http://broker:18082"),
            ("CHALLENGE_DATABASE_URL", "sqlite+aiosqlite:///rel/q.db"),
            ("CHALLENGE_LISTEN", "127.0.0.1:9000"),
            ("CHALLENGE_VERSION", "2.0.0"),
        ]))
        .unwrap();
        assert_eq!(s.shared_token.as_ref().unwrap().expose_secret(), TOKEN);
        assert_eq!(
            s.docker_broker_token.as_ref().unwrap().expose_secret(),
            "broker-secret-value"
        );
        assert_eq!(s.docker_broker_url.as_deref(), Some("http://broker:18082"));
        assert_eq!(s.database_url, "sqlite://rel/q.db");
        assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.version.as_deref(), Some("2.0.0"));
        let debug = format!("{s:?}");
        assert!(!debug.contains(TOKEN) && !debug.contains("broker-secret-value"));
        assert!(debug.contains("[REDACTED]"));
    }

    #[test]
    fn the_variable_beats_the_file() {
        let s = ChallengeSettings::from_lookup(lookup(&[
            ("CHALLENGE_SLUG", "quiz"),
            ("CHALLENGE_SHARED_TOKEN", "from-env"),
            ("CHALLENGE_SHARED_TOKEN_FILE", NO_FILE),
        ]))
        .unwrap();
        assert_eq!(s.shared_token.unwrap().expose_secret(), "from-env");
    }

    #[test]
    fn settings_errors_name_the_variable() {
        let e = ChallengeSettings::from_lookup(lookup(&[])).unwrap_err();
        assert!(matches!(e, ChallengeError::MissingEnv("CHALLENGE_SLUG")));
        assert_eq!(e.to_string(), "CHALLENGE_SLUG is required");

        let e = ChallengeSettings::from_lookup(lookup(&[("CHALLENGE_SLUG", "  ")])).unwrap_err();
        assert!(e.to_string().contains("CHALLENGE_SLUG"));

        let e = ChallengeSettings::from_lookup(lookup(&[("CHALLENGE_SLUG", "Not A Slug")]))
            .unwrap_err();
        assert!(e.to_string().starts_with("invalid CHALLENGE_SLUG"), "{e}");

        let e = ChallengeSettings::from_lookup(lookup(&[
            ("CHALLENGE_SLUG", "quiz"),
            ("CHALLENGE_SHARED_TOKEN_FILE", NO_FILE),
        ]))
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("CHALLENGE_SHARED_TOKEN_FILE") && msg.contains(NO_FILE),
            "{msg}"
        );

        let e = ChallengeSettings::from_lookup(lookup(&[
            ("CHALLENGE_SLUG", "quiz"),
            ("CHALLENGE_SHARED_TOKEN", "t"),
            ("CHALLENGE_LISTEN", "port 80"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("CHALLENGE_LISTEN"));

        let e = ChallengeSettings::from_lookup(lookup(&[
            ("CHALLENGE_SLUG", "quiz"),
            ("CHALLENGE_SHARED_TOKEN", "t"),
            ("CHALLENGE_DOCKER_BROKER_URL", "not a url"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("CHALLENGE_DOCKER_BROKER_URL"));
    }

    #[test]
    fn database_url_conversion() {
        let ok = |raw: &str| sqlx_database_url(raw).unwrap();
        assert_eq!(
            ok("sqlite+aiosqlite:////data/challenge.sqlite3"),
            "sqlite:///data/challenge.sqlite3"
        );
        assert_eq!(ok("sqlite+aiosqlite:///rel.db"), "sqlite://rel.db");
        assert_eq!(
            ok("sqlite+pysqlite:////a/b.db?mode=rwc"),
            "sqlite:///a/b.db?mode=rwc"
        );
        assert_eq!(ok("sqlite+aiosqlite://"), "sqlite::memory:");
        assert_eq!(ok("sqlite+aiosqlite:///"), "sqlite::memory:");
        assert_eq!(ok("sqlite:///data/x.db"), "sqlite:///data/x.db");
        assert_eq!(ok("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(ok("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(ok("postgres://u:p@h/db"), "postgres://u:p@h/db");
        assert!(sqlx_database_url("sqlite+aiosqlite://host/x.db").is_err());
        assert!(sqlx_database_url("sqlite+://x").is_err());
    }

    #[test]
    fn debug_masks_database_passwords() {
        let mut s = settings(None);
        s.database_url = "postgres://user:hunter2@db/x".into();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn open_database_creates_the_file_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested/deeper/challenge.sqlite3");
        let url = format!("sqlite+aiosqlite:///{}", file.display());
        let s = settings(None).with_database_url(&url).unwrap();
        let pool = open_database(&s).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert!(file.exists());

        let mut s = settings(None);
        s.database_url = "postgres://h/db".into();
        let e = open_database(&s).await.unwrap_err();
        assert!(e.to_string().contains("CHALLENGE_DATABASE_URL"));

        // A directory where the file should be: the error names the path.
        let s = settings(None)
            .with_database_url(&format!("sqlite://{}", dir.path().display()))
            .unwrap();
        let e = open_database(&s).await.unwrap_err();
        assert!(matches!(e, ChallengeError::DatabaseOpen { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
    }

    #[tokio::test]
    async fn serve_listener_answers_and_stops() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_listener(
            listener,
            settings(Some(TOKEN)),
            fixed(Ok(Weights::new())),
            async move {
                let _ = rx.await;
            },
        ));
        let body: HealthResponse = reqwest::get(format!("http://{addr}/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body.slug, "quiz");
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
