//! A typed HTTP client of the master API (CONTRACTS.md §3), used by every
//! command that talks to a running master.
//!
//! Each call returns a [`Fetched`]: the typed body for table output and the
//! raw JSON exactly as the server sent it for `--json`, so scripts see every
//! field, including ones newer than this CLI (`weights latest --json` goes
//! further and keeps the body's bytes, see
//! [`MasterClient::weights_latest_raw`]). Failures are sorted into the
//! cases an operator acts on differently: master unreachable, token
//! refused, or a request the master turned down (with its `detail`).

use std::time::Duration;

use base_sdk::model::{AuditEntry, Challenge, PublicChallenge, TokenKind, WeightsSnapshot};
use base_sdk::registry::{ChallengePatch, NewChallenge};
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// How long to wait for a TCP connection to the master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole request may take: every admin call is a few database
/// writes, so a minute means something is wrong rather than slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a non-JSON error body to show.
const MAX_DETAIL_CHARS: usize = 500;

/// Header carrying the admin token (CONTRACTS.md §3). Chosen over
/// `Authorization` because reverse proxies in front of the master may
/// consume or rewrite `Authorization` for their own auth.
const ADMIN_HEADER: HeaderName = HeaderName::from_static("x-admin-token");

/// Why a call to the master failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// No connection, a timeout or a transport failure.
    #[error(
        "cannot reach the BASE master at {url}: {reason} (is `base-server master` running? set --master or BASE_MASTER_URL)"
    )]
    Unreachable {
        /// The master's base URL (credentials masked).
        url: String,
        /// What went wrong underneath.
        reason: String,
    },
    /// An admin command was run without any admin token.
    #[error(
        "no admin token given: this command needs the master's admin token; set BASE_ADMIN_TOKEN_FILE or BASE_ADMIN_TOKEN (or pass --admin-token-file)"
    )]
    NoAdminToken,
    /// The token cannot be put in an HTTP header (control characters).
    #[error(
        "the admin token contains characters that cannot be sent in an HTTP header (check BASE_ADMIN_TOKEN / --admin-token-file)"
    )]
    BadToken,
    /// The master answered 401 to the token given.
    // The master answers 401 alike for a wrong token and for none configured
    // on its side (fail closed), so the message names both causes.
    #[error(
        "the master refused the admin token (check BASE_ADMIN_TOKEN / --admin-token-file; a master started without BASE_ADMIN_TOKEN refuses every token)"
    )]
    Unauthorized,
    /// The master answered another non-2xx status.
    #[error("the master answered {status}: {detail}")]
    Api {
        /// The status.
        status: StatusCode,
        /// The server's `detail`, or the start of its body.
        detail: String,
    },
    /// A 2xx answer that is not what this CLI expects.
    #[error("unexpected answer from the master to {what}: {reason}")]
    InvalidResponse {
        /// Method and path.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// A successful answer: the typed body and the JSON it came from.
#[derive(Debug)]
pub struct Fetched<T> {
    /// The body as the server sent it.
    pub raw: serde_json::Value,
    /// The body as this CLI understands it.
    pub body: T,
}

/// Cleartext tokens from a create or a rotation: shown once, never stored.
#[derive(Debug, Deserialize)]
pub struct IssuedTokens {
    /// The token the master presents to the challenge.
    #[serde(default)]
    pub challenge_token: Option<SecretString>,
    /// The token the challenge presents to the broker.
    #[serde(default)]
    pub docker_broker_token: Option<SecretString>,
}

/// Answer of `POST /v1/admin/challenges`.
#[derive(Debug, Deserialize)]
pub struct Created {
    /// The new record.
    pub challenge: Challenge,
    /// Its two tokens (top-level fields on the wire).
    #[serde(flatten)]
    pub tokens: IssuedTokens,
}

/// A token as the admin view shows it: a hint, never the hash.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenHint {
    /// Which token.
    pub kind: TokenKind,
    /// `abcd…wxyz`.
    pub hint: String,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
}

/// Answer of `GET /v1/admin/challenges/{slug}`.
#[derive(Debug, Deserialize)]
pub struct ChallengeDetail {
    /// The record.
    #[serde(flatten)]
    pub challenge: Challenge,
    /// Its tokens' hints.
    #[serde(default)]
    pub tokens: Vec<TokenHint>,
}

/// Answer of `GET /v1/admin/challenges`.
#[derive(Debug, Deserialize)]
pub struct ChallengeList {
    /// Every challenge, by slug.
    pub challenges: Vec<Challenge>,
}

/// Answer of `GET /v1/registry`.
#[derive(Debug, Deserialize)]
pub struct RegistryView {
    /// Network name (`base`).
    pub network: String,
    /// Contract version.
    pub api_version: String,
    /// The master's uid on the subnet.
    pub master_uid: u16,
    /// Every non-draft challenge, public fields only.
    pub challenges: Vec<PublicChallenge>,
}

/// Answer of `DELETE /v1/admin/challenges/{slug}`.
#[derive(Debug, Deserialize)]
pub struct Deleted {
    /// The slug deleted.
    pub deleted: String,
    /// Whether the data volume is kept.
    pub volumes_retained: bool,
}

/// Answer of `GET /v1/admin/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditLog {
    /// Entries, newest first.
    pub entries: Vec<AuditEntry>,
}

/// Whether a route needs the admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Admin,
    Public,
}

/// A client of one master.
#[derive(Debug, Clone)]
pub struct MasterClient {
    base: Url,
    token: Option<SecretString>,
    http: reqwest::Client,
}

impl MasterClient {
    /// A client of the master at `base` (an http(s) URL, possibly with a
    /// path prefix when the master sits behind a reverse proxy).
    pub fn new(base: Url, token: Option<SecretString>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("base-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(error_chain(&e)))?;
        Ok(Self { base, token, http })
    }

    /// The master's base URL with any password masked, for messages.
    pub fn display_url(&self) -> String {
        let mut u = self.base.clone();
        if u.password().is_some() {
            // Fails only for URLs that cannot have credentials at all.
            let _ = u.set_password(Some("***"));
        }
        // `http://host:18080/` reads better without the root slash.
        let text = u.to_string();
        match text.strip_suffix('/') {
            Some(short) if u.path() == "/" => short.to_string(),
            _ => text,
        }
    }

    /// `GET /v1/registry` (no token).
    pub async fn registry(&self) -> Result<Fetched<RegistryView>, ClientError> {
        self.call(Method::GET, &["v1", "registry"], Auth::Public, &[], None)
            .await
    }

    /// `POST /v1/admin/challenges`.
    pub async fn create_challenge(
        &self,
        req: &NewChallenge,
    ) -> Result<Fetched<Created>, ClientError> {
        let body = to_json(req, "the create request")?;
        self.call(
            Method::POST,
            &["v1", "admin", "challenges"],
            Auth::Admin,
            &[],
            Some(body),
        )
        .await
    }

    /// `GET /v1/admin/challenges`.
    pub async fn list_challenges(&self) -> Result<Fetched<ChallengeList>, ClientError> {
        self.call(
            Method::GET,
            &["v1", "admin", "challenges"],
            Auth::Admin,
            &[],
            None,
        )
        .await
    }

    /// `GET /v1/admin/challenges/{slug}`.
    pub async fn challenge(&self, slug: &str) -> Result<Fetched<ChallengeDetail>, ClientError> {
        self.call(
            Method::GET,
            &["v1", "admin", "challenges", slug],
            Auth::Admin,
            &[],
            None,
        )
        .await
    }

    /// `PATCH /v1/admin/challenges/{slug}`.
    pub async fn update_challenge(
        &self,
        slug: &str,
        patch: &ChallengePatch,
    ) -> Result<Fetched<Challenge>, ClientError> {
        let body = to_json(patch, "the update request")?;
        self.call(
            Method::PATCH,
            &["v1", "admin", "challenges", slug],
            Auth::Admin,
            &[],
            Some(body),
        )
        .await
    }

    /// `POST /v1/admin/challenges/{slug}/activate`.
    pub async fn activate(&self, slug: &str) -> Result<Fetched<Challenge>, ClientError> {
        self.call(
            Method::POST,
            &["v1", "admin", "challenges", slug, "activate"],
            Auth::Admin,
            &[],
            None,
        )
        .await
    }

    /// `GET /v1/admin/challenges/{slug}/status`: the orchestrator's view.
    pub async fn runtime_status(&self, slug: &str) -> Result<Fetched<RuntimeStatus>, ClientError> {
        self.call(
            Method::GET,
            &["v1", "admin", "challenges", slug, "status"],
            Auth::Admin,
            &[],
            None,
        )
        .await
    }

    /// `POST /v1/admin/challenges/{slug}/deactivate`.
    pub async fn deactivate(&self, slug: &str) -> Result<Fetched<Challenge>, ClientError> {
        self.call(
            Method::POST,
            &["v1", "admin", "challenges", slug, "deactivate"],
            Auth::Admin,
            &[],
            None,
        )
        .await
    }

    /// `POST /v1/admin/challenges/{slug}/tokens/rotate`; `None` rotates both.
    pub async fn rotate_tokens(
        &self,
        slug: &str,
        kind: Option<TokenKind>,
    ) -> Result<Fetched<IssuedTokens>, ClientError> {
        // Always send the kind explicitly, "all" included, so the request
        // says what the operator asked for instead of relying on a default.
        let kind = kind.map_or("all", TokenKind::as_str);
        self.call(
            Method::POST,
            &["v1", "admin", "challenges", slug, "tokens", "rotate"],
            Auth::Admin,
            &[],
            Some(serde_json::json!({ "kind": kind })),
        )
        .await
    }

    /// `DELETE /v1/admin/challenges/{slug}[?purge_volumes=true]`.
    pub async fn delete_challenge(
        &self,
        slug: &str,
        purge_volumes: bool,
    ) -> Result<Fetched<Deleted>, ClientError> {
        // Sent only when asked for: the default (keep the volume) needs no
        // parameter, and older masters may not know this one.
        let query: Vec<(&str, String)> = if purge_volumes {
            vec![("purge_volumes", "true".to_string())]
        } else {
            Vec::new()
        };
        self.call(
            Method::DELETE,
            &["v1", "admin", "challenges", slug],
            Auth::Admin,
            &query,
            None,
        )
        .await
    }

    /// `GET /v1/admin/audit[?slug=…&limit=…]`.
    pub async fn audit(
        &self,
        slug: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Fetched<AuditLog>, ClientError> {
        let mut query = Vec::new();
        if let Some(s) = slug {
            query.push(("slug", s.to_string()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        self.call(
            Method::GET,
            &["v1", "admin", "audit"],
            Auth::Admin,
            &query,
            None,
        )
        .await
    }

    /// `GET /v1/weights/latest` (no token): the published vector, typed.
    /// A master that has not finished its first epoch answers 503, which
    /// comes back as [`ClientError::Api`] with the master's `detail`.
    pub async fn weights_latest(&self) -> Result<Fetched<WeightsSnapshot>, ClientError> {
        self.call(
            Method::GET,
            &["v1", "weights", "latest"],
            Auth::Public,
            &[],
            None,
        )
        .await
    }

    /// `GET /v1/weights/latest` (no token): the body exactly as the master
    /// sent it, checked only to be JSON, so `--json` neither reorders keys
    /// nor re-rounds floats and still works if the snapshot gains fields.
    pub async fn weights_latest_raw(&self) -> Result<Vec<u8>, ClientError> {
        let (what, bytes) = self
            .send(
                Method::GET,
                &["v1", "weights", "latest"],
                Auth::Public,
                &[],
                None,
            )
            .await?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
            ClientError::InvalidResponse {
                what,
                reason: format!("not JSON ({e})"),
            }
        })?;
        Ok(bytes)
    }

    /// The URL of `segments` under the base URL. Segments are
    /// percent-encoded one by one, so a slug can never add path levels.
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                ClientError::Setup(format!("'{}' cannot be a base URL", self.display_url()))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends a request and returns the body of a 2xx answer, with
    /// `METHOD /path` for messages; any other status becomes an error.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        auth: Auth,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
    ) -> Result<(String, Vec<u8>), ClientError> {
        let url = self.url(segments)?;
        let what = format!("{method} {}", url.path());
        let mut req = self.http.request(method, url);
        if !query.is_empty() {
            req = req.query(query);
        }
        if auth == Auth::Admin {
            // Checked before sending: the master would only answer 401, and
            // "no token given" is the more useful thing to say.
            let token = self.token.as_ref().ok_or(ClientError::NoAdminToken)?;
            let mut value =
                HeaderValue::from_str(token.expose_secret()).map_err(|_| ClientError::BadToken)?;
            // Keeps the value out of any debug or trace output of the request.
            value.set_sensitive(true);
            req = req.header(ADMIN_HEADER, value);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(if self.token.is_some() {
                ClientError::Unauthorized
            } else {
                ClientError::NoAdminToken
            });
        }
        if !status.is_success() {
            return Err(ClientError::Api {
                status,
                detail: detail_of(&bytes),
            });
        }
        Ok((what, bytes.to_vec()))
    }

    /// [`Self::send`], then the body parsed both as JSON and as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        auth: Auth,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
    ) -> Result<Fetched<T>, ClientError> {
        let (what, bytes) = self.send(method, segments, auth, query, body).await?;
        let invalid = |reason: String| ClientError::InvalidResponse {
            what: what.clone(),
            reason,
        };
        let raw: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON ({e})")))?;
        let body = T::deserialize(&raw).map_err(|e| invalid(e.to_string()))?;
        Ok(Fetched { raw, body })
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        let reason = if e.is_timeout() {
            format!("timed out ({})", error_chain(e))
        } else {
            error_chain(e)
        };
        ClientError::Unreachable {
            url: self.display_url(),
            reason,
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T, what: &str) -> Result<serde_json::Value, ClientError> {
    serde_json::to_value(v).map_err(|e| ClientError::InvalidResponse {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// The causes of an error joined with ": ", skipping the outermost one
/// when it has causes: reqwest's own message only repeats the URL
/// ("error sending request for url …") while the useful part ("Connection
/// refused") is at the bottom of the chain.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// What to show of an error body: `detail` when it is the API's shape
/// (`{"detail": …}`), otherwise the start of the body.
pub fn detail_of(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(d) = v.get("detail")
    {
        return match d {
            serde_json::Value::String(s) => s.clone(),
            // FastAPI-style validation errors are lists; show them compactly.
            other => other.to_string(),
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no detail in the response)".to_string();
    }
    let mut short: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    if text.chars().count() > MAX_DETAIL_CHARS {
        short.push('…');
    }
    short
}

// Tests may panic on anything unexpected: that is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn client(base: &str) -> MasterClient {
        MasterClient::new(Url::parse(base).unwrap(), None).unwrap()
    }

    #[test]
    fn paths_keep_a_prefix_and_escape_slugs() {
        let c = client("http://m:1/base/");
        assert_eq!(
            c.url(&["v1", "registry"]).unwrap().as_str(),
            "http://m:1/base/v1/registry"
        );
        let c = client("http://m:1");
        assert_eq!(
            c.url(&["v1", "admin", "challenges", "../x?y"])
                .unwrap()
                .as_str(),
            "http://m:1/v1/admin/challenges/..%2Fx%3Fy"
        );
    }

    #[test]
    fn details_come_from_the_api_shape_or_the_body() {
        assert_eq!(
            detail_of(br#"{"detail":"Challenge 'x' not found"}"#),
            "Challenge 'x' not found"
        );
        assert_eq!(
            detail_of(br#"{"detail":[{"loc":["a"]}]}"#),
            r#"[{"loc":["a"]}]"#
        );
        assert_eq!(detail_of(b"Bad Gateway\n"), "Bad Gateway");
        assert_eq!(detail_of(b""), "(no detail in the response)");
        let long = "x".repeat(2000);
        assert_eq!(
            detail_of(long.as_bytes()).chars().count(),
            MAX_DETAIL_CHARS + 1
        );
    }

    #[test]
    fn passwords_in_the_master_url_are_masked() {
        let c = client("https://op:pw@m.example.org/");
        assert_eq!(c.display_url(), "https://op:***@m.example.org");
        assert_eq!(client("http://m:1/base/").display_url(), "http://m:1/base/");
    }

    #[tokio::test]
    async fn admin_calls_without_a_token_fail_before_sending() {
        // Port 1 on loopback: if a request were sent it would fail as
        // unreachable, not as NoAdminToken.
        let c = client("http://127.0.0.1:1");
        assert!(matches!(
            c.list_challenges().await,
            Err(ClientError::NoAdminToken)
        ));
    }

    #[test]
    fn the_created_shape_reads_tokens_from_the_top_level() {
        let raw = serde_json::json!({
            "challenge": {
                "slug": "ab", "name": "n", "description": "", "image": "ghcr.io/x/y:1",
                "image_digest": null, "version": "1", "emission_percent": "1.0",
                "status": "draft", "api_version": "1.0",
                "internal_base_url": "http://challenge-ab:8000",
                "required_capabilities": [], "resources": {}, "volumes": {}, "env": {},
                "secrets": [], "metadata": {}, "broker": {},
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
            },
            "challenge_token": "c-token",
            "docker_broker_token": "b-token"
        });
        let created = Created::deserialize(&raw).unwrap();
        assert_eq!(
            created
                .tokens
                .challenge_token
                .as_ref()
                .map(|t| t.expose_secret().to_string())
                .as_deref(),
            Some("c-token")
        );
        assert!(!format!("{created:?}").contains("c-token"));
    }
}

/// Body of `GET /v1/admin/challenges/{slug}/status`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RuntimeStatus {
    /// The challenge.
    pub slug: String,
    /// What the record asks for.
    pub desired_status: base_sdk::model::ChallengeStatus,
    /// Which orchestrator answered.
    pub orchestrator: String,
    /// What it reports.
    pub runtime: base_sdk::orchestrator::ServiceStatus,
    /// The `/health` + `/version` probe, when the service runs.
    #[serde(default)]
    pub readiness: Option<base_sdk::orchestrator::readiness::Readiness>,
}
