//! Who may do what: the admin token check (more checks join with the
//! broker and the miner bridge), and the [`AdminGuard`] that keeps the
//! admin routes from being flooded or guessed at.
//!
//! Admin routes fail closed: with no token configured every request is
//! refused, so a forgotten `BASE_ADMIN_TOKEN` never opens the registry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use secrecy::SecretString;

use crate::proxy::limit::client_key;
use crate::registry::token;

/// Why a request was not authenticated. Every variant answers the same
/// `Unauthorized` (a client learns nothing from the difference); the
/// variant is for the server's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No admin token is configured: admin routes are closed.
    #[error("Unauthorized")]
    NotConfigured,
    /// The request carries no credential.
    #[error("Unauthorized")]
    Missing,
    /// The credential is not the admin token.
    #[error("Unauthorized")]
    Wrong,
}

impl AuthError {
    /// A short reason for the log (never any part of the credential).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConfigured => "no admin token configured",
            Self::Missing => "no credential",
            Self::Wrong => "wrong credential",
        }
    }
}

/// The configured admin credential.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<SecretString>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("configured", &self.token.is_some())
            .finish()
    }
}

impl AdminAuth {
    /// `None` means admin routes are closed.
    pub fn new(token: Option<SecretString>) -> Self {
        Self { token }
    }

    /// Checks `X-Admin-Token` or `Authorization: Bearer`; returns the actor
    /// name recorded in the audit log: `admin:` and the first 8 hex digits
    /// of the token's SHA-256, which tells tokens apart without revealing
    /// any of their characters.
    pub fn check(
        &self,
        x_admin_token: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<String, AuthError> {
        let configured = self.token.as_ref().ok_or(AuthError::NotConfigured)?;
        let presented = x_admin_token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .or_else(|| bearer(authorization))
            .ok_or(AuthError::Missing)?;
        if token::secrets_equal(configured, presented) {
            Ok(format!("admin:{}", &token::hash(presented)[..8]))
        } else {
            Err(AuthError::Wrong)
        }
    }
}

/// The credential of an `Authorization: Bearer <t>` header (scheme
/// case-insensitive).
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim()).filter(|t| !t.is_empty())
    } else {
        None
    }
}

/// How hard the admin routes push back on one client (operator
/// settings; see docs/operator.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Admin requests per minute per client; 0 turns the rate limit off.
    pub per_minute: u32,
    /// Requests a client may send at once before the rate applies.
    pub burst: u32,
    /// Failed authentications a client may make before it is locked out.
    pub max_failures: u32,
    /// The longest lockout; lockouts double up to it.
    pub lockout_max: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            per_minute: 60,
            burst: 30,
            max_failures: 5,
            lockout_max: Duration::from_secs(900),
        }
    }
}

/// The first lockout; each further failure doubles it.
pub const FIRST_LOCKOUT: Duration = Duration::from_secs(10);

/// Clients whose failures are remembered at most; past it, forgotten
/// clients are dropped first (see [`AdminGuard::failed_at`]).
const MAX_TRACKED: usize = 65_536;

/// How long a client that has failed `failures` times in a row is locked
/// out: nothing below `limits.max_failures`, then [`FIRST_LOCKOUT`]
/// doubling with each further failure, never more than
/// `limits.lockout_max`.
pub fn lockout(failures: u32, limits: &AdminLimits) -> Option<Duration> {
    let over = failures.checked_sub(limits.max_failures.max(1))?;
    let factor = 1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX);
    Some(FIRST_LOCKOUT.saturating_mul(factor).min(limits.lockout_max))
}

/// Why the guard refused an admin request before its credential was
/// looked at (both are 429 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// The client is over the admin request rate.
    #[error("too many admin requests; retry after {} s", whole_seconds(*retry_after))]
    RateLimited {
        /// Until a request would be accepted.
        retry_after: Duration,
    },
    /// The client failed authentication too often and is locked out.
    #[error("too many failed admin authentications; retry after {} s", whole_seconds(*retry_after))]
    LockedOut {
        /// Until the lockout ends.
        retry_after: Duration,
    },
}

impl AdminRefusal {
    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            Self::RateLimited { retry_after } | Self::LockedOut { retry_after } => {
                whole_seconds(*retry_after)
            }
        }
    }
}

fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// What the guard remembers of a client that failed.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// The result of recording a failure, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRecord {
    /// Failures in a row from this client (0 when it is not tracked: no
    /// address known).
    pub failures: u32,
    /// The lockout this failure started, if any.
    pub locked_for: Option<Duration>,
}

/// Per-client rate limit and failed-authentication lockout of the admin
/// routes. A refused client is answered 429 at once — the guard never
/// sleeps, so a flood of bad tokens cannot tie up server tasks.
pub struct AdminGuard {
    limits: AdminLimits,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Admissions so far; every [`FORGET_EVERY`]th one drops the rate
    /// limiter's state of clients whose allowance is full again.
    admitted: AtomicU64,
}

/// How often (in admin requests) idle clients leave the rate limiter's
/// table, so it does not grow with every address ever seen.
const FORGET_EVERY: u64 = 1024;

impl std::fmt::Debug for AdminGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminGuard")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for AdminGuard {
    fn default() -> Self {
        Self::new(AdminLimits::default())
    }
}

impl AdminGuard {
    /// A guard enforcing `limits`.
    pub fn new(limits: AdminLimits) -> Self {
        let rate = NonZeroU32::new(limits.per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(per_minute);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self {
            limits,
            rate,
            failures: Mutex::default(),
            admitted: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &AdminLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        match self.failures.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `client` may make an admin request now. An unknown client
    /// (no socket address: in-process calls) is not limited.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<(), AdminRefusal> {
        self.admit_at(client, Instant::now())
    }

    /// [`AdminGuard::admit`] at `now`. A locked-out client is refused
    /// without spending its rate allowance.
    pub fn admit_at(&self, client: Option<IpAddr>, now: Instant) -> Result<(), AdminRefusal> {
        let Some(ip) = client else { return Ok(()) };
        let key = client_key(ip);
        if let Some(until) = self.lock().get(&key).and_then(|f| f.locked_until)
            && until > now
        {
            return Err(AdminRefusal::LockedOut {
                retry_after: until - now,
            });
        }
        if let Some(rate) = &self.rate {
            if self.admitted.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
                rate.retain_recent();
            }
            rate.check_key(&key)
                .map_err(|not_until| AdminRefusal::RateLimited {
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                })?;
        }
        Ok(())
    }

    /// Records a failed authentication by `client`.
    pub fn failed(&self, client: Option<IpAddr>) -> FailureRecord {
        self.failed_at(client, Instant::now())
    }

    /// [`AdminGuard::failed`] at `now`. Failures are forgotten once a
    /// client has been quiet for `lockout_max`. The table is bounded: when
    /// full, quiet clients are dropped, then clients not locked out; if
    /// every tracked client is locked out, a new one is not tracked (the
    /// rate limit still applies to it).
    pub fn failed_at(&self, client: Option<IpAddr>, now: Instant) -> FailureRecord {
        let Some(ip) = client else {
            return FailureRecord {
                failures: 0,
                locked_for: None,
            };
        };
        let key = client_key(ip);
        let quiet = self.limits.lockout_max;
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
            map.retain(|_, f| now.saturating_duration_since(f.last) < quiet);
            if map.len() >= MAX_TRACKED {
                map.retain(|_, f| f.locked_until.is_some_and(|u| u > now));
            }
            if map.len() >= MAX_TRACKED {
                return FailureRecord {
                    failures: 0,
                    locked_for: None,
                };
            }
        }
        let entry = map.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.saturating_duration_since(entry.last) >= quiet {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let locked_for = lockout(entry.count, &self.limits);
        entry.locked_until = locked_for.map(|d| now + d);
        FailureRecord {
            failures: entry.count,
            locked_for,
        }
    }

    /// Records a successful authentication: the client's failures are
    /// forgotten.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        if let Some(ip) = client {
            self.lock().remove(&client_key(ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fails_closed_without_a_token() {
        let a = AdminAuth::new(None);
        assert_eq!(a.check(Some("x"), None), Err(AuthError::NotConfigured));
        assert_eq!(
            a.check(None, Some("Bearer x")),
            Err(AuthError::NotConfigured)
        );
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    fn limits(max_failures: u32) -> AdminLimits {
        AdminLimits {
            per_minute: 0,
            burst: 0,
            max_failures,
            lockout_max: Duration::from_secs(300),
        }
    }

    #[test]
    fn failures_lock_out_that_client_only_and_success_forgets_them() {
        let g = AdminGuard::new(limits(3));
        let t0 = Instant::now();
        let a = ip("203.0.113.7");
        for n in 1..=2 {
            assert_eq!(g.failed_at(a, t0).failures, n);
            assert!(g.admit_at(a, t0).is_ok());
        }
        let third = g.failed_at(a, t0);
        assert_eq!(third.locked_for, Some(FIRST_LOCKOUT));
        assert_eq!(
            g.admit_at(a, t0),
            Err(AdminRefusal::LockedOut {
                retry_after: FIRST_LOCKOUT
            })
        );
        // Another client, and the same one once the lockout is over.
        assert!(g.admit_at(ip("203.0.113.8"), t0).is_ok());
        assert!(g.admit_at(a, t0 + FIRST_LOCKOUT).is_ok());
        // The next failure doubles it.
        let fourth = g.failed_at(a, t0 + FIRST_LOCKOUT);
        assert_eq!(fourth.locked_for, Some(FIRST_LOCKOUT * 2));
        g.succeeded(a);
        assert!(g.admit_at(a, t0 + FIRST_LOCKOUT).is_ok());
        assert_eq!(g.failed_at(a, t0 + FIRST_LOCKOUT).failures, 1);
        // A quiet period forgets failures too.
        let later = t0 + FIRST_LOCKOUT + Duration::from_secs(300);
        assert_eq!(g.failed_at(a, later).failures, 1);
        // No address: nothing tracked.
        assert_eq!(g.failed_at(None, t0).failures, 0);
        assert!(g.admit_at(None, t0).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let g = AdminGuard::new(limits(1));
        let t0 = Instant::now();
        g.failed_at(ip("2001:db8:1:2::1"), t0);
        assert!(g.admit_at(ip("2001:db8:1:2::99"), t0).is_err());
        assert!(g.admit_at(ip("2001:db8:1:3::1"), t0).is_ok());
        g.failed_at(ip("::ffff:198.51.100.1"), t0);
        assert!(g.admit_at(ip("198.51.100.1"), t0).is_err());
    }

    #[test]
    fn rate_limit_refuses_past_the_burst() {
        let g = AdminGuard::new(AdminLimits {
            per_minute: 60,
            burst: 2,
            ..limits(5)
        });
        let now = Instant::now();
        assert!(g.admit_at(ip("127.0.0.1"), now).is_ok());
        assert!(g.admit_at(ip("127.0.0.1"), now).is_ok());
        let refused = g.admit_at(ip("127.0.0.1"), now).unwrap_err();
        assert!(matches!(refused, AdminRefusal::RateLimited { .. }));
        assert_eq!(refused.retry_after_seconds(), 1);
        assert!(g.admit_at(ip("127.0.0.2"), now).is_ok());
    }

    proptest! {
        /// Lockouts start at the threshold, never shrink as failures
        /// grow, and never pass the maximum.
        #[test]
        fn lockout_grows_and_is_bounded(
            max_failures in 0u32..10,
            max_secs in 1u64..100_000,
            failures in 0u32..200,
        ) {
            let l = AdminLimits {
                lockout_max: Duration::from_secs(max_secs),
                ..limits(max_failures)
            };
            let now = lockout(failures, &l);
            prop_assert_eq!(now.is_some(), failures >= max_failures.max(1));
            if let Some(d) = now {
                prop_assert!(d <= l.lockout_max);
                prop_assert!(lockout(failures + 1, &l) >= Some(d));
            }
        }
    }

    #[test]
    fn either_header_works() {
        let a = AdminAuth::new(Some(SecretString::from(
            "correct-horse-battery".to_string(),
        )));
        assert!(a.check(Some("correct-horse-battery"), None).is_ok());
        assert!(a.check(None, Some("Bearer correct-horse-battery")).is_ok());
        assert!(a.check(None, Some("bearer correct-horse-battery")).is_ok());
        assert!(a.check(Some("wrong"), None).is_err());
        assert!(a.check(None, Some("Basic correct-horse-battery")).is_err());
        assert!(a.check(Some(""), None).is_err());
        assert!(a.check(None, None).is_err());
        let actor = a.check(Some("correct-horse-battery"), None).unwrap();
        assert_eq!(actor.len(), "admin:".len() + 8);
        assert!(
            !actor.contains("corr") && !actor.contains("tery"),
            "{actor}"
        );
        assert!(!format!("{a:?}").contains("correct"));
    }
}
