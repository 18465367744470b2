//! The public proxy: how miners reach challenges through the master's one
//! public port (CONTRACTS.md §3.2, §3.3), and the limits that keep that
//! port — the subnet's attack surface — fast and tight.
//!
//! The rules are pure functions in [`path`] (which paths may be
//! forwarded), [`headers`] (which headers cross) and [`signature`] (miner
//! signatures); [`Proxy`] holds the IO: the in-memory [`directory`] of
//! challenges with their keep-alive connections ([`pool`]), the
//! per-client [`limit`]er, and the [`forward`]ing and [`bridge`] code that
//! stream bodies through.

pub mod bridge;
pub mod directory;
pub mod forward;
pub mod headers;
pub mod http1;
pub mod limit;
pub mod path;
pub mod pool;
pub mod signature;
pub mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};

use crate::metagraph::Metagraph;
use crate::orchestrator::Orchestrator;
use crate::registry::Registry;
use crate::store::StoreError;
pub use directory::{Directory, Entry};
pub use limit::{
    ClientCaps, ClientLimiter, ClientSlots, LimitError, MinRate, RateLimit, RequestSlot,
    TrustedProxies,
};
pub use path::PathError;
pub use signature::SignatureError;

/// The header a reverse proxy lists the addresses it forwarded for in.
pub const FORWARDED_FOR: &str = "x-forwarded-for";
/// The header a reverse proxy names the client it forwards for in.
pub const REAL_IP: &str = "x-real-ip";

/// The proxy's settings (each an operator setting; see docs/proxy.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Subnet id, part of every signed message.
    pub netuid: u16,
    /// Largest request body forwarded (bytes); bigger is 413, decided
    /// from `Content-Length` or while streaming.
    pub max_body_bytes: u64,
    /// How long a challenge may take to send its response headers. The
    /// body may stream for longer (Server-Sent Events).
    pub upstream_timeout: Duration,
    /// Concurrent upstream requests per challenge (streams count until
    /// they end); more is 503 with `Retry-After`.
    pub max_concurrent_per_challenge: usize,
    /// Per-client-IP rate.
    pub rate_limit: RateLimit,
    /// Background refresh of the challenge directory.
    pub directory_refresh: Duration,
    /// Accepted clock difference of a signed request (± seconds).
    pub signature_window_seconds: i64,
    /// How long a used nonce is remembered.
    pub nonce_retention: Duration,
    /// Uids whose hotkeys may not use the bridge (the owner's uid 0).
    pub blocked_uids: Vec<u16>,
    /// Whether plain passthrough requests take the byte-level fast path
    /// ([`http1`]) on the master's listener threads.
    pub fast_path: bool,
    /// How long the upload bridge waits for a whole signed upload body
    /// once its head passed the checks; slower is 408.
    pub upload_body_timeout: Duration,
    /// Signed uploads being received or forwarded at once, all hotkeys
    /// together; more is 503. Bounds the memory bodies take (each up to
    /// `max_body_bytes`).
    pub max_concurrent_uploads: usize,
    /// Signed uploads one hotkey may have in progress at once; more is 429.
    pub max_concurrent_uploads_per_hotkey: usize,
    /// What one client may hold at once (requests, streams, connections)
    /// and the total connection cap.
    pub client_caps: ClientCaps,
    /// The slowest a request body may arrive once past its grace period
    /// (408 and the upstream request aborted).
    pub body_min_rate: MinRate,
    /// The slowest a miner may read an answer once past its grace period
    /// (the connection is closed).
    pub send_min_rate: MinRate,
    /// How long a relayed answer's body may go without a byte from the
    /// challenge (the connection is closed).
    pub relay_idle_timeout: Duration,
    /// Reverse proxies whose `X-Forwarded-For` / `X-Real-IP` name the
    /// client (default none).
    pub trusted_proxies: TrustedProxies,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            netuid: 100,
            max_body_bytes: 7_500_000,
            upstream_timeout: Duration::from_secs(60),
            max_concurrent_per_challenge: 256,
            rate_limit: RateLimit {
                per_minute: 600,
                burst: 120,
                include_loopback: false,
            },
            directory_refresh: Duration::from_secs(10),
            signature_window_seconds: 300,
            nonce_retention: Duration::from_secs(24 * 3600),
            blocked_uids: vec![0],
            fast_path: true,
            upload_body_timeout: Duration::from_secs(120),
            max_concurrent_uploads: 32,
            max_concurrent_uploads_per_hotkey: 2,
            client_caps: ClientCaps::default(),
            body_min_rate: MinRate {
                bytes_per_second: 1024,
                grace: Duration::from_secs(10),
            },
            send_min_rate: MinRate {
                bytes_per_second: 1024,
                grace: Duration::from_secs(10),
            },
            relay_idle_timeout: Duration::from_secs(120),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// Why a proxied or bridged request was not forwarded (or failed upstream).
/// [`ProxyError::status`] and the `Display` text are the HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The path resolves to a private route or is malformed (403).
    #[error("Proxy path is not allowed")]
    PathNotAllowed(PathError),
    /// Unknown or inactive slug (404).
    #[error("Challenge not found")]
    NotFound,
    /// Malformed request detail other than the path (400).
    #[error("{0}")]
    BadRequest(String),
    /// A request head whose headers the proxy refuses to forward, such as
    /// a `Connection` that nominates a framing or identity header (400).
    #[error(transparent)]
    Header(#[from] headers::HeaderError),
    /// The body is over the limit (413).
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in force.
        limit: u64,
    },
    /// The client is over its rate (429).
    #[error("too many requests; retry after {retry_after} s")]
    RateLimited {
        /// Seconds until a request would be accepted.
        retry_after: u64,
    },
    /// The challenge has its maximum of requests in flight (503).
    #[error("Challenge '{slug}' is busy: {limit} requests in flight; retry shortly")]
    Busy {
        /// Which challenge.
        slug: String,
        /// Its cap.
        limit: usize,
    },
    /// Could not reach the challenge (502).
    #[error("Challenge unavailable")]
    Unavailable,
    /// The challenge did not answer in time (504).
    #[error("Challenge timed out")]
    Timeout,
    /// A signature header is missing, malformed, stale or forged (401).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The hotkey is not in the metagraph (401).
    #[error("unknown hotkey")]
    UnknownHotkey,
    /// The hotkey's uid may not use the bridge (403).
    #[error("uid {0} is not allowed to submit")]
    BlockedUid(u16),
    /// The nonce was used within the retention window (409).
    #[error("nonce already used")]
    NonceUsed,
    /// The metagraph cannot be read or is not configured (503).
    #[error("metagraph unavailable")]
    MetagraphUnavailable(String),
    /// The store failed (503).
    #[error("database unavailable")]
    Store(#[source] StoreError),
    /// A signed upload's body did not arrive within the deadline (408).
    #[error("request body not received within {seconds} s")]
    UploadTimeout {
        /// The deadline in force.
        seconds: u64,
    },
    /// The bridge has its maximum of uploads in progress (503).
    #[error("too many uploads in progress ({limit}); retry shortly")]
    UploadsBusy {
        /// The global cap.
        limit: usize,
    },
    /// This hotkey has its maximum of uploads in progress (429).
    #[error("this hotkey already has {limit} uploads in progress; retry once one finishes")]
    HotkeyBusy {
        /// The per-hotkey cap.
        limit: usize,
    },
    /// The client holds its maximum (429), or the server its total (503).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The request body arrived more slowly than the minimum rate (408).
    #[error("request body arrived too slowly (under {bytes_per_second} bytes/s)")]
    BodyTooSlow {
        /// The minimum rate in force.
        bytes_per_second: u64,
    },
}

impl ProxyError {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PathNotAllowed(_) | Self::BlockedUid(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) | Self::Header(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy { .. } | Self::MetagraphUnavailable(_) | Self::Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Unavailable => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Signature(_) | Self::UnknownHotkey => StatusCode::UNAUTHORIZED,
            Self::NonceUsed => StatusCode::CONFLICT,
            Self::UploadTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::UploadsBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::HotkeyBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Limit(e) if e.is_global() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Seconds for a `Retry-After` header, when one applies.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Busy { .. }
            | Self::UploadsBusy { .. }
            | Self::HotkeyBusy { .. }
            | Self::Limit(_) => Some(1),
            _ => None,
        }
    }
}

/// The proxy service: settings, the pooled client, the directory and the
/// limiter. One per master, shared by every handler.
pub struct Proxy {
    config: ProxyConfig,
    directory: Directory,
    /// The runtime the proxy was made on (the master's main one), where
    /// directory reloads run: they use the database pool and the
    /// orchestrator client, which belong to that runtime, while requests
    /// may be served on the listener threads' own runtimes.
    runtime: Option<tokio::runtime::Handle>,
    limiter: ClientLimiter,
    metagraph: Option<Arc<dyn Metagraph>>,
    /// Signed uploads in progress, counted against the bridge's caps.
    uploads: bridge::UploadGate,
    /// What each client holds (shared with the listener threads).
    slots: Arc<ClientSlots>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with `config`; `metagraph` is what the bridge checks
    /// hotkeys against (without one the bridge answers 503).
    pub fn new(config: ProxyConfig, metagraph: Option<Arc<dyn Metagraph>>) -> Self {
        Self {
            runtime: tokio::runtime::Handle::try_current().ok(),
            directory: Directory::new(
                config.directory_refresh,
                config.max_concurrent_per_challenge,
            ),
            limiter: ClientLimiter::new(config.rate_limit),
            uploads: bridge::UploadGate::new(
                config.max_concurrent_uploads,
                config.max_concurrent_uploads_per_hotkey,
            ),
            slots: Arc::new(ClientSlots::new(config.client_caps)),
            config,
            metagraph,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The challenge directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The per-client counts (connections are counted by the listener).
    pub fn slots(&self) -> &Arc<ClientSlots> {
        &self.slots
    }

    /// The client a request from the TCP peer `peer` is for: `peer`, or
    /// what a trusted proxy says in `X-Forwarded-For` / `X-Real-IP`.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = &self.config.trusted_proxies;
        if trusted.is_empty() {
            return peer;
        }
        trusted.client(
            peer,
            headers
                .get_all(FORWARDED_FOR)
                .iter()
                .map(HeaderValue::as_bytes),
            headers.get(REAL_IP).map(HeaderValue::as_bytes),
        )
    }

    /// Counts a request of `client` to `entry` against its caps (429 when
    /// over); an unknown client (no socket address) is not counted.
    pub fn client_slot(
        &self,
        client: Option<IpAddr>,
        entry: &Entry,
    ) -> Result<Option<RequestSlot>, ProxyError> {
        let Some(client) = client else {
            return Ok(None);
        };
        // The permits live as long as the challenge (across reloads).
        let challenge = Arc::as_ptr(&entry.permits) as usize;
        Ok(Some(self.slots.request(client, challenge)?))
    }

    /// Refuses a client over its rate with 429.
    pub fn check_rate(&self, client: Option<IpAddr>) -> Result<(), ProxyError> {
        self.limiter
            .check(client)
            .map_err(|wait| ProxyError::RateLimited {
                retry_after: limit::retry_after_seconds(wait),
            })
    }

    /// The active challenge `slug` (any case: slugs are stored lower-case),
    /// from memory. When the background refresh is due, one is started
    /// without delaying this request.
    pub async fn challenge(
        self: &Arc<Self>,
        slug: &str,
        registry: &Registry,
        orchestrator: Option<&Arc<dyn Orchestrator>>,
    ) -> Result<Arc<Entry>, ProxyError> {
        if self.directory.is_dirty() {
            // An admin write: reload before answering, so a challenge
            // activated a moment ago is reachable at once.
            let me = self.clone();
            let registry = registry.clone();
            let orchestrator = orchestrator.cloned();
            self.on_main(async move {
                me.directory
                    .reload(&registry, orchestrator.as_ref(), true)
                    .await;
            })
            .await;
        } else if self.directory.claim_refresh() {
            let me = self.clone();
            let registry = registry.clone();
            let orchestrator = orchestrator.cloned();
            let refresh = async move {
                me.directory
                    .reload(&registry, orchestrator.as_ref(), false)
                    .await;
                me.limiter.forget_idle();
            };
            match &self.runtime {
                Some(runtime) => drop(runtime.spawn(refresh)),
                None => drop(tokio::spawn(refresh)),
            }
        }
        // Only a mixed-case request pays for a copy.
        let slug = if slug.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(slug.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(slug)
        };
        self.directory
            .snapshot()
            .get(slug.as_ref())
            .cloned()
            .ok_or(ProxyError::NotFound)
    }

    /// Runs `work` on the proxy's main runtime (or here, without one) and
    /// waits for it.
    async fn on_main(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.runtime {
            Some(runtime) => {
                // A failure means the main runtime is shutting down; the
                // lookup then answers from the map as it is.
                let _ = runtime.spawn(work).await;
            }
            None => work.await,
        }
    }
}
