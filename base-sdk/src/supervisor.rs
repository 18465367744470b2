//! Manager loops that keep the cluster matching the registry.
//!
//! [`reconcile_once`] is one pass of the reconciler: it starts (or
//! updates) a service for every active challenge, stops services of
//! challenges that are not active, and removes services that no record
//! explains — always keeping their data. It is idempotent, so a restarted
//! master simply runs it again and adopts what is already running.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{ChallengeStatus, Slug};
use crate::orchestrator::{ChallengeSpec, Orchestrator, ServiceState};
use crate::registry::Registry;

/// Why a reconcile pass could not run at all (per-challenge failures are
/// reported in [`ReconcileReport`] instead).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The registry could not be read.
    #[error("reading the registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The orchestrator could not list its services.
    #[error("listing services: {0}")]
    Orchestrator(#[from] crate::orchestrator::OrchestratorError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReconcileReport {
    /// Active challenges whose service was ensured.
    pub ensured: Vec<Slug>,
    /// Services stopped because their challenge is not active.
    pub stopped: Vec<Slug>,
    /// Services removed because no record explains them.
    pub orphans_removed: Vec<Slug>,
    /// Challenges that could not be brought to their desired state.
    pub failures: Vec<(Slug, String)>,
}

/// One reconcile pass.
pub async fn reconcile_once(
    registry: &Registry,
    orchestrator: &dyn Orchestrator,
    broker_url: Option<&str>,
) -> Result<ReconcileReport, SupervisorError> {
    let records = registry.list().await?;
    let running = orchestrator.list_challenges().await?;
    let mut report = ReconcileReport::default();
    let known: BTreeSet<&Slug> = records.iter().map(|c| &c.slug).collect();

    for c in &records {
        if c.status == ChallengeStatus::Active {
            let secrets = match registry.reveal(&c.slug).await {
                Ok(s) => s,
                Err(e) => {
                    report.failures.push((c.slug.clone(), e.to_string()));
                    continue;
                }
            };
            let spec = ChallengeSpec::from_record(c, secrets, broker_url.map(str::to_string));
            match orchestrator.ensure_challenge(&spec).await {
                Ok(_) => report.ensured.push(c.slug.clone()),
                Err(e) => report.failures.push((c.slug.clone(), e.to_string())),
            }
        } else if running
            .iter()
            .any(|s| s.slug == c.slug && s.state != ServiceState::Missing)
        {
            match orchestrator.remove_challenge(&c.slug, false).await {
                Ok(()) => report.stopped.push(c.slug.clone()),
                Err(e) => report.failures.push((c.slug.clone(), e.to_string())),
            }
        }
    }
    for s in &running {
        if !known.contains(&s.slug) {
            match orchestrator.remove_challenge(&s.slug, false).await {
                Ok(()) => report.orphans_removed.push(s.slug.clone()),
                Err(e) => report.failures.push((s.slug.clone(), e.to_string())),
            }
        }
    }
    for (slug, why) in &report.failures {
        tracing::warn!(%slug, error = %why, "reconcile could not bring the challenge to its desired state");
    }
    Ok(report)
}

/// Runs [`reconcile_once`] every `interval` until `shutdown`, and at once
/// whenever `wake` is notified (after admin writes).
pub async fn run_reconciler(
    registry: Registry,
    orchestrator: Arc<dyn Orchestrator>,
    broker_url: Option<String>,
    interval: Duration,
    wake: Arc<tokio::sync::Notify>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        if let Err(e) =
            reconcile_once(&registry, orchestrator.as_ref(), broker_url.as_deref()).await
        {
            tracing::error!(error = %e, "reconcile pass failed");
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;
    use crate::orchestrator::{MockOrchestrator, ServiceStatus};
    use crate::registry::NewChallenge;
    use crate::vault::Vault;

    fn status(slug: &str, state: ServiceState) -> ServiceStatus {
        ServiceStatus {
            slug: Slug::parse(slug).unwrap(),
            state,
            image: None,
            endpoint: None,
            message: None,
            started_at: None,
        }
    }

    #[tokio::test]
    async fn converges_on_the_registry() {
        let db = crate::testing::sqlite().await.unwrap();
        let vault = Arc::new(Vault::from_text(&Vault::generate_key()).unwrap());
        let reg = Registry::new(db.store.clone(), Environment::Development).with_vault(vault);
        for (slug, active) in [("on", true), ("off", false)] {
            reg.create(
                NewChallenge {
                    slug: slug.into(),
                    name: slug.into(),
                    image: "base.local/x:1".into(),
                    version: "1".into(),
                    ..Default::default()
                },
                "t",
            )
            .await
            .unwrap();
            if active {
                reg.set_status(slug, ChallengeStatus::Active, "t")
                    .await
                    .unwrap();
            }
        }
        let mut o = MockOrchestrator::new();
        o.expect_list_challenges().returning(|| {
            Ok(vec![
                status("off", ServiceState::Running),
                status("stray", ServiceState::Running),
            ])
        });
        o.expect_ensure_challenge()
            .withf(|s| {
                use secrecy::ExposeSecret;
                s.slug.as_str() == "on" && s.secrets.challenge_token.expose_secret().len() == 43
            })
            .times(1)
            .returning(|s| Ok(status(s.slug.as_str(), ServiceState::Running)));
        o.expect_remove_challenge()
            .withf(|slug, purge| (slug.as_str() == "off" || slug.as_str() == "stray") && !purge)
            .times(2)
            .returning(|_, _| Ok(()));
        let report = reconcile_once(&reg, &o, None).await.unwrap();
        assert_eq!(report.ensured, vec![Slug::parse("on").unwrap()]);
        assert_eq!(report.stopped, vec![Slug::parse("off").unwrap()]);
        assert_eq!(report.orphans_removed, vec![Slug::parse("stray").unwrap()]);
        assert!(report.failures.is_empty());
    }

    #[tokio::test]
    async fn unsealed_tokens_are_reported_not_fatal() {
        let db = crate::testing::sqlite().await.unwrap();
        let reg = Registry::new(db.store.clone(), Environment::Development);
        reg.create(
            NewChallenge {
                slug: "nokey".into(),
                name: "n".into(),
                image: "base.local/x:1".into(),
                version: "1".into(),
                status: Some(ChallengeStatus::Active),
                ..Default::default()
            },
            "t",
        )
        .await
        .unwrap();
        let mut o = MockOrchestrator::new();
        o.expect_list_challenges().returning(|| Ok(vec![]));
        let report = reconcile_once(&reg, &o, None).await.unwrap();
        assert_eq!(report.failures.len(), 1);
        assert!(
            report.failures[0].1.contains("sealing key"),
            "{:?}",
            report.failures
        );
    }
}
