//! Where each active challenge is reached: slug → internal base URL, kept
//! in memory so a proxied request never queries the database.
//!
//! The map is rebuilt from the registry (and the orchestrator's endpoint,
//! when it decides one) when an admin write marks it dirty — the next
//! lookup reloads before answering, so a challenge activated a moment ago
//! is reachable at once — and in the background every refresh interval,
//! which catches endpoint changes and writes made by another process. A
//! failed reload keeps the previous map: the proxy keeps serving while the
//! database blinks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use super::pool::Upstream;
use crate::model::{ChallengeStatus, Slug};
use crate::orchestrator::Orchestrator;
use crate::registry::Registry;

/// One reachable challenge.
pub struct Entry {
    /// Canonical slug.
    pub slug: Slug,
    /// The slug as a header value (`X-Base-Challenge-Slug`), made once.
    pub slug_header: HeaderValue,
    /// Base URL without a trailing `/`.
    pub base_url: String,
    /// The same, parsed once: each request only sets path and query on a
    /// clone (no URL or IDNA parsing per request).
    pub base: reqwest::Url,
    /// Where connections go, and the key of their pooled connections;
    /// kept across reloads while the URL stays the same.
    pub upstream: Arc<Upstream>,
    /// Concurrent upstream requests still allowed; shared across reloads
    /// so in-flight requests keep counting.
    pub permits: Arc<Semaphore>,
    /// The challenge token the bridge presents; `None` when it cannot be
    /// revealed (no sealing key), in which case the bridge answers 502.
    pub token: Option<SecretString>,
}

impl Entry {
    /// The origin-form request target (what an HTTP/1 request line
    /// carries) for `path` (already encoded, starting with `/`) and the
    /// raw `query`, under the base URL's own path: [`Entry::url`] without
    /// scheme and authority.
    pub fn uri(
        &self,
        path: &str,
        query: Option<&str>,
    ) -> Result<axum::http::Uri, super::ProxyError> {
        self.upstream
            .target(path, query)
            .ok_or_else(|| super::ProxyError::BadRequest("unusable request path".into()))
    }

    /// The challenge URL for `path` (already encoded, starting with `/`)
    /// and `query`, under the base URL's own path.
    pub fn url(&self, path: &str, query: Option<&str>) -> reqwest::Url {
        let mut url = self.base.clone();
        let prefix = self.base.path().trim_end_matches('/');
        if prefix.is_empty() {
            url.set_path(path);
        } else {
            url.set_path(&format!("{prefix}{path}"));
        }
        url.set_query(query);
        url
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("slug", &self.slug.as_str())
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish_non_exhaustive()
    }
}

type Map = HashMap<String, Arc<Entry>>;

/// The in-memory slug → challenge map.
pub struct Directory {
    map: RwLock<Arc<Map>>,
    /// Bumped by every admin write.
    requested: AtomicU64,
    /// The `requested` value the current map reflects; a lookup that
    /// finds it behind reloads (or waits for the reload in progress)
    /// before answering.
    applied: AtomicU64,
    /// When the map was last (re)loaded, successfully or not.
    loaded_at: Mutex<Option<Instant>>,
    /// One reload at a time.
    reload: tokio::sync::Mutex<()>,
    refresh_every: Duration,
    max_concurrent: usize,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("challenges", &self.snapshot().len())
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// An empty directory that loads on first use. Each challenge gets
    /// `max_concurrent` upstream permits.
    pub fn new(refresh_every: Duration, max_concurrent: usize) -> Self {
        Self {
            map: RwLock::new(Arc::default()),
            requested: AtomicU64::new(1),
            applied: AtomicU64::new(0),
            loaded_at: Mutex::new(None),
            reload: tokio::sync::Mutex::new(()),
            refresh_every,
            max_concurrent: max_concurrent.max(1),
        }
    }

    /// Marks the map out of date (called after every registry write).
    pub fn invalidate(&self) {
        self.requested.fetch_add(1, Ordering::AcqRel);
    }

    /// The current map.
    pub fn snapshot(&self) -> Arc<Map> {
        match self.map.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether the periodic refresh is due; if so, claims it (so that
    /// only one caller starts it) by stamping the load time now.
    pub fn claim_refresh(&self) -> bool {
        let mut at = match self.loaded_at.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if at.is_none_or(|t| t.elapsed() >= self.refresh_every) {
            *at = Some(Instant::now());
            true
        } else {
            false
        }
    }

    /// Whether an admin write happened since the last reload.
    pub fn is_dirty(&self) -> bool {
        self.applied.load(Ordering::Acquire) < self.requested.load(Ordering::Acquire)
    }

    /// The entry for `slug`, reloading first when the map is dirty.
    pub async fn lookup(
        &self,
        slug: &str,
        registry: &Registry,
        orchestrator: Option<&Arc<dyn Orchestrator>>,
    ) -> Option<Arc<Entry>> {
        if self.is_dirty() {
            self.reload(registry, orchestrator, true).await;
        }
        self.snapshot().get(slug).cloned()
    }

    /// Reloads from the registry. With `only_if_dirty`, a caller that
    /// waited for another's reload does not repeat it.
    pub async fn reload(
        &self,
        registry: &Registry,
        orchestrator: Option<&Arc<dyn Orchestrator>>,
        only_if_dirty: bool,
    ) {
        let _one = self.reload.lock().await;
        if only_if_dirty && !self.is_dirty() {
            return;
        }
        // Read before loading, so a write during the load dirties again.
        let target = self.requested.load(Ordering::Acquire);
        match self.load(registry, orchestrator).await {
            Ok(map) => match self.map.write() {
                Ok(mut m) => *m = Arc::new(map),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(map),
            },
            Err(e) => {
                tracing::warn!(error = %e, "proxy directory reload failed; keeping the previous one")
            }
        }
        // Also after a failure: the next attempt is the periodic one, not
        // one per request while the database is down.
        self.applied.fetch_max(target, Ordering::AcqRel);
        match self.loaded_at.lock() {
            Ok(mut g) => *g = Some(Instant::now()),
            Err(p) => *p.into_inner() = Some(Instant::now()),
        }
    }

    async fn load(
        &self,
        registry: &Registry,
        orchestrator: Option<&Arc<dyn Orchestrator>>,
    ) -> Result<Map, crate::registry::RegistryError> {
        let old = self.snapshot();
        let mut map = Map::new();
        for c in registry.list().await? {
            if c.status != ChallengeStatus::Active {
                continue;
            }
            let mut base_url = c.internal_base_url.clone();
            if let Some(o) = orchestrator {
                match o.challenge_status(&c.slug).await {
                    Ok(status) => {
                        if let Some(endpoint) = status.endpoint {
                            base_url = endpoint;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(slug = %c.slug, error = %e, "no orchestrator status; using internal_base_url")
                    }
                }
            }
            let Ok(slug_header) = HeaderValue::from_str(c.slug.as_str()) else {
                continue;
            };
            let base_url = base_url.trim_end_matches('/').to_string();
            let Ok(base) = reqwest::Url::parse(&base_url) else {
                tracing::warn!(slug = %c.slug, url = %base_url, "unusable challenge URL; not proxied");
                continue;
            };
            let token = registry
                .reveal(&c.slug)
                .await
                .ok()
                .map(|s| s.challenge_token);
            let permits = old
                .get(c.slug.as_str())
                .map(|e| e.permits.clone())
                .unwrap_or_else(|| Arc::new(Semaphore::new(self.max_concurrent)));
            let previous = old.get(c.slug.as_str());
            let upstream = match previous.filter(|e| e.base_url == base_url) {
                Some(e) => e.upstream.clone(),
                None => match Upstream::new(&base) {
                    Ok(u) => Arc::new(u),
                    Err(e) => {
                        tracing::warn!(slug = %c.slug, error = %e, "unusable challenge URL; not proxied");
                        continue;
                    }
                },
            };
            map.insert(
                c.slug.as_str().to_string(),
                Arc::new(Entry {
                    slug_header,
                    base_url,
                    base,
                    upstream,
                    permits,
                    token,
                    slug: c.slug,
                }),
            );
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: &str) -> Entry {
        Entry {
            slug: Slug::parse("echo").unwrap(),
            slug_header: HeaderValue::from_static("echo"),
            base_url: base.trim_end_matches('/').to_string(),
            base: reqwest::Url::parse(base).unwrap(),
            upstream: Arc::new(Upstream::new(&reqwest::Url::parse(base).unwrap()).unwrap()),
            permits: Arc::new(Semaphore::new(1)),
            token: None,
        }
    }

    #[test]
    fn urls_keep_the_base_path_and_the_encoding() {
        let e = entry("http://challenge-echo:8000");
        assert_eq!(
            e.url("/a%20b/c", Some("x=1&y=%2F")).as_str(),
            "http://challenge-echo:8000/a%20b/c?x=1&y=%2F"
        );
        assert_eq!(e.url("/", None).as_str(), "http://challenge-echo:8000/");
        let e = entry("http://10.0.0.5:8000/prefix/");
        assert_eq!(
            e.url("/tasks/", None).as_str(),
            "http://10.0.0.5:8000/prefix/tasks/"
        );
        let dbg = format!(
            "{:?}",
            Entry {
                token: Some(SecretString::from("s3cret".to_string())),
                ..entry("http://x")
            }
        );
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }
}
