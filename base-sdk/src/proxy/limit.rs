//! Per-client-IP rate limiting of the public proxy (GCRA via `governor`).
//!
//! Keys are addresses, except that IPv6 clients are keyed by their /64:
//! one subscriber usually holds a whole /64, so limiting single v6
//! addresses would limit nothing. Loopback clients are exempt unless the
//! operator says otherwise, so local tools and benchmarks are not
//! throttled (behind a local reverse proxy every client is loopback; see
//! docs/proxy.md).

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// The rate a client may reach challenges at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per minute per client; 0 turns limiting off.
    pub per_minute: u32,
    /// Requests a client may send at once before the rate applies.
    pub burst: u32,
    /// Whether loopback clients are limited too.
    pub include_loopback: bool,
}

/// The limiter itself; `None` inside when limiting is off.
#[derive(Debug)]
pub struct ClientLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    include_loopback: bool,
}

impl ClientLimiter {
    /// A limiter for `rate`.
    pub fn new(rate: RateLimit) -> Self {
        let limiter = NonZeroU32::new(rate.per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(rate.burst).unwrap_or(per_minute);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self {
            limiter,
            include_loopback: rate.include_loopback,
        }
    }

    /// `Ok` when `client` may make a request now, else how long to wait.
    /// An unknown client (no socket address) is not limited.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let (Some(limiter), Some(ip)) = (&self.limiter, client) else {
            return Ok(());
        };
        let ip = ip.to_canonical();
        if ip.is_loopback() && !self.include_loopback {
            return Ok(());
        }
        limiter
            .check_key(&key(ip))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets clients whose allowance is full again, so the table does
    /// not grow with every address ever seen.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The rate-limit key of an address: itself for IPv4, its /64 for IPv6.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Whole seconds for a `Retry-After` header (at least 1).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn burst_then_refused_with_a_wait() {
        let l = ClientLimiter::new(RateLimit {
            per_minute: 60,
            burst: 2,
            include_loopback: false,
        });
        assert!(l.check(ip("203.0.113.7")).is_ok());
        assert!(l.check(ip("203.0.113.7")).is_ok());
        let wait = l.check(ip("203.0.113.7")).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another client is unaffected.
        assert!(l.check(ip("203.0.113.8")).is_ok());
        // Loopback is exempt by default; unknown clients are not limited.
        for _ in 0..10 {
            assert!(l.check(ip("127.0.0.1")).is_ok());
            assert!(l.check(ip("::ffff:127.0.0.1")).is_ok());
            assert!(l.check(None).is_ok());
        }
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let l = ClientLimiter::new(RateLimit {
            per_minute: 60,
            burst: 1,
            include_loopback: true,
        });
        assert!(l.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(l.check(ip("2001:db8:1:2::ffff")).is_err());
        assert!(l.check(ip("2001:db8:1:3::1")).is_ok());
        assert!(l.check(ip("::1")).is_ok());
        assert!(l.check(ip("::1")).is_err(), "loopback included when asked");
    }

    #[test]
    fn off_when_zero() {
        let l = ClientLimiter::new(RateLimit {
            per_minute: 0,
            burst: 0,
            include_loopback: true,
        });
        for _ in 0..100 {
            assert!(l.check(ip("203.0.113.7")).is_ok());
        }
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
