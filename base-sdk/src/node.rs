//! One composition root: what a BASE process runs, decided once.
//!
//! `master`, `broker` and `dev` used to wire the store, registry,
//! orchestrator, broker and loops by hand, three times (and the broker URL
//! challenges need was lost in all three once). Here [`plan`] is a pure
//! function from [`Settings`] and a [`Role`] to a [`NodePlan`] — which
//! orchestrator, whether the broker runs in this process, which loops run,
//! which broker URL each challenge is given, the metagraph, the listen
//! addresses — so every decision is a unit test. [`Node::build`] then turns
//! a plan into running parts and [`Node::spawn_loops`] starts the loops
//! under one stop signal. The HTTP layer (routers, serving) stays in
//! `base-server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerConfig};
use crate::config::{ConfigError, DatabaseUrl, MetagraphKind, OrchestratorKind, Settings};
use crate::metagraph::Metagraph;
use crate::model::WeightsSnapshot;
use crate::orchestrator::Orchestrator;
use crate::orchestrator::process::{ProcessOrchestrator, ProgramTable};
use crate::registry::{Policy, Registry, RegistryError};
use crate::weights::signing::WeightsKey;

/// Why a node could not be planned or built.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The settings ask for a combination this role does not run.
    #[error("{0}")]
    Plan(String),
    /// The control-plane database could not be opened.
    #[error("opening the control-plane database {url}: {source}")]
    Store {
        /// The redacted URL.
        url: String,
        /// Why.
        #[source]
        source: crate::store::StoreError,
    },
    /// Production policy or the sealing-key check.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The orchestrator could not be reached or set up.
    #[error("orchestrator: {0}")]
    Orchestrator(#[from] crate::orchestrator::OrchestratorError),
    /// The broker could not recover what a previous one left.
    #[error("broker recovery failed: {0}")]
    Broker(#[source] crate::broker::request::BrokerError),
    /// The weight client could not be built.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
}

/// Which process this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `base-server master`: API, proxy, reconciler, epochs (and the broker
    /// unless `BASE_BROKER_ENABLED=false`).
    Master,
    /// `base-server broker`: the broker alone, with its reaper.
    Broker,
    /// `base-server dev`: everything on embedded defaults.
    Dev,
}

/// Which orchestrator the node connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrchestratorPlan {
    /// None: challenges run elsewhere, no reconciler, no broker.
    None,
    /// Docker Swarm through the Engine API, jobs wrapped by this shim.
    Swarm {
        /// `BASE_SWARM_JOB_SHIM`.
        job_shim: String,
    },
    /// Local processes (dev only), from the program table `dev` passes in.
    Process,
}

/// Where hotkeys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetagraphPlan {
    /// No metagraph: no epochs, no upload bridge.
    None,
    /// `{"hotkeys": [...]}` in this file.
    File(PathBuf),
    /// `SubtensorModule` storage on the chain.
    Chain {
        /// `BASE_CHAIN_ENDPOINT`.
        endpoint: String,
        /// `BASE_NETUID`.
        netuid: u16,
        /// `BASE_METAGRAPH_TTL_SECONDS`.
        ttl: Duration,
    },
}

/// Where the sealing key and the weights signing key come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysPlan {
    /// Not needed (the broker role seals and signs nothing).
    None,
    /// Configured (`BASE_SECRET_KEY`, `BASE_WEIGHTS_KEY`, or their
    /// `*_FILE`); missing is an error, never made up.
    Configured,
    /// Made up in the data dir on first start (dev only).
    DevGenerated,
}

/// Which background loops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoopsPlan {
    /// Registry → orchestrator every `BASE_RECONCILE_SECONDS`.
    pub reconciler: bool,
    /// Weight epochs every `BASE_EPOCH_SECONDS`.
    pub epochs: bool,
    /// Expired upload-bridge nonces purged every 10 minutes.
    pub nonce_purge: bool,
    /// The broker's job reaper (timeouts, retention).
    pub reaper: bool,
}

/// What one process runs: the result of [`plan`], a plain value.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// The role it was planned for.
    pub role: Role,
    /// The orchestrator.
    pub orchestrator: OrchestratorPlan,
    /// The control-plane database (credentials never printed).
    pub database: DatabaseUrl,
    /// Where the master API listens (none for the broker role).
    pub api_listen: Option<SocketAddr>,
    /// Where the broker listens, when it runs in this process.
    pub broker_listen: Option<SocketAddr>,
    /// The broker URL every challenge is given as
    /// `CHALLENGE_DOCKER_BROKER_URL`.
    pub challenge_broker_url: Option<String>,
    /// The metagraph.
    pub metagraph: MetagraphPlan,
    /// The keys.
    pub keys: KeysPlan,
    /// The loops.
    pub loops: LoopsPlan,
    /// Timeout of one `get_weights` call during an epoch.
    pub weights_timeout: Duration,
    /// Things the operator should know (logged at start).
    pub warnings: Vec<String>,
}

/// Decides what `role` runs with `settings`. Pure: reads no file, opens
/// no connection. Every rule about which parts run together lives here.
pub fn plan(settings: &Settings, role: Role) -> Result<NodePlan, NodeError> {
    let mut warnings = Vec::new();
    let database = settings.effective_database_url()?;
    // Known from the URL already; checked again on the opened store.
    if settings.environment.is_strict() && !database.is_postgres() {
        return Err(NodeError::Plan(format!(
            "the {} environment requires PostgreSQL as the control-plane database \
             (BASE_DATABASE_URL=postgres://…), got {}",
            settings.environment.as_str(),
            database.redacted()
        )));
    }
    let orchestrator = match role {
        Role::Dev => match settings.orchestrator.unwrap_or(OrchestratorKind::Process) {
            OrchestratorKind::Process => OrchestratorPlan::Process,
            other => {
                return Err(NodeError::Plan(format!(
                    "`base-server dev` runs challenges as local processes; \
                     BASE_ORCHESTRATOR={} is for `base-server master`",
                    orchestrator_name(other)
                )));
            }
        },
        Role::Master | Role::Broker => {
            match settings.orchestrator.unwrap_or(OrchestratorKind::Swarm) {
                OrchestratorKind::None if role == Role::Broker => {
                    return Err(NodeError::Plan(
                        "the broker needs an orchestrator: BASE_ORCHESTRATOR=swarm".into(),
                    ));
                }
                OrchestratorKind::None => OrchestratorPlan::None,
                OrchestratorKind::Swarm => OrchestratorPlan::Swarm {
                    job_shim: settings.swarm_job_shim.clone(),
                },
                OrchestratorKind::Process => {
                    return Err(NodeError::Plan(
                        "BASE_ORCHESTRATOR=process is only for `base-server dev`, which knows \
                         which program runs each image; use swarm or none"
                            .into(),
                    ));
                }
            }
        }
    };
    let has_orchestrator = orchestrator != OrchestratorPlan::None;
    let broker_here = match role {
        Role::Broker => true,
        Role::Dev => settings.broker_enabled,
        Role::Master => {
            if settings.broker_enabled && !has_orchestrator {
                warnings.push(
                    "broker disabled: it needs an orchestrator (BASE_ORCHESTRATOR)".to_string(),
                );
            }
            settings.broker_enabled && has_orchestrator
        }
    };
    let challenge_broker_url = match role {
        Role::Broker => None,
        // dev's challenges are local processes: its own broker on loopback
        // reaches them, unless the operator names another.
        Role::Dev => {
            settings.challenge_broker_url(broker_here.then(|| local_url(settings.broker_listen)))?
        }
        // The master's challenges run on the overlay, where a broker on
        // the master's host address is not reachable: only the configured
        // URL (the broker service's name on the overlay), never a guess.
        Role::Master => {
            let url = settings.challenge_broker_url(None)?;
            if url.is_none() && has_orchestrator {
                warnings.push(
                    "BASE_CHALLENGE_BROKER_URL is not set: challenges are given no broker URL \
                     and cannot run evaluation jobs"
                        .to_string(),
                );
            }
            url
        }
    };
    let metagraph = match role {
        Role::Broker => MetagraphPlan::None,
        Role::Dev => MetagraphPlan::File(
            settings
                .metagraph_file
                .clone()
                .unwrap_or_else(|| settings.data_dir.join("metagraph.json")),
        ),
        Role::Master => master_metagraph(settings, &mut warnings),
    };
    let keys = match role {
        Role::Broker => KeysPlan::None,
        Role::Master => KeysPlan::Configured,
        Role::Dev => KeysPlan::DevGenerated,
    };
    let runs_api = role != Role::Broker;
    let loops = LoopsPlan {
        reconciler: runs_api && has_orchestrator,
        epochs: runs_api && metagraph != MetagraphPlan::None,
        // The upload bridge (and so its nonces) is the master's.
        nonce_purge: role == Role::Master,
        reaper: broker_here,
    };
    Ok(NodePlan {
        role,
        orchestrator,
        database,
        api_listen: runs_api.then_some(settings.listen),
        broker_listen: broker_here.then_some(settings.broker_listen),
        challenge_broker_url,
        metagraph,
        keys,
        loops,
        weights_timeout: Duration::from_secs(if role == Role::Dev { 5 } else { 10 }),
        warnings,
    })
}

fn orchestrator_name(kind: OrchestratorKind) -> &'static str {
    match kind {
        OrchestratorKind::None => "none",
        OrchestratorKind::Swarm => "swarm",
        OrchestratorKind::Process => "process",
    }
}

/// `BASE_METAGRAPH=chain` reads the chain; `file` (the default whenever
/// `BASE_METAGRAPH_FILE` is set) reads the file; otherwise none.
fn master_metagraph(settings: &Settings, warnings: &mut Vec<String>) -> MetagraphPlan {
    let kind = settings.metagraph.or(settings
        .metagraph_file
        .as_ref()
        .map(|_| MetagraphKind::File));
    match kind {
        None => {
            warnings.push(
                "weights and upload bridge disabled: set BASE_METAGRAPH=chain (hotkeys from \
                 BASE_CHAIN_ENDPOINT) or BASE_METAGRAPH_FILE"
                    .to_string(),
            );
            MetagraphPlan::None
        }
        Some(MetagraphKind::File) => match &settings.metagraph_file {
            Some(path) => MetagraphPlan::File(path.clone()),
            None => {
                warnings.push("BASE_METAGRAPH=file needs BASE_METAGRAPH_FILE".to_string());
                MetagraphPlan::None
            }
        },
        Some(MetagraphKind::Chain) => MetagraphPlan::Chain {
            endpoint: settings.chain_endpoint.clone(),
            netuid: settings.netuid,
            ttl: Duration::from_secs(settings.metagraph_ttl_seconds),
        },
    }
}

/// `http://` + `addr` as a local client reaches it: an unspecified listen
/// address (`0.0.0.0`, `::`) is reached on loopback.
pub fn local_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
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
        mount_budget: crate::broker::request::MountBudget {
            max_mounts: settings.broker_max_mounts,
            max_file_bytes: settings.broker_max_job_mount_bytes,
            ..Default::default()
        },
        ..BrokerConfig::default()
    }
}

/// The running parts of a planned node (loops not yet started).
pub struct Node {
    /// What was planned.
    pub plan: NodePlan,
    /// The registry over the opened store (with the sealing key unless
    /// the role needs none).
    pub registry: Registry,
    /// The orchestrator, when the plan has one.
    pub orchestrator: Option<Arc<dyn Orchestrator>>,
    /// The broker, recovered and ready to serve, when it runs here.
    pub broker: Option<Broker>,
    /// The metagraph the epochs and the upload bridge share (one chain
    /// connection and cache for both).
    pub metagraph: Option<Arc<dyn Metagraph>>,
    /// The weights signing key, when the role signs vectors.
    pub weights_key: Option<Arc<WeightsKey>>,
    /// Kept to stop its children on [`Running::stop`].
    process: Option<Arc<ProcessOrchestrator>>,
    reconcile_seconds: u64,
    epoch_seconds: u64,
    netuid: u16,
    chain_endpoint: String,
}

impl Node {
    /// Builds the parts `plan` names from `settings`. `programs` is the
    /// process orchestrator's image → program table (dev only; required
    /// when the plan runs the process orchestrator).
    ///
    /// Keys are loaded first: a master without them never touches the
    /// database.
    pub async fn build(
        settings: &Settings,
        plan: NodePlan,
        programs: Option<ProgramTable>,
    ) -> Result<Self, NodeError> {
        let (vault, weights_key) = match plan.keys {
            KeysPlan::None => (None, None),
            KeysPlan::Configured => (
                Some(Arc::new(settings.vault()?)),
                Some(Arc::new(settings.weights_key()?)),
            ),
            KeysPlan::DevGenerated => (
                Some(Arc::new(settings.dev_vault()?)),
                Some(Arc::new(settings.dev_weights_key()?)),
            ),
        };
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        let store = crate::store::connect(plan.database.expose())
            .await
            .map_err(|source| NodeError::Store {
                url: plan.database.redacted(),
                source,
            })?;
        crate::registry::check_database(&Policy {
            environment: settings.environment,
            backend: store.backend(),
        })?;
        let mut registry = Registry::new(store, settings.environment);
        if let Some(v) = vault {
            registry = registry.with_vault(v);
            // Tokens sealed under another key would fail every epoch and
            // every bridge call one by one; refuse to start instead.
            let opened = registry.check_sealing().await?;
            tracing::info!(tokens = opened, "sealing key opens the stored tokens");
        }
        let mut process = None;
        let orchestrator: Option<Arc<dyn Orchestrator>> = match &plan.orchestrator {
            OrchestratorPlan::None => None,
            OrchestratorPlan::Swarm { job_shim } => {
                let swarm = crate::orchestrator::swarm::SwarmOrchestrator::connect()
                    .await?
                    .with_job_shim(Some(job_shim.clone()))
                    .with_deployment(settings.deployment.clone());
                let networks = swarm.ensure_networks().await?;
                tracing::info!(?networks, "swarm networks ready");
                Some(Arc::new(swarm))
            }
            OrchestratorPlan::Process => {
                let programs = programs.ok_or_else(|| {
                    NodeError::Plan("the process orchestrator needs a program table".into())
                })?;
                // An image's program is also its jobs' entrypoint, as an
                // image's ENTRYPOINT is on Swarm: the quiz scores through
                // jobs of its own image (`example-challenge evaluate`).
                let entrypoints = programs.clone();
                let p = Arc::new(
                    ProcessOrchestrator::new(
                        settings.environment,
                        settings.data_dir.clone(),
                        programs,
                    )?
                    .with_job_entrypoints(entrypoints),
                );
                process = Some(p.clone());
                Some(p)
            }
        };
        let broker = match (&plan.broker_listen, &orchestrator) {
            (Some(_), Some(o)) => {
                let broker =
                    Broker::new(registry.store().clone(), o.clone(), broker_config(settings));
                let report = broker.recover().await.map_err(NodeError::Broker)?;
                tracing::info!(?report, "broker recovered");
                Some(broker)
            }
            _ => None,
        };
        let metagraph: Option<Arc<dyn Metagraph>> = match &plan.metagraph {
            MetagraphPlan::None => None,
            MetagraphPlan::File(path) => Some(Arc::new(crate::metagraph::FileMetagraph::new(path))),
            MetagraphPlan::Chain {
                endpoint,
                netuid,
                ttl,
            } => {
                tracing::info!(%endpoint, netuid, "metagraph from the chain");
                Some(Arc::new(crate::chain::metagraph::ChainMetagraph::new(
                    crate::chain::metagraph::LazySubtensor::new(
                        endpoint.clone(),
                        Duration::from_secs(60),
                    ),
                    *netuid,
                    *ttl,
                )))
            }
        };
        Ok(Self {
            plan,
            registry,
            orchestrator,
            broker,
            metagraph,
            weights_key,
            process,
            reconcile_seconds: settings.reconcile_seconds,
            epoch_seconds: settings.epoch_seconds,
            netuid: settings.netuid,
            chain_endpoint: settings.chain_endpoint.clone(),
        })
    }

    /// Starts the loops the plan names, all stopped by one signal:
    /// the reconciler (woken early by `hooks.reconcile_wake`), the epochs
    /// (publishing through `hooks.publish`, first after `hooks.epochs_after`
    /// when given), the nonce purge and the broker's reaper.
    pub fn spawn_loops(&self, hooks: LoopHooks) -> Result<Running, NodeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut running = Running {
            stop: stop_tx,
            stop_rx,
            tasks: Vec::new(),
            process: self.process.clone(),
        };
        if let (true, Some(o)) = (self.plan.loops.reconciler, &self.orchestrator) {
            running.spawn(crate::supervisor::run_reconciler(
                self.registry.clone(),
                o.clone(),
                self.plan.challenge_broker_url.clone(),
                Duration::from_secs(self.reconcile_seconds),
                hooks.reconcile_wake,
                running.stopped(),
            ));
        }
        if self.plan.loops.nonce_purge {
            // Expired bridge nonces go in the background, never on a request.
            running.spawn(crate::proxy::bridge::purge_nonces_every(
                self.registry.store().clone(),
                Duration::from_secs(600),
                running.stopped(),
            ));
        }
        if let (true, Some(metagraph)) = (self.plan.loops.epochs, &self.metagraph) {
            let runner = crate::weights::EpochRunner::new(
                self.registry.clone(),
                self.orchestrator.clone(),
                Arc::new(crate::weights::HttpWeightSource::new(
                    self.plan.weights_timeout,
                    2,
                )?),
                metagraph.clone(),
                crate::weights::EpochConfig {
                    netuid: self.netuid,
                    chain_endpoint: self.chain_endpoint.clone(),
                    ..Default::default()
                },
            );
            let interval = Duration::from_secs(self.epoch_seconds);
            let publish = hooks.publish;
            let after = hooks.epochs_after;
            let mut stop = running.stop_rx.clone();
            let stopped = running.stopped();
            running.spawn(async move {
                if let Some(after) = after {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = after => {}
                    }
                }
                runner.run(interval, publish, stopped).await;
            });
        }
        if let (true, Some(broker)) = (self.plan.loops.reaper, &self.broker) {
            running.spawn(broker.clone().run_reaper(running.stopped()));
        }
        Ok(running)
    }
}

/// What the HTTP layer hands the loops.
pub struct LoopHooks {
    /// Notified when the registry changes, so the reconciler runs at once.
    pub reconcile_wake: Arc<Notify>,
    /// Where each epoch's snapshot is published (the API's `/v1/weights/latest`).
    pub publish: Arc<dyn Fn(&WeightsSnapshot) + Send + Sync>,
    /// Resolves when the first epoch may run (dev waits for its miners).
    pub epochs_after: Option<BoxFuture<'static, ()>>,
}

/// The node's spawned tasks and their one stop signal.
pub struct Running {
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    process: Option<Arc<ProcessOrchestrator>>,
}

impl Running {
    /// A future that resolves once [`Running::stop`] is called: give it to
    /// anything else that should stop with the node (the broker's server).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Runs `task` until the node stops; [`Running::stop`] awaits it.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Signals every task to stop, waits for them, then stops the process
    /// orchestrator's children (dev).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(p) = self.process {
            p.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    fn settings() -> Settings {
        // Defaults only: the test process's BASE_* env must not leak in.
        let mut s = Settings::defaults().unwrap_or_else(|e| panic!("{e}"));
        s.environment = Environment::Development;
        s
    }

    #[test]
    fn master_defaults_to_swarm_with_broker_reconciler_and_purge() {
        let p = plan(&settings(), Role::Master).unwrap();
        assert!(matches!(p.orchestrator, OrchestratorPlan::Swarm { .. }));
        assert_eq!(p.broker_listen, Some(settings().broker_listen));
        assert_eq!(p.api_listen, Some(settings().listen));
        assert!(p.loops.reconciler && p.loops.reaper && p.loops.nonce_purge);
        // No metagraph configured: no epochs, and the operator is told.
        assert!(!p.loops.epochs);
        assert_eq!(p.metagraph, MetagraphPlan::None);
        assert_eq!(p.keys, KeysPlan::Configured);
    }

    #[test]
    fn master_gives_challenges_only_the_configured_broker_url() {
        // Its own broker listens on the host: not reachable from the overlay.
        let p = plan(&settings(), Role::Master).unwrap();
        assert_eq!(p.challenge_broker_url, None);
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("BASE_CHALLENGE_BROKER_URL"))
        );
        let mut s = settings();
        s.challenge_broker_url = Some("http://base-broker:18082".into());
        s.broker_enabled = false;
        let p = plan(&s, Role::Master).unwrap();
        assert_eq!(
            p.challenge_broker_url.as_deref(),
            Some("http://base-broker:18082")
        );
        assert_eq!(p.broker_listen, None);
        assert!(!p.loops.reaper);
    }

    #[test]
    fn a_broker_url_that_is_not_http_is_refused() {
        let mut s = settings();
        s.challenge_broker_url = Some("base-broker:18082".into());
        let e = plan(&s, Role::Master).unwrap_err().to_string();
        assert!(e.contains("BASE_CHALLENGE_BROKER_URL"), "{e}");
    }

    #[test]
    fn dev_gives_challenges_its_own_broker_on_loopback() {
        let mut s = settings();
        s.broker_listen = "0.0.0.0:18082".parse().unwrap();
        let p = plan(&s, Role::Dev).unwrap();
        assert_eq!(p.orchestrator, OrchestratorPlan::Process);
        assert_eq!(
            p.challenge_broker_url.as_deref(),
            Some("http://127.0.0.1:18082")
        );
        assert_eq!(p.keys, KeysPlan::DevGenerated);
        assert!(p.loops.reconciler && p.loops.epochs && p.loops.reaper);
        assert!(!p.loops.nonce_purge);
        assert_eq!(
            p.metagraph,
            MetagraphPlan::File(s.data_dir.join("metagraph.json"))
        );
        // A configured URL wins; without a broker, none.
        s.challenge_broker_url = Some("http://elsewhere:1".into());
        assert_eq!(
            plan(&s, Role::Dev).unwrap().challenge_broker_url.as_deref(),
            Some("http://elsewhere:1")
        );
        s.challenge_broker_url = None;
        s.broker_enabled = false;
        let p = plan(&s, Role::Dev).unwrap();
        assert_eq!(p.challenge_broker_url, None);
        assert!(!p.loops.reaper);
    }

    #[test]
    fn dev_refuses_another_orchestrator() {
        let mut s = settings();
        s.orchestrator = Some(OrchestratorKind::Swarm);
        let e = plan(&s, Role::Dev).unwrap_err().to_string();
        assert!(e.contains("BASE_ORCHESTRATOR=swarm"), "{e}");
    }

    #[test]
    fn broker_role_needs_an_orchestrator_and_runs_only_the_broker() {
        let mut s = settings();
        s.orchestrator = Some(OrchestratorKind::None);
        assert!(
            plan(&s, Role::Broker)
                .unwrap_err()
                .to_string()
                .contains("needs an orchestrator")
        );
        s.orchestrator = None;
        s.broker_enabled = false; // the broker role runs it regardless
        let p = plan(&s, Role::Broker).unwrap();
        assert_eq!(p.api_listen, None);
        assert_eq!(p.broker_listen, Some(s.broker_listen));
        assert_eq!(
            p.loops,
            LoopsPlan {
                reaper: true,
                ..Default::default()
            }
        );
        assert_eq!(p.keys, KeysPlan::None);
        assert_eq!(p.challenge_broker_url, None);
    }

    #[test]
    fn master_without_orchestrator_runs_no_reconciler_and_no_broker() {
        let mut s = settings();
        s.orchestrator = Some(OrchestratorKind::None);
        let p = plan(&s, Role::Master).unwrap();
        assert_eq!(p.orchestrator, OrchestratorPlan::None);
        assert!(!p.loops.reconciler && !p.loops.reaper);
        assert_eq!(p.broker_listen, None);
        assert!(p.warnings.iter().any(|w| w.contains("broker disabled")));
    }

    #[test]
    fn process_orchestrator_is_dev_only() {
        let mut s = settings();
        s.orchestrator = Some(OrchestratorKind::Process);
        for role in [Role::Master, Role::Broker] {
            let e = plan(&s, role).unwrap_err().to_string();
            assert!(e.contains("only for `base-server dev`"), "{e}");
        }
    }

    #[test]
    fn production_refuses_sqlite_and_a_missing_database() {
        let mut s = settings();
        s.environment = Environment::Production;
        for role in [Role::Master, Role::Broker, Role::Dev] {
            let e = plan(&s, role).unwrap_err().to_string();
            assert!(e.contains("BASE_DATABASE_URL"), "{e}");
        }
        s.database_url = Some(DatabaseUrl::new("sqlite:///tmp/x.sqlite3"));
        let e = plan(&s, Role::Master).unwrap_err().to_string();
        assert!(e.contains("requires PostgreSQL"), "{e}");
        s.database_url = Some(DatabaseUrl::new("postgres://u:pw@db/base"));
        let p = plan(&s, Role::Master).unwrap();
        assert!(p.database.is_postgres());
    }

    #[test]
    fn metagraph_source_follows_the_settings() {
        let mut s = settings();
        s.metagraph_file = Some("/etc/base/metagraph.json".into());
        let p = plan(&s, Role::Master).unwrap();
        assert_eq!(
            p.metagraph,
            MetagraphPlan::File("/etc/base/metagraph.json".into())
        );
        assert!(p.loops.epochs);
        s.metagraph = Some(MetagraphKind::Chain);
        assert!(matches!(
            plan(&s, Role::Master).unwrap().metagraph,
            MetagraphPlan::Chain { netuid, .. } if netuid == s.netuid
        ));
        s.metagraph = Some(MetagraphKind::File);
        s.metagraph_file = None;
        let p = plan(&s, Role::Master).unwrap();
        assert_eq!(p.metagraph, MetagraphPlan::None);
        assert!(!p.loops.epochs);
        assert!(plan(&s, Role::Broker).unwrap().metagraph == MetagraphPlan::None);
    }

    #[test]
    fn the_local_broker_url_is_reached_on_loopback() {
        let url = |a: &str| local_url(a.parse().unwrap());
        assert_eq!(url("0.0.0.0:18082"), "http://127.0.0.1:18082");
        assert_eq!(url("[::]:18082"), "http://[::1]:18082");
        assert_eq!(url("127.0.0.2:9"), "http://127.0.0.2:9");
    }
}
