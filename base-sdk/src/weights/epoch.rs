//! One epoch of the weight pipeline: ask every active challenge at once,
//! aggregate, and produce the snapshot that `/v1/weights/latest` serves.
//!
//! A challenge that cannot be asked (no token, orchestrator error, HTTP
//! failure) contributes nothing and is reported in `source_challenges`;
//! only a metagraph failure fails the epoch, since without it no uid can be
//! named.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use futures::future::join_all;

use super::aggregate::{Ballot, aggregate_ballot};
use super::http::{WeightSource, WeightTarget, WeightsError};
use crate::metagraph::Metagraph;
use crate::model::{self, Challenge, ChallengeStatus, SourceChallenge, WeightsSnapshot};
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

/// The parts an epoch talks to.
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
}

impl EpochRunner {
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
    /// Computes, stores and publishes one snapshot. A store failure is
    /// logged but still publishes: serving the fresh vector matters more
    /// than persisting it, and the next epoch writes again.
    pub async fn run_once(
        &self,
        publish: &(dyn Fn(&WeightsSnapshot) + Send + Sync),
    ) -> Result<WeightsSnapshot, WeightsError> {
        let snapshot = self.compute().await?;
        if let Err(e) = self.registry.store().put_snapshot(&snapshot, 1000).await {
            tracing::error!(error = %e, "could not store the weights snapshot");
        }
        publish(&snapshot);
        let failed = snapshot.source_challenges.iter().filter(|s| !s.ok).count();
        tracing::info!(
            uids = snapshot.uids.len(),
            challenges = snapshot.source_challenges.len(),
            failed,
            "epoch computed"
        );
        Ok(snapshot)
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
            Ok(Some(s)) => publish(&s),
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
