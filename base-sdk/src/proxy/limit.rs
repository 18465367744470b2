//! Per-client limits of the public proxy: who a client is, how fast it may
//! send requests, how much of the proxy it may hold at once, and how slowly
//! it may move bytes.
//!
//! - **Who**: [`client_key`] is the one bucket function every per-client
//!   mechanism uses: an address, except that IPv6 clients are keyed by
//!   their /64 (one subscriber usually holds a whole /64, so limiting
//!   single v6 addresses would limit nothing). Behind a reverse proxy the
//!   client is found in `X-Forwarded-For` / `X-Real-IP`, but only when the
//!   TCP peer is one of the operator's [`TrustedProxies`]
//!   (`BASE_TRUSTED_PROXIES`); otherwise those headers are the client's
//!   own words and ignored.
//! - **How fast**: [`ClientLimiter`], GCRA via `governor`.
//! - **How much at once**: [`ClientSlots`] counts what each client holds —
//!   requests in flight (in all and per challenge), streams (Server-Sent
//!   Events), open connections — and refuses past the [`ClientCaps`]; a
//!   total connection cap bounds everyone together.
//! - **How slowly**: [`RateBudget`] is the minimum data rate after a grace
//!   period, for request bodies and for the miner reading an answer.
//!
//! Loopback clients are exempt from the per-client limits unless the
//! operator says otherwise, so local tools and benchmarks are not
//! throttled; behind a reverse proxy on the same host, list it in
//! `BASE_TRUSTED_PROXIES` and the real clients are limited (docs/proxy.md).

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use rustc_hash::{FxBuildHasher, FxHashMap};

/// Why a client was refused, or a limit setting is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// An entry of `BASE_TRUSTED_PROXIES` is neither an address nor a CIDR.
    #[error("BASE_TRUSTED_PROXIES: '{entry}' is not an IP address or CIDR ({source})")]
    TrustedProxy {
        /// The entry as written.
        entry: String,
        /// Why it did not parse.
        #[source]
        source: ipnet::AddrParseError,
    },
    /// The client has its maximum of requests in flight (429).
    #[error("too many requests in flight from your address (at most {limit}); retry shortly")]
    Requests {
        /// The cap.
        limit: u32,
    },
    /// The client has its maximum of requests in flight to this challenge (429).
    #[error(
        "too many requests in flight from your address to this challenge (at most {limit}); retry shortly"
    )]
    ChallengeRequests {
        /// The cap.
        limit: u32,
    },
    /// The client has its maximum of open event streams (429).
    #[error("too many open event streams from your address (at most {limit})")]
    Streams {
        /// The cap.
        limit: u32,
    },
    /// The client has its maximum of open connections (429).
    #[error("too many open connections from your address (at most {limit})")]
    Connections {
        /// The cap.
        limit: u32,
    },
    /// The server has its maximum of open connections (503).
    #[error("the server is at its connection limit; retry shortly")]
    ServerFull,
}

impl LimitError {
    /// Whether this refusal is about everyone (503) rather than one
    /// client (429).
    pub fn is_global(&self) -> bool {
        matches!(self, Self::ServerFull)
    }
}

/// The bucket of a client address for every per-client limit: the address
/// itself for IPv4 (an IPv4-mapped IPv6 address counts as its IPv4 one),
/// its /64 for IPv6.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The reverse proxies whose `X-Forwarded-For` / `X-Real-IP` are believed
/// (`BASE_TRUSTED_PROXIES`: comma-separated addresses and CIDRs). Empty,
/// the default, believes no one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl FromStr for TrustedProxies {
    type Err = LimitError;

    fn from_str(list: &str) -> Result<Self, LimitError> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(source) => match entry.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err(LimitError::TrustedProxy {
                            entry: entry.to_string(),
                            source,
                        });
                    }
                },
            };
            nets.push(net);
        }
        Ok(Self { nets })
    }
}

impl TrustedProxies {
    /// Whether no proxy is trusted (the headers are never read).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client a request from `peer` is for: `peer` itself unless it
    /// is trusted; then the right-most address of the `X-Forwarded-For`
    /// fields (`forwarded_for`, in the order received) that is not a
    /// trusted proxy, as nginx's `real_ip_recursive on` — each trusted hop
    /// appended the address it saw, so everything left of the first
    /// untrusted one is the client's own claim. An entry that is not an
    /// address ends the walk at the hop that reported it; every entry
    /// trusted gives the left-most. Without `X-Forwarded-For`, a trusted
    /// peer's `X-Real-IP` is used when it is an address.
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
        real_ip: Option<&[u8]>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let mut current = peer;
        let mut listed = false;
        for value in forwarded_for.rev() {
            for item in value.rsplit(|b| *b == b',') {
                if item.iter().all(u8::is_ascii_whitespace) {
                    // `a,,b` or a trailing comma: RFC 9110 list syntax
                    // allows empty elements.
                    continue;
                }
                listed = true;
                let Some(ip) = parse_address(item) else {
                    return current;
                };
                current = ip;
                if !self.contains(ip) {
                    return ip;
                }
            }
        }
        if listed {
            return current;
        }
        real_ip.and_then(parse_address).unwrap_or(peer)
    }
}

/// An address as proxies write it: bare, `[v6]`, or with a port.
fn parse_address(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            text.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

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
        if ip.to_canonical().is_loopback() && !self.include_loopback {
            return Ok(());
        }
        limiter
            .check_key(&client_key(ip))
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

/// Whole seconds for a `Retry-After` header (at least 1).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// How much of the proxy one client may hold at once; 0 turns a cap off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    /// Requests in flight per client, all challenges together (a request
    /// is in flight from its check until its answer's last byte).
    pub requests: u32,
    /// Requests in flight per client and challenge.
    pub requests_per_challenge: u32,
    /// Open event streams (`text/event-stream` answers) per client; a
    /// stream counts here instead of as a request.
    pub streams: u32,
    /// Open connections per client (trusted proxies are exempt: they
    /// carry many clients).
    pub connections: u32,
    /// Open connections in all (everyone, loopback included).
    pub connections_total: u32,
    /// Whether loopback clients are held to the per-client caps too.
    pub include_loopback: bool,
}

impl Default for ClientCaps {
    fn default() -> Self {
        Self {
            requests: 32,
            requests_per_challenge: 16,
            streams: 8,
            connections: 64,
            connections_total: 10_000,
            include_loopback: false,
        }
    }
}

/// Shards of the per-client tables: a request takes one short lock, and
/// requests of different clients rarely take the same one.
const SHARDS: usize = 64;

/// What one client holds.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    requests: u32,
    streams: u32,
    connections: u32,
}

#[derive(Debug, Default)]
struct Shard {
    clients: FxHashMap<IpAddr, Held>,
    /// Requests in flight by (client, challenge).
    challenges: FxHashMap<(IpAddr, usize), u32>,
}

/// The counts behind [`ClientCaps`], shared by every listener thread.
#[derive(Debug)]
pub struct ClientSlots {
    caps: ClientCaps,
    shards: Box<[Mutex<Shard>]>,
    connections: AtomicU32,
}

impl ClientSlots {
    /// Counts held to `caps`.
    pub fn new(caps: ClientCaps) -> Self {
        Self {
            caps,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            connections: AtomicU32::new(0),
        }
    }

    /// The caps in force.
    pub fn caps(&self) -> &ClientCaps {
        &self.caps
    }

    /// Whether `ip` is held to no per-client cap (tested on the address,
    /// not its key: the /64 of `::1` is not loopback).
    fn exempt(&self, ip: IpAddr) -> bool {
        ip.to_canonical().is_loopback() && !self.caps.include_loopback
    }

    fn shard(&self, key: IpAddr) -> std::sync::MutexGuard<'_, Shard> {
        let i = (FxBuildHasher.hash_one(key) as usize) % self.shards.len();
        // A panic while holding a shard lock leaves counts that are still
        // counts: use them.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection from `peer` (its TCP address; `trusted` when it is a
    /// trusted proxy, which only the total cap applies to).
    pub fn connect(
        self: &Arc<Self>,
        peer: IpAddr,
        trusted: bool,
    ) -> Result<ConnectionSlot, LimitError> {
        let total = self.caps.connections_total;
        if self.connections.fetch_add(1, Ordering::AcqRel) >= total && total > 0 {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::ServerFull);
        }
        let mut slot = ConnectionSlot {
            slots: self.clone(),
            key: None,
        };
        let key = client_key(peer);
        let cap = self.caps.connections;
        if cap == 0 || trusted || self.exempt(peer) {
            return Ok(slot);
        }
        let mut shard = self.shard(key);
        let held = shard.clients.entry(key).or_default();
        if held.connections >= cap {
            drop(shard);
            // `slot` gives the total back as it drops.
            return Err(LimitError::Connections { limit: cap });
        }
        held.connections += 1;
        slot.key = Some(key);
        Ok(slot)
    }

    /// A request from `client` to the challenge `challenge` (any value
    /// that identifies it for as long as it exists).
    pub fn request(
        self: &Arc<Self>,
        client: IpAddr,
        challenge: usize,
    ) -> Result<RequestSlot, LimitError> {
        let key = client_key(client);
        let caps = self.caps;
        if (caps.requests == 0 && caps.requests_per_challenge == 0 && caps.streams == 0)
            || self.exempt(client)
        {
            return Ok(RequestSlot { held: None });
        }
        let mut shard = self.shard(key);
        let held = shard.clients.entry(key).or_default();
        if caps.requests > 0 && held.requests >= caps.requests {
            let refused = LimitError::Requests {
                limit: caps.requests,
            };
            forget_if_empty(&mut shard, key);
            return Err(refused);
        }
        held.requests += 1;
        let per_challenge = shard.challenges.entry((key, challenge)).or_default();
        if caps.requests_per_challenge > 0 && *per_challenge >= caps.requests_per_challenge {
            if let Some(held) = shard.clients.get_mut(&key) {
                held.requests -= 1;
            }
            forget_if_empty(&mut shard, key);
            return Err(LimitError::ChallengeRequests {
                limit: caps.requests_per_challenge,
            });
        }
        *per_challenge += 1;
        Ok(RequestSlot {
            held: Some(Holding {
                slots: self.clone(),
                key,
                challenge,
                stream: false,
            }),
        })
    }

    /// What `client` holds now: (requests, streams, connections).
    pub fn held(&self, client: IpAddr) -> (u32, u32, u32) {
        let key = client_key(client);
        let shard = self.shard(key);
        shard
            .clients
            .get(&key)
            .map_or((0, 0, 0), |h| (h.requests, h.streams, h.connections))
    }

    /// Open connections in all.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
}

fn forget_if_empty(shard: &mut Shard, key: IpAddr) {
    if shard
        .clients
        .get(&key)
        .is_some_and(|h| h.requests == 0 && h.streams == 0 && h.connections == 0)
    {
        shard.clients.remove(&key);
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    slots: Arc<ClientSlots>,
    /// The client it counts against, when a per-client cap applies.
    key: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.slots.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.key {
            let mut shard = self.slots.shard(key);
            if let Some(held) = shard.clients.get_mut(&key) {
                held.connections = held.connections.saturating_sub(1);
            }
            forget_if_empty(&mut shard, key);
        }
    }
}

/// A request in flight (or, after [`RequestSlot::into_stream`], an open
/// stream), counted until dropped.
#[derive(Debug)]
pub struct RequestSlot {
    /// `None` for a client no cap applies to.
    held: Option<Holding>,
}

#[derive(Debug)]
struct Holding {
    slots: Arc<ClientSlots>,
    key: IpAddr,
    challenge: usize,
    stream: bool,
}

impl RequestSlot {
    /// Counts this request as an open stream from now on (its answer is
    /// an event stream), or refuses it when the client has its maximum
    /// of streams (then it still counts as a request until dropped).
    pub fn into_stream(&mut self) -> Result<(), LimitError> {
        let Some(h) = &mut self.held else {
            return Ok(());
        };
        if h.stream {
            return Ok(());
        }
        let cap = h.slots.caps.streams;
        let mut shard = h.slots.shard(h.key);
        let Some(held) = shard.clients.get_mut(&h.key) else {
            return Ok(());
        };
        if cap > 0 && held.streams >= cap {
            return Err(LimitError::Streams { limit: cap });
        }
        held.streams += 1;
        held.requests = held.requests.saturating_sub(1);
        release_challenge(&mut shard, h.key, h.challenge);
        h.stream = true;
        Ok(())
    }
}

fn release_challenge(shard: &mut Shard, key: IpAddr, challenge: usize) {
    if let Some(n) = shard.challenges.get_mut(&(key, challenge)) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            shard.challenges.remove(&(key, challenge));
        }
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        let Some(h) = self.held.take() else {
            return;
        };
        let mut shard = h.slots.shard(h.key);
        if let Some(held) = shard.clients.get_mut(&h.key) {
            if h.stream {
                held.streams = held.streams.saturating_sub(1);
            } else {
                held.requests = held.requests.saturating_sub(1);
            }
        }
        if !h.stream {
            release_challenge(&mut shard, h.key, h.challenge);
        }
        forget_if_empty(&mut shard, h.key);
    }
}

/// A minimum data rate after a grace period (0 bytes/s turns it off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second a client must keep up on average.
    pub bytes_per_second: u64,
    /// How far behind that rate a client may fall (at the start, and at
    /// any later moment).
    pub grace: Duration,
}

impl MinRate {
    /// No minimum.
    pub const OFF: Self = Self {
        bytes_per_second: 0,
        grace: Duration::ZERO,
    };

    /// Whether there is no minimum.
    pub fn is_off(&self) -> bool {
        self.bytes_per_second == 0
    }

    /// How long `n` bytes take at the minimum rate.
    fn time_for(&self, n: usize) -> Duration {
        let nanos = (n as u128 * 1_000_000_000) / u128::from(self.bytes_per_second.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The time a client may still keep the proxy waiting, under a
/// [`MinRate`]: it starts at the grace period, each byte moved adds the
/// time it takes at the minimum rate (up to the grace period again), each
/// wait on the client uses it up. So over any stretch the waiting never
/// exceeds the grace period plus the bytes moved at the minimum rate, and
/// a client that keeps to the rate never runs out. Only time spent waiting
/// on the client counts: a challenge that is slow to produce or consume
/// costs the client nothing.
#[derive(Debug, Clone, Copy)]
pub struct RateBudget {
    rate: MinRate,
    credit: Duration,
}

impl RateBudget {
    /// A full budget for `rate`.
    pub fn new(rate: MinRate) -> Self {
        Self {
            rate,
            credit: rate.grace,
        }
    }

    /// How long moving the next `n` bytes may wait on the client; `None`
    /// when there is no minimum.
    pub fn allowance(&self, n: usize) -> Option<Duration> {
        if self.rate.is_off() {
            return None;
        }
        Some(self.credit.saturating_add(self.rate.time_for(n)))
    }

    /// Records `n` bytes moved after waiting `waited` on the client;
    /// `false` when that was longer than [`RateBudget::allowance`] allowed.
    pub fn spend(&mut self, n: usize, waited: Duration) -> bool {
        let Some(allowed) = self.allowance(n) else {
            return true;
        };
        if waited > allowed {
            self.credit = Duration::ZERO;
            return false;
        }
        self.credit = (allowed - waited).min(self.rate.grace);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
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
            assert!(l.check(ip("::1")).is_ok());
            assert!(l.check(ip("::ffff:127.0.0.1")).is_ok());
            assert!(l.check(None).is_ok());
        }
        // An IPv4-mapped address is the same client as its IPv4 one.
        assert!(l.check(ip("::ffff:203.0.113.7")).is_err());
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

    #[test]
    fn trusted_proxy_lists_parse_addresses_and_cidrs_and_name_bad_entries() {
        let t: TrustedProxies = " 10.0.0.0/8, 192.0.2.1 ,2001:db8::/32,".parse().unwrap();
        assert!(t.contains(addr("10.200.0.1")));
        assert!(t.contains(addr("::ffff:10.0.0.1")));
        assert!(t.contains(addr("192.0.2.1")));
        assert!(!t.contains(addr("192.0.2.2")));
        assert!(t.contains(addr("2001:db8:ffff::1")));
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        let e = "10.0.0.0/8,proxy.local"
            .parse::<TrustedProxies>()
            .unwrap_err();
        assert!(e.to_string().contains("'proxy.local'"), "{e}");
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
    }

    fn resolve(trusted: &str, peer: &str, xff: &[&str], real: Option<&str>) -> IpAddr {
        let t: TrustedProxies = trusted.parse().unwrap();
        t.client(
            addr(peer),
            xff.iter().map(|v| v.as_bytes()),
            real.map(str::as_bytes),
        )
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_peers() {
        // Untrusted peer (or nobody trusted): the headers are ignored.
        assert_eq!(
            resolve("", "203.0.113.9", &["1.2.3.4"], Some("5.6.7.8")),
            addr("203.0.113.9")
        );
        assert_eq!(
            resolve("10.0.0.0/8", "203.0.113.9", &["1.2.3.4"], None),
            addr("203.0.113.9")
        );
        // Trusted peer: the right-most untrusted entry, across fields.
        assert_eq!(
            resolve(
                "10.0.0.0/8",
                "10.0.0.1",
                &["6.6.6.6, 1.2.3.4", "10.1.1.1"],
                None
            ),
            addr("1.2.3.4")
        );
        // Forms proxies write: ports, brackets, spaces, empty elements.
        assert_eq!(
            resolve("10.0.0.0/8", "10.0.0.1", &["[2001:db8::7]:443 ,, "], None),
            addr("2001:db8::7")
        );
        assert_eq!(
            resolve("10.0.0.0/8", "10.0.0.1", &["1.2.3.4:80"], None),
            addr("1.2.3.4")
        );
        // Garbage ends the walk at the hop that reported it.
        assert_eq!(
            resolve(
                "10.0.0.0/8",
                "10.0.0.1",
                &["1.2.3.4, nonsense, 10.0.0.2"],
                None
            ),
            addr("10.0.0.2")
        );
        // All trusted: the left-most.
        assert_eq!(
            resolve("10.0.0.0/8", "10.0.0.1", &["10.0.0.3, 10.0.0.2"], None),
            addr("10.0.0.3")
        );
        // X-Real-IP only without X-Forwarded-For, and only an address.
        assert_eq!(
            resolve("10.0.0.0/8", "10.0.0.1", &[], Some("1.2.3.4")),
            addr("1.2.3.4")
        );
        assert_eq!(
            resolve("10.0.0.0/8", "10.0.0.1", &[], Some("x")),
            addr("10.0.0.1")
        );
        assert_eq!(
            resolve("10.0.0.0/8", "10.0.0.1", &["5.5.5.5"], Some("1.2.3.4")),
            addr("5.5.5.5")
        );
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            // Small spaces, so that trusted and listed addresses meet.
            (0u8..4).prop_map(|n| IpAddr::from([10, 0, 0, n])),
            (0u8..4).prop_map(|n| IpAddr::from([203, 0, 113, n])),
        ]
    }

    proptest! {
        #[test]
        fn the_client_is_never_chosen_by_an_untrusted_party(
            peer in arb_ip(),
            hops in proptest::collection::vec(arb_ip(), 0..6),
            spoofed in proptest::collection::vec(arb_ip(), 0..4),
        ) {
            let trusted: TrustedProxies = "10.0.0.0/30".parse().unwrap();
            let list: Vec<String> = spoofed.iter().chain(&hops).map(IpAddr::to_string).collect();
            let header = list.join(", ");
            let got = trusted.client(peer, std::iter::once(header.as_bytes()), None);
            if !trusted.contains(peer) {
                prop_assert_eq!(got, peer.to_canonical());
            } else {
                // What the trusted chain (peer, then the hops from the
                // right while trusted) reports is all that counts: the
                // first untrusted address from the right wins, whatever
                // was written left of it.
                let mut expect = peer.to_canonical();
                for ip in spoofed.iter().chain(&hops).rev() {
                    expect = ip.to_canonical();
                    if !trusted.contains(*ip) {
                        break;
                    }
                }
                prop_assert_eq!(got, expect);
            }
        }

        #[test]
        fn keys_are_addresses_for_v4_and_slash_64s_for_v6(a in arb_ip(), low in any::<u64>()) {
            let k = client_key(a);
            prop_assert_eq!(client_key(k), k);
            match a.to_canonical() {
                IpAddr::V4(v4) => prop_assert_eq!(k, IpAddr::V4(v4)),
                IpAddr::V6(v6) => {
                    let bits = u128::from(v6);
                    let other = Ipv6Addr::from((bits & !u128::from(u64::MAX)) | u128::from(low));
                    if other.to_ipv4_mapped().is_none() {
                        prop_assert_eq!(client_key(IpAddr::V6(other)), k);
                    }
                }
            }
        }

        #[test]
        fn a_client_keeping_the_rate_never_runs_out(
            chunks in proptest::collection::vec((1usize..100_000, 0u32..=1000), 1..50),
        ) {
            let rate = MinRate { bytes_per_second: 10_000, grace: Duration::from_secs(2) };
            let mut b = RateBudget::new(rate);
            for (n, permille) in chunks {
                // Each chunk waited at most as long as it takes at the rate.
                let waited = rate.time_for(n) * permille / 1000;
                prop_assert!(b.spend(n, waited));
            }
        }

        #[test]
        fn waiting_never_exceeds_grace_plus_bytes_at_the_rate(
            steps in proptest::collection::vec((0usize..50_000, 0u64..5_000), 1..50),
        ) {
            let rate = MinRate { bytes_per_second: 10_000, grace: Duration::from_secs(2) };
            let mut b = RateBudget::new(rate);
            let (mut bytes, mut waited) = (0usize, Duration::ZERO);
            for (n, ms) in steps {
                let w = Duration::from_millis(ms);
                let allowed = b.allowance(n).unwrap();
                let ok = b.spend(n, w);
                prop_assert_eq!(ok, w <= allowed);
                if !ok {
                    break;
                }
                bytes += n;
                waited += w;
                prop_assert!(waited <= rate.grace + rate.time_for(bytes));
            }
        }
    }

    #[test]
    fn a_stalled_client_runs_out_after_the_grace_period() {
        let rate = MinRate {
            bytes_per_second: 1000,
            grace: Duration::from_secs(5),
        };
        let mut b = RateBudget::new(rate);
        assert_eq!(b.allowance(0), Some(Duration::from_secs(5)));
        assert_eq!(b.allowance(1000), Some(Duration::from_secs(6)));
        assert!(b.spend(1000, Duration::from_secs(6)));
        // Credit used up: the next byte must come at the rate.
        assert_eq!(b.allowance(0), Some(Duration::ZERO));
        assert!(!b.spend(1, Duration::from_secs(1)));
        assert_eq!(RateBudget::new(MinRate::OFF).allowance(10), None);
        assert!(RateBudget::new(MinRate::OFF).spend(0, Duration::MAX));
    }

    fn caps() -> ClientCaps {
        ClientCaps {
            requests: 3,
            requests_per_challenge: 2,
            streams: 1,
            connections: 2,
            connections_total: 5,
            include_loopback: false,
        }
    }

    #[test]
    fn requests_are_capped_per_client_and_per_challenge_and_given_back() {
        let s = Arc::new(ClientSlots::new(caps()));
        let a = addr("203.0.113.1");
        let r1 = s.request(a, 1).unwrap();
        let r2 = s.request(a, 1).unwrap();
        assert_eq!(
            s.request(a, 1).unwrap_err(),
            LimitError::ChallengeRequests { limit: 2 }
        );
        let r3 = s.request(a, 2).unwrap();
        assert_eq!(
            s.request(a, 3).unwrap_err(),
            LimitError::Requests { limit: 3 }
        );
        // The same /64 is the same client; another client is not affected.
        let b = addr("2001:db8::1");
        let _b1 = s.request(b, 1).unwrap();
        let _b2 = s.request(addr("2001:db8::2"), 1).unwrap();
        assert!(s.request(addr("2001:db8::3"), 1).is_err());
        assert!(s.request(addr("2001:db8:0:1::1"), 1).is_ok());
        assert_eq!(s.held(a), (3, 0, 0));
        drop((r1, r2, r3));
        assert_eq!(s.held(a), (0, 0, 0));
        assert!(s.request(a, 1).is_ok());
        // Loopback (v4, v6, mapped) is exempt unless included.
        for lo in ["127.0.0.1", "::1", "::ffff:127.0.0.2"] {
            let l: Vec<_> = (0..10).map(|_| s.request(addr(lo), 1).unwrap()).collect();
            assert_eq!(l.len(), 10);
        }
    }

    #[test]
    fn streams_count_apart_from_requests() {
        let s = Arc::new(ClientSlots::new(caps()));
        let a = addr("203.0.113.1");
        let mut stream = s.request(a, 1).unwrap();
        stream.into_stream().unwrap();
        assert_eq!(s.held(a), (0, 1, 0));
        // The stream does not take a request slot...
        let _r1 = s.request(a, 1).unwrap();
        let mut r2 = s.request(a, 1).unwrap();
        // ...but a second stream is over the stream cap, and its request
        // still counts until it is dropped.
        assert_eq!(
            r2.into_stream().unwrap_err(),
            LimitError::Streams { limit: 1 }
        );
        assert_eq!(s.held(a), (2, 1, 0));
        drop(r2);
        drop(stream);
        assert_eq!(s.held(a), (1, 0, 0));
    }

    #[test]
    fn connections_are_capped_per_client_and_in_total() {
        let s = Arc::new(ClientSlots::new(caps()));
        let a = addr("203.0.113.1");
        let c1 = s.connect(a, false).unwrap();
        let _c2 = s.connect(a, false).unwrap();
        assert_eq!(
            s.connect(a, false).unwrap_err(),
            LimitError::Connections { limit: 2 }
        );
        // A trusted proxy and loopback only count in the total.
        let _p1 = s.connect(addr("10.0.0.1"), true).unwrap();
        let _p2 = s.connect(addr("10.0.0.1"), true).unwrap();
        let _l = s.connect(addr("127.0.0.1"), false).unwrap();
        assert_eq!(s.connections(), 5);
        let full = s.connect(addr("203.0.113.2"), false).unwrap_err();
        assert!(full.is_global());
        assert_eq!(s.connections(), 5);
        drop(c1);
        assert_eq!(s.held(a), (0, 0, 1));
        assert!(s.connect(addr("203.0.113.2"), false).is_ok());
        let off = Arc::new(ClientSlots::new(ClientCaps {
            connections: 0,
            connections_total: 0,
            ..caps()
        }));
        let many: Vec<_> = (0..100).map(|_| off.connect(a, false).unwrap()).collect();
        assert_eq!(off.connections(), 100);
        drop(many);
        assert_eq!(off.connections(), 0);
    }
}
