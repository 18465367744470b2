//! The metagraph read from chain storage (hotkey → uid for a netuid),
//! cached for a TTL so an epoch does not walk `SubtensorModule::Keys` on
//! every call; the production replacement for the file metagraph.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Mutex;

use super::ChainError;
use super::subtensor::Subtensor;
use super::wallet::ss58_from_account;
use crate::metagraph::{Metagraph, MetagraphError, MetagraphSnapshot};

/// `(uid, account id)` of every registered hotkey, and `MinAllowedWeights`.
pub type Registered = (Vec<(u16, [u8; 32])>, u16);

/// Where the registered hotkeys come from: subtensor in production, a fake
/// in tests.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UidSource: Send + Sync {
    /// `(uid, account id)` of every registered hotkey of `netuid`, and the
    /// subnet's `MinAllowedWeights`.
    async fn registered(&self, netuid: u16) -> Result<Registered, ChainError>;
}

#[async_trait]
impl UidSource for Subtensor {
    async fn registered(&self, netuid: u16) -> Result<Registered, ChainError> {
        let hotkeys = self.hotkeys(netuid).await?;
        let min = self.min_allowed_weights(netuid).await?;
        Ok((hotkeys, min))
    }
}

/// A [`UidSource`] that connects to subtensor on first use (and again
/// after a failed connection), so a master starts even while the chain
/// endpoint is unreachable, and each read is bounded by `timeout`.
pub struct LazySubtensor {
    endpoint: String,
    timeout: Duration,
    client: tokio::sync::OnceCell<Subtensor>,
}

impl LazySubtensor {
    /// A source for `endpoint` (`ws://` or `wss://`).
    pub fn new(endpoint: impl Into<String>, timeout: Duration) -> Self {
        Self {
            endpoint: endpoint.into(),
            timeout,
            client: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait]
impl UidSource for LazySubtensor {
    async fn registered(&self, netuid: u16) -> Result<Registered, ChainError> {
        let work = async {
            let chain = self
                .client
                .get_or_try_init(|| Subtensor::connect(&self.endpoint))
                .await?;
            chain.registered(netuid).await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ChainError::Connection {
                endpoint: self.endpoint.clone(),
                reason: format!("no answer within {}s", self.timeout.as_secs()),
            })?
    }
}

/// A [`Metagraph`] over a [`UidSource`], re-read at most once per `ttl`.
/// When a refresh fails and an older reading exists, the older reading is
/// served (its `updated_at` shows its age) and the failure logged: the
/// weights of a slightly old metagraph beat no weights.
pub struct ChainMetagraph<S> {
    source: S,
    netuid: u16,
    ttl: Duration,
    cache: Mutex<Option<(Instant, MetagraphSnapshot)>>,
}

impl<S: UidSource> ChainMetagraph<S> {
    /// A metagraph of `netuid`, cached for `ttl`.
    pub fn new(source: S, netuid: u16, ttl: Duration) -> Self {
        Self {
            source,
            netuid,
            ttl,
            cache: Mutex::new(None),
        }
    }
}

#[async_trait]
impl<S: UidSource> Metagraph for ChainMetagraph<S> {
    async fn snapshot(&self) -> Result<MetagraphSnapshot, MetagraphError> {
        // Held across the read so concurrent callers share one refresh.
        let mut cache = self.cache.lock().await;
        if let Some((at, snap)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(snap.clone());
        }
        match self.source.registered(self.netuid).await {
            Ok((hotkeys, min_allowed)) => {
                let snap = MetagraphSnapshot {
                    uids: hotkeys
                        .iter()
                        .map(|(uid, account)| (ss58_from_account(account), *uid))
                        .collect(),
                    updated_at: Utc::now(),
                    min_allowed_weights: usize::from(min_allowed.max(1)),
                };
                *cache = Some((Instant::now(), snap.clone()));
                Ok(snap)
            }
            Err(e) => match cache.as_ref() {
                Some((_, old)) => {
                    tracing::warn!(error = %e, netuid = self.netuid, "metagraph refresh failed; serving the previous reading");
                    Ok(old.clone())
                }
                None => Err(MetagraphError::Unavailable(e.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: [u8; 32] = [
        0xd4, 0x35, 0x93, 0xc7, 0x15, 0xfd, 0xd3, 0x1c, 0x61, 0x14, 0x1a, 0xbd, 0x04, 0xa9, 0x9f,
        0xd6, 0x82, 0x2c, 0x85, 0x58, 0x85, 0x4c, 0xcd, 0xe3, 0x9a, 0x56, 0x84, 0xe7, 0xa5, 0x6d,
        0xa2, 0x7d,
    ];

    #[tokio::test]
    async fn caches_for_the_ttl_and_serves_the_old_reading_on_failure() {
        let mut source = MockUidSource::new();
        let mut seq = mockall::Sequence::new();
        source
            .expect_registered()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok((vec![(3, ALICE)], 2)));
        source
            .expect_registered()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| {
                Err(ChainError::Connection {
                    endpoint: "ws://x".into(),
                    reason: "down".into(),
                })
            });
        let m = ChainMetagraph::new(source, 1, Duration::from_secs(3600));
        let s = m.snapshot().await.unwrap();
        assert_eq!(
            s.uids
                .get("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"),
            Some(&3)
        );
        assert_eq!(s.min_allowed_weights, 2);
        // Within the TTL: no second read (the mock would fail `times(1)`).
        assert_eq!(m.snapshot().await.unwrap(), s);
        // Expire the cache: the refresh fails, the old reading is served.
        m.cache.lock().await.as_mut().unwrap().0 -= Duration::from_secs(7200);
        assert_eq!(m.snapshot().await.unwrap(), s);
    }

    #[tokio::test]
    async fn first_failure_is_an_error() {
        let mut source = MockUidSource::new();
        source.expect_registered().returning(|_| {
            Err(ChainError::Connection {
                endpoint: "ws://x".into(),
                reason: "down".into(),
            })
        });
        let m = ChainMetagraph::new(source, 1, Duration::from_secs(60));
        let e = m.snapshot().await.unwrap_err();
        assert!(matches!(e, MetagraphError::Unavailable(_)), "{e}");
    }
}
