//! One epoch of the weight pipeline: ask every active challenge at once,
//! aggregate, and produce the snapshot that `/v1/weights/latest` serves.
//!
//! A challenge that cannot be asked (no token, orchestrator error, HTTP
//! failure) contributes nothing and is reported in `source_challenges`;
//! only a metagraph failure fails the epoch, since without it no uid can be
//! named.
//!
//! An epoch in which every active challenge failed has nothing to say
//! about the miners: it does not replace the last good vector while that
//! one is unexpired ([`settle`]); the failure is logged and reported in the
//! served snapshot's `status` and `last_epoch`. Once the good vector has
//! expired (or when there never was one), the burn vector is served.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use futures::future::join_all;

use super::aggregate::{Ballot, aggregate_ballot};
use super::http::{WeightSource, WeightTarget, WeightsError};
use crate::metagraph::Metagraph;
use crate::model::{
    self, Challenge, ChallengeStatus, EpochReport, SnapshotStatus, SourceChallenge, WeightsSnapshot,
};
use crate::orchestrator::{Orchestrator, ServiceState};
use crate::registry::Registry;

/// What shapes a snapshot besides the challenges' answers.
#[derive(Debug, Clone)]
pub struct EpochConfig {
    /// Subnet id.
    pub netuid: u16,
    /// Chain endpoint the vector is meant for.
    pub chain_endpoint: String,
    /// How long a snapshot stays valid (`expires_at - computed_at`).
    pub validity: Duration,
}

impl Default for EpochConfig {
    fn default() -> Self {
        Self {
            netuid: 100,
            chain_endpoint: String::new(),
            validity: Duration::seconds(720),
        }
    }
}

/// Whether a freshly computed snapshot says nothing about the miners:
/// there were active challenges and every one of them failed.
pub fn every_challenge_failed(fresh: &WeightsSnapshot) -> bool {
    !fresh.source_challenges.is_empty() && fresh.source_challenges.iter().all(|s| !s.ok)
}

/// The rule that decides what an epoch publishes, given the epoch's fresh
/// snapshot and the last good one served (if any):
/// - a fresh snapshot with at least one answering challenge (or with no
///   active challenge at all, whose burn vector is the right answer) is
///   published as it is, `status` `ok`;
/// - when every active challenge failed and the last good snapshot is
///   still unexpired at `now`, that one stays, `status` `kept`, with the
///   failed epoch in `last_epoch`;
/// - otherwise the fresh snapshot — the burn vector, since no challenge
///   contributed — is published, `status` `burn`, with the failure in
///   `last_epoch`.
pub fn settle(
    fresh: WeightsSnapshot,
    last_good: Option<&WeightsSnapshot>,
    now: DateTime<Utc>,
) -> WeightsSnapshot {
    if !every_challenge_failed(&fresh) {
        return WeightsSnapshot {
            status: SnapshotStatus::Ok,
            last_epoch: None,
            ..fresh
        };
    }
    let report = EpochReport {
        at: fresh.computed_at,
        ok: false,
        error: Some(failure_summary(&fresh)),
    };
    match last_good {
        Some(good) if good.expires_at > now && good.status != SnapshotStatus::Burn => {
            WeightsSnapshot {
                status: SnapshotStatus::Kept,
                last_epoch: Some(report),
                ..good.clone()
            }
        }
        _ => WeightsSnapshot {
            status: SnapshotStatus::Burn,
            last_epoch: Some(report),
            ..fresh
        },
    }
}

fn failure_summary(fresh: &WeightsSnapshot) -> String {
    let each: Vec<String> = fresh
        .source_challenges
        .iter()
        .map(|s| format!("{}: {}", s.slug, s.error.as_deref().unwrap_or("failed")))
        .collect();
    let mut text = format!("every active challenge failed ({})", each.join("; "));
    // One line in a JSON field, not a dump of every error body.
    if text.len() > 2000 {
        let mut cut = 2000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The parts an epoch talks to. Build with [`EpochRunner::new`].
#[derive(Clone)]
pub struct EpochRunner {
    /// Challenge records and their sealed tokens.
    pub registry: Registry,
    /// Where challenges run (gives their endpoint); `None` means each
    /// record's `internal_base_url` is used as given.
    pub orchestrator: Option<Arc<dyn Orchestrator>>,
    /// How weights are fetched.
    pub source: Arc<dyn WeightSource>,
    /// hotkey → uid.
    pub metagraph: Arc<dyn Metagraph>,
    /// Snapshot settings.
    pub config: EpochConfig,
    /// The snapshot last published (loaded from the store on the first
    /// epoch after a start), which a failed epoch keeps.
    served: Arc<Mutex<Option<WeightsSnapshot>>>,
}

impl EpochRunner {
    /// A runner over these parts.
    pub fn new(
        registry: Registry,
        orchestrator: Option<Arc<dyn Orchestrator>>,
        source: Arc<dyn WeightSource>,
        metagraph: Arc<dyn Metagraph>,
        config: EpochConfig,
    ) -> Self {
        Self {
            registry,
            orchestrator,
            source,
            metagraph,
            config,
            served: Arc::default(),
        }
    }

    /// Computes one snapshot (does not store it).
    pub async fn compute(&self) -> Result<WeightsSnapshot, WeightsError> {
        let challenges: Vec<Challenge> = self
            .registry
            .list()
            .await
            .map_err(|e| WeightsError::Epoch(format!("reading the registry: {e}")))?
            .into_iter()
            .filter(|c| c.status == ChallengeStatus::Active)
            .collect();
        let results = join_all(challenges.iter().map(|c| self.fetch_one(c))).await;
        let metagraph = self
            .metagraph
            .snapshot()
            .await
            .map_err(|e| WeightsError::Epoch(e.to_string()))?;

        // Hotkeys are interned into the ballot as the answers are taken in;
        // the strings themselves move into the snapshot without a copy.
        let mut ballot = Ballot::new();
        let mut sources = Vec::with_capacity(challenges.len());
        for (c, result) in challenges.iter().zip(results) {
            let (weights, ok, error) = match result {
                Ok(w) => {
                    ballot.add(
                        c.slug.as_str(),
                        c.emission_percent.0,
                        w.iter().map(|(hotkey, v)| (hotkey.as_str(), *v)),
                    );
                    (w, true, None)
                }
                Err(e) => {
                    tracing::warn!(slug = %c.slug, error = %e, "challenge contributed no weights this epoch");
                    ballot.add_failed(c.slug.as_str(), c.emission_percent.0);
                    (BTreeMap::new(), false, Some(e.to_string()))
                }
            };
            sources.push(SourceChallenge {
                slug: c.slug.to_string(),
                emission_percent: c.emission_percent,
                weights,
                ok,
                error,
            });
        }
        let agg = aggregate_ballot(&ballot, &metagraph.uids, metagraph.min_allowed_weights);
        let computed_at = model::now();
        Ok(WeightsSnapshot {
            netuid: self.config.netuid,
            chain_endpoint: self.config.chain_endpoint.clone(),
            uids: agg.uids,
            weights: agg.weights,
            hotkey_weights: agg.hotkey_weights,
            computed_at,
            expires_at: computed_at + self.config.validity,
            source_challenges: sources,
            metagraph_updated_at: Some(metagraph.updated_at),
            status: SnapshotStatus::Ok,
            last_epoch: None,
        })
    }

    async fn fetch_one(&self, c: &Challenge) -> Result<BTreeMap<String, f64>, WeightsError> {
        let secrets = self
            .registry
            .reveal(&c.slug)
            .await
            .map_err(|e| WeightsError::Master(e.to_string()))?;
        let mut base_url = c.internal_base_url.clone();
        if let Some(o) = &self.orchestrator {
            let status = o
                .challenge_status(&c.slug)
                .await
                .map_err(|e| WeightsError::Master(format!("orchestrator: {e}")))?;
            // Say why a dead service contributes nothing, instead of a
            // connection error that hides it.
            if matches!(status.state, ServiceState::Failed | ServiceState::Missing) {
                let why = status
                    .message
                    .unwrap_or_else(|| format!("{:?}", status.state).to_lowercase());
                return Err(WeightsError::NotRunning(why));
            }
            if let Some(endpoint) = status.endpoint {
                base_url = endpoint;
            }
        }
        let target = WeightTarget {
            slug: c.slug.clone(),
            base_url,
            token: secrets.challenge_token,
        };
        self.source.fetch(&target).await
    }
}

impl EpochRunner {
    /// Computes one snapshot, settles it against the last one served
    /// ([`settle`]), then stores and publishes the result. A store failure
    /// is logged but still publishes: serving the vector matters more than
    /// persisting it, and the next epoch writes again.
    pub async fn run_once(
        &self,
        publish: &(dyn Fn(&WeightsSnapshot) + Send + Sync),
    ) -> Result<WeightsSnapshot, WeightsError> {
        let fresh = match self.compute().await {
            Ok(f) => f,
            Err(e) => {
                self.report_failed_epoch(&e, publish).await;
                return Err(e);
            }
        };
        let previous = self.last_served().await;
        let snapshot = settle(fresh, previous.as_ref(), model::now());
        if let Err(e) = self.registry.store().put_snapshot(&snapshot, 1000).await {
            tracing::error!(error = %e, "could not store the weights snapshot");
        }
        publish(&snapshot);
        self.remember(&snapshot);
        let failed = snapshot.source_challenges.iter().filter(|s| !s.ok).count();
        match snapshot.status {
            SnapshotStatus::Ok => tracing::info!(
                uids = snapshot.uids.len(),
                challenges = snapshot.source_challenges.len(),
                failed,
                "epoch computed"
            ),
            SnapshotStatus::Kept => tracing::error!(
                error = snapshot.last_epoch.as_ref().and_then(|r| r.error.as_deref()).unwrap_or(""),
                kept_until = %snapshot.expires_at,
                "epoch failed: every active challenge failed; the last good vector stays published until it expires"
            ),
            SnapshotStatus::Burn => tracing::error!(
                error = snapshot
                    .last_epoch
                    .as_ref()
                    .and_then(|r| r.error.as_deref())
                    .unwrap_or(""),
                "epoch failed: every active challenge failed and no unexpired good vector is left; serving the burn vector"
            ),
        }
        Ok(snapshot)
    }

    /// An epoch that could not compute at all (the metagraph is
    /// unreadable) leaves the served vector in place — there is no uid to
    /// name, not even for a burn vector — but says so on it: `last_epoch`
    /// carries the failure, and an `ok` vector becomes `kept`.
    async fn report_failed_epoch(
        &self,
        e: &WeightsError,
        publish: &(dyn Fn(&WeightsSnapshot) + Send + Sync),
    ) {
        let Some(mut served) = self.last_served().await else {
            return;
        };
        if served.status == SnapshotStatus::Ok {
            served.status = SnapshotStatus::Kept;
        }
        served.last_epoch = Some(EpochReport {
            at: model::now(),
            ok: false,
            error: Some(e.to_string()),
        });
        publish(&served);
        self.remember(&served);
    }

    /// The snapshot last published by this runner, or else the stored one.
    async fn last_served(&self) -> Option<WeightsSnapshot> {
        let cached = match self.served.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if cached.is_some() {
            return cached;
        }
        match self.registry.store().latest_snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not load the last weights snapshot");
                None
            }
        }
    }

    fn remember(&self, snapshot: &WeightsSnapshot) {
        let mut slot = match self.served.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(snapshot.clone());
    }

    /// Publishes the stored snapshot (so a restart serves the last one),
    /// then runs an epoch every `interval` until `shutdown` resolves.
    pub async fn run(
        self,
        interval: std::time::Duration,
        publish: Arc<dyn Fn(&WeightsSnapshot) + Send + Sync>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        match self.registry.store().latest_snapshot().await {
            Ok(Some(s)) => {
                publish(&s);
                self.remember(&s);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not load the last weights snapshot"),
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {
                    if let Err(e) = self.run_once(publish.as_ref()).await {
                        tracing::error!(error = %e, "epoch failed; the previous snapshot stays published");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EmissionPercent;
    use proptest::prelude::*;

    fn snap(at: i64, oks: &[bool], validity: i64) -> WeightsSnapshot {
        let computed_at = DateTime::<Utc>::from_timestamp(at, 0).unwrap_or_default();
        WeightsSnapshot {
            netuid: 1,
            chain_endpoint: String::new(),
            uids: if oks.iter().any(|o| *o) {
                vec![1, 2]
            } else {
                vec![0]
            },
            weights: if oks.iter().any(|o| *o) {
                vec![0.5, 0.5]
            } else {
                vec![1.0]
            },
            hotkey_weights: BTreeMap::new(),
            computed_at,
            expires_at: computed_at + Duration::seconds(validity),
            source_challenges: oks
                .iter()
                .enumerate()
                .map(|(i, ok)| SourceChallenge {
                    slug: format!("c{i}"),
                    emission_percent: EmissionPercent(1.0),
                    weights: BTreeMap::new(),
                    ok: *ok,
                    error: (!ok).then(|| "challenge unreachable: connection failed".to_string()),
                })
                .collect(),
            metagraph_updated_at: None,
            status: SnapshotStatus::Ok,
            last_epoch: None,
        }
    }

    #[test]
    fn a_failed_epoch_keeps_the_good_vector_until_it_expires() {
        let good = settle(
            snap(1000, &[true, false], 720),
            None,
            snap(0, &[], 0).computed_at,
        );
        assert_eq!(good.status, SnapshotStatus::Ok);
        let at = |t: i64| DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
        let kept = settle(snap(1360, &[false, false], 720), Some(&good), at(1360));
        assert_eq!(kept.status, SnapshotStatus::Kept);
        assert_eq!(kept.uids, good.uids);
        assert_eq!(kept.expires_at, good.expires_at);
        let report = kept.last_epoch.clone().unwrap();
        assert!(!report.ok);
        assert_eq!(report.at, at(1360));
        assert!(report.error.unwrap().contains("c0: challenge unreachable"));
        // Kept again by the next failed epoch, then burnt once expired.
        let again = settle(snap(1700, &[false, false], 720), Some(&kept), at(1700));
        assert_eq!(
            (again.status, again.uids.clone()),
            (SnapshotStatus::Kept, vec![1, 2])
        );
        let burn = settle(snap(1720, &[false, false], 720), Some(&again), at(1720));
        assert_eq!(
            (burn.status, burn.uids.clone()),
            (SnapshotStatus::Burn, vec![0])
        );
        // No good vector yet: burn, as before.
        let first = settle(snap(10, &[false], 720), None, at(10));
        assert_eq!(first.status, SnapshotStatus::Burn);
        // No active challenge is not a failure: the burn vector is the answer.
        let none = settle(snap(10, &[], 720), Some(&good), at(10));
        assert_eq!((none.status, none.last_epoch), (SnapshotStatus::Ok, None));
    }

    proptest! {
        /// Over any sequence of epochs: a good unexpired vector is never
        /// replaced by a failed epoch; a served vector is always either
        /// the fresh one or the last good one; burn only when no good one
        /// is unexpired.
        #[test]
        fn settle_never_drops_an_unexpired_good_vector(
            epochs in proptest::collection::vec((proptest::collection::vec(any::<bool>(), 0..4), 1i64..2000), 1..30)
        ) {
            let mut served: Option<WeightsSnapshot> = None;
            let mut last_good: Option<WeightsSnapshot> = None;
            let mut t = 0i64;
            for (oks, step) in epochs {
                t += step;
                let now = DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
                let fresh = snap(t, &oks, 720);
                let out = settle(fresh.clone(), served.as_ref(), now);
                if every_challenge_failed(&fresh) {
                    match &last_good {
                        Some(g) if g.expires_at > now => {
                            prop_assert_eq!(out.status, SnapshotStatus::Kept);
                            prop_assert_eq!(&out.uids, &g.uids);
                            prop_assert_eq!(out.computed_at, g.computed_at);
                        }
                        _ => {
                            prop_assert_eq!(out.status, SnapshotStatus::Burn);
                            prop_assert_eq!(out.computed_at, fresh.computed_at);
                        }
                    }
                    prop_assert!(out.last_epoch.as_ref().is_some_and(|r| !r.ok));
                } else {
                    prop_assert_eq!(out.status, SnapshotStatus::Ok);
                    prop_assert_eq!(out.computed_at, fresh.computed_at);
                    last_good = Some(out.clone());
                }
                served = Some(out);
            }
        }
    }
}
