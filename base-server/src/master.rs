//! `base-server master`: the production control plane's wiring — store,
//! registry, orchestrator, reconciler and epochs around the API.

use std::sync::Arc;
use std::time::Duration;

use base_sdk::auth::AdminAuth;
use base_sdk::broker::{Broker, BrokerConfig};
use base_sdk::chain::metagraph::{ChainMetagraph, LazySubtensor};
use base_sdk::config::{ConfigError, MetagraphKind, OrchestratorKind, Settings};
use base_sdk::metagraph::{FileMetagraph, Metagraph};
use base_sdk::orchestrator::Orchestrator;
use base_sdk::orchestrator::swarm::SwarmOrchestrator;
use base_sdk::registry::{self, Policy, Registry, RegistryError};
use base_sdk::weights::{EpochConfig, EpochRunner, HttpWeightSource};
use tokio::sync::watch;

use crate::state::AppState;

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The control-plane database.
    #[error("opening the control-plane database {url}: {source}")]
    Store {
        /// The redacted URL.
        url: String,
        /// Why.
        #[source]
        source: base_sdk::store::StoreError,
    },
    /// Production policy.
    #[error(transparent)]
    Policy(#[from] RegistryError),
    /// The orchestrator.
    #[error("orchestrator: {0}")]
    Orchestrator(#[from] base_sdk::orchestrator::OrchestratorError),
    /// A choice this command does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// The weight client.
    #[error(transparent)]
    Weights(#[from] base_sdk::weights::WeightsError),
    /// Binding or serving.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Connects the orchestrator `settings` name (default: swarm).
pub async fn orchestrator(
    settings: &Settings,
) -> Result<Option<Arc<dyn Orchestrator>>, MasterError> {
    match settings.orchestrator.unwrap_or(OrchestratorKind::Swarm) {
        OrchestratorKind::None => Ok(None),
        OrchestratorKind::Swarm => {
            let swarm = SwarmOrchestrator::connect()
                .await?
                .with_job_shim(Some(settings.swarm_job_shim.clone()))
                .with_deployment(settings.deployment.clone());
            let networks = swarm.ensure_networks().await?;
            tracing::info!(?networks, "swarm networks ready");
            Ok(Some(Arc::new(swarm)))
        }
        OrchestratorKind::Process => Err(MasterError::Unsupported(
            "BASE_ORCHESTRATOR=process is only for `base-server dev`, which knows which program runs each image; use swarm or none".into(),
        )),
    }
}

/// Runs the master until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    // Both keys first: a master without them must not get as far as
    // touching the database, and never makes them up (only `dev` does).
    let vault = Arc::new(settings.vault()?);
    let weights_key = Arc::new(settings.weights_key()?);
    // Where challenges submit jobs: only what the operator configured (a
    // host-process broker is not reachable from the challenge overlay).
    let broker_url = settings.challenge_broker_url(None)?;
    let db = settings.effective_database_url()?;
    let store = base_sdk::store::connect(db.expose())
        .await
        .map_err(|source| MasterError::Store {
            url: db.redacted(),
            source,
        })?;
    registry::check_database(&Policy {
        environment: settings.environment,
        backend: store.backend(),
    })?;
    if settings.admin_token.is_none() {
        tracing::warn!(
            "no admin token configured (BASE_ADMIN_TOKEN / BASE_ADMIN_TOKEN_FILE): admin routes will answer 401"
        );
    }
    let registry = Registry::new(store, settings.environment).with_vault(vault);
    // Tokens sealed under another key would fail every epoch and every
    // bridge call one by one; refuse to start instead, naming the key.
    let opened = registry.check_sealing().await?;
    tracing::info!(
        tokens = opened,
        weights_pubkey = %weights_key.public(),
        "sealing key opens the stored tokens; weight vectors are signed"
    );
    let orchestrator = orchestrator(&settings).await?;
    let mut state = AppState::new(
        registry.clone(),
        AdminAuth::new(settings.admin_token.clone()),
        settings.netuid,
    )
    .with_admin_limits(settings.admin_limits());
    if let Some(o) = &orchestrator {
        state = state.with_orchestrator(o.clone());
    }
    // One metagraph (and, on the chain, one connection and one cache) for
    // both the upload bridge and the epochs.
    let metagraph = metagraph(&settings);
    state = state.with_proxy(Arc::new(proxy(&settings, metagraph.clone())));
    state.weights().set_key(weights_key);
    // A restart serves the last vector at once.
    if let Ok(Some(snapshot)) = registry.store().latest_snapshot().await {
        state.weights().publish(&snapshot);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    if let Some(o) = &orchestrator {
        tasks.push(tokio::spawn(base_sdk::supervisor::run_reconciler(
            registry.clone(),
            o.clone(),
            broker_url.clone(),
            Duration::from_secs(settings.reconcile_seconds),
            state.reconcile_wake(),
            stopped(stop_rx.clone()),
        )));
    }
    // Expired bridge nonces go in the background, never on a request.
    tasks.push(tokio::spawn(base_sdk::proxy::bridge::purge_nonces_every(
        registry.store().clone(),
        Duration::from_secs(600),
        stopped(stop_rx.clone()),
    )));
    match metagraph {
        Some(metagraph) => {
            let runner = EpochRunner::new(
                registry.clone(),
                orchestrator.clone(),
                Arc::new(HttpWeightSource::new(Duration::from_secs(10), 2)?),
                metagraph,
                EpochConfig {
                    netuid: settings.netuid,
                    chain_endpoint: settings.chain_endpoint.clone(),
                    ..Default::default()
                },
            );
            let publish = state.weights().publisher();
            tasks.push(tokio::spawn(runner.run(
                Duration::from_secs(settings.epoch_seconds),
                publish,
                stopped(stop_rx.clone()),
            )));
        }
        None => tracing::warn!(
            "weights disabled: set BASE_METAGRAPH=chain (hotkeys from BASE_CHAIN_ENDPOINT) or BASE_METAGRAPH_FILE"
        ),
    }

    if settings.broker_enabled {
        match &orchestrator {
            Some(o) => {
                let broker = Broker::new(
                    registry.store().clone(),
                    o.clone(),
                    broker_config(&settings),
                );
                tasks.push(start_broker(&settings, broker, stopped(stop_rx.clone())).await?);
            }
            None => tracing::warn!("broker disabled: it needs an orchestrator (BASE_ORCHESTRATOR)"),
        }
    }

    let threads = settings
        .listen_threads
        .unwrap_or_else(crate::serve::default_threads);
    let bind_error = |source| MasterError::Io {
        context: format!("binding the master API to {}", settings.listen),
        source,
    };
    // 0: the shared runtime with axum::serve (the previous listener).
    let listeners = crate::serve::bind(settings.listen, threads.max(1)).map_err(bind_error)?;
    tracing::info!(
        listen = %settings.listen,
        threads,
        database = %db.redacted(),
        environment = settings.environment.as_str(),
        orchestrator = orchestrator.as_ref().map_or("none", |o| o.name()),
        "BASE master started"
    );
    let served = if threads == 0 {
        let mut listeners = listeners;
        match listeners.pop() {
            Some(l) => match tokio::net::TcpListener::from_std(l) {
                Ok(l) => crate::serve_shared(l, state, shutdown).await,
                Err(e) => Err(e),
            },
            None => Err(std::io::Error::other("no listener")),
        }
    } else {
        crate::serve_on(listeners, state, shutdown).await
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("BASE master stopped");
    served.map_err(|source| MasterError::Io {
        context: "serving the API".into(),
        source,
    })
}

/// The public proxy from the operator's settings; the bridge checks
/// hotkeys against `metagraph` (the master's, file or chain) when there is
/// one.
pub fn proxy(settings: &Settings, metagraph: Option<Arc<dyn Metagraph>>) -> base_sdk::proxy::Proxy {
    if metagraph.is_none() {
        tracing::warn!(
            "upload bridge disabled: set BASE_METAGRAPH_FILE or BASE_METAGRAPH=chain so miner hotkeys can be checked"
        );
    }
    base_sdk::proxy::Proxy::new(settings.proxy_config(), metagraph)
}

/// The metagraph the epochs use: `BASE_METAGRAPH=chain` reads
/// `SubtensorModule` storage at `BASE_CHAIN_ENDPOINT` (cached for
/// `BASE_METAGRAPH_TTL_SECONDS`); `file` (the default whenever
/// `BASE_METAGRAPH_FILE` is set) reads the file; otherwise none.
pub fn metagraph(settings: &Settings) -> Option<Arc<dyn Metagraph>> {
    let kind = settings.metagraph.or(settings
        .metagraph_file
        .as_ref()
        .map(|_| MetagraphKind::File))?;
    match kind {
        MetagraphKind::File => match settings.metagraph_file.clone() {
            Some(path) => Some(Arc::new(FileMetagraph::new(path))),
            None => {
                tracing::warn!("BASE_METAGRAPH=file needs BASE_METAGRAPH_FILE");
                None
            }
        },
        MetagraphKind::Chain => {
            tracing::info!(endpoint = %settings.chain_endpoint, netuid = settings.netuid, "metagraph from the chain");
            Some(Arc::new(ChainMetagraph::new(
                LazySubtensor::new(settings.chain_endpoint.clone(), Duration::from_secs(60)),
                settings.netuid,
                Duration::from_secs(settings.metagraph_ttl_seconds),
            )))
        }
    }
}

/// The broker's settings from the operator's.
pub fn broker_config(settings: &Settings) -> BrokerConfig {
    BrokerConfig {
        allowed_images: settings.broker_allowed_images.clone(),
        gpu_capacity: settings.broker_gpu_capacity,
        start_grace: Duration::from_secs(settings.broker_start_grace_seconds),
        output_retention: Duration::from_secs(
            settings.broker_output_retention_hours.saturating_mul(3600),
        ),
        job_retention: Duration::from_secs(
            settings.broker_job_retention_days.saturating_mul(86_400),
        ),
        max_jobs: (settings.broker_max_jobs > 0).then_some(settings.broker_max_jobs),
        max_jobs_per_challenge: (settings.broker_max_jobs_per_challenge > 0)
            .then_some(settings.broker_max_jobs_per_challenge),
        schedule_timeout: Duration::from_secs(settings.broker_schedule_timeout_seconds),
        mount_budget: base_sdk::broker::request::MountBudget {
            max_mounts: settings.broker_max_mounts,
            max_file_bytes: settings.broker_max_job_mount_bytes,
            ..Default::default()
        },
        ..BrokerConfig::default()
    }
}

/// Recovers what a previous broker left, then serves the broker on
/// `BASE_BROKER_LISTEN` with its reaper beside it until `shutdown`.
pub async fn start_broker(
    settings: &Settings,
    broker: Broker,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, MasterError> {
    let report = broker
        .recover()
        .await
        .map_err(|e| MasterError::Unsupported(format!("broker recovery failed: {e}")))?;
    let listener = tokio::net::TcpListener::bind(settings.broker_listen)
        .await
        .map_err(|source| MasterError::Io {
            context: format!("binding the broker to {}", settings.broker_listen),
            source,
        })?;
    tracing::info!(listen = %settings.broker_listen, ?report, "broker started");
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    Ok(tokio::spawn(async move {
        let reaper = tokio::spawn(broker.clone().run_reaper(shutdown.clone()));
        if let Err(e) = crate::broker::serve(listener, broker, shutdown).await {
            tracing::error!(error = %e, "broker stopped serving");
        }
        let _ = reaper.await;
    }))
}

/// Runs the broker alone (`base-server broker`): store, orchestrator,
/// recovery, reaper and the `:18082` API, until `shutdown`.
pub async fn run_broker(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let db = settings.effective_database_url()?;
    let store = base_sdk::store::connect(db.expose())
        .await
        .map_err(|source| MasterError::Store {
            url: db.redacted(),
            source,
        })?;
    registry::check_database(&Policy {
        environment: settings.environment,
        backend: store.backend(),
    })?;
    let Some(orchestrator) = orchestrator(&settings).await? else {
        return Err(MasterError::Unsupported(
            "the broker needs an orchestrator: BASE_ORCHESTRATOR=swarm".into(),
        ));
    };
    let broker = Broker::new(store, orchestrator, broker_config(&settings));
    let task = start_broker(&settings, broker, shutdown).await?;
    let _ = task.await;
    tracing::info!("BASE broker stopped");
    Ok(())
}
