//! `base-server master` and `base-server broker`: settings → node → serve.
//!
//! What runs, with what, is decided and built once in
//! [`base_sdk::node`]; this file only puts the HTTP layer (the API's
//! `AppState` and listeners, the broker's server) on top of the node.

use std::sync::Arc;

use base_sdk::auth::AdminAuth;
use base_sdk::broker::Broker;
use base_sdk::config::Settings;
use base_sdk::metagraph::Metagraph;
use base_sdk::node::{LoopHooks, Node, NodeError, Role, Running};

use crate::state::AppState;

/// Why the master or the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Planning or building the node.
    #[error(transparent)]
    Node(#[from] NodeError),
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

/// Runs the master until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let plan = base_sdk::node::plan(&settings, Role::Master)?;
    let node = Node::build(&settings, plan, None).await?;
    if settings.admin_token.is_none() {
        tracing::warn!(
            "no admin token configured (BASE_ADMIN_TOKEN / BASE_ADMIN_TOKEN_FILE): admin routes will answer 401"
        );
    }
    let state = app_state(
        &node,
        &settings,
        AdminAuth::new(settings.admin_token.clone()),
    )
    .await;
    let mut running = node.spawn_loops(LoopHooks {
        reconcile_wake: state.reconcile_wake(),
        publish: state.weights().publisher(),
        epochs_after: None,
    })?;
    if let Some(broker) = node.broker.clone() {
        serve_broker(&settings, broker, &mut running).await?;
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
        database = %node.plan.database.redacted(),
        environment = settings.environment.as_str(),
        orchestrator = node.orchestrator.as_ref().map_or("none", |o| o.name()),
        challenge_broker_url = node.plan.challenge_broker_url.as_deref().unwrap_or("none"),
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
    running.stop().await;
    tracing::info!("BASE master stopped");
    served.map_err(|source| MasterError::Io {
        context: "serving the API".into(),
        source,
    })
}

/// The API's state over a built node: its registry, orchestrator,
/// metagraph (shared with the epochs), weights key and the last stored
/// vector, so a restart serves it from the first request on.
pub async fn app_state(node: &Node, settings: &Settings, admin: AdminAuth) -> AppState {
    let mut state = AppState::new(node.registry.clone(), admin, settings.netuid)
        .with_admin_limits(settings.admin_limits());
    if let Some(o) = &node.orchestrator {
        state = state.with_orchestrator(o.clone());
    }
    if node.plan.role == Role::Master {
        state = state.with_proxy(Arc::new(proxy(settings, node.metagraph.clone())));
    }
    if let Some(key) = &node.weights_key {
        tracing::info!(weights_pubkey = %key.public(), "weight vectors are signed");
        state.weights().set_key(key.clone());
    }
    match node.registry.store().latest_snapshot().await {
        Ok(Some(s)) => state.weights().publish(&s),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not load the last weights snapshot"),
    }
    state
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

/// Binds the broker on `BASE_BROKER_LISTEN` and serves it as one of the
/// node's tasks, until the node stops. The node already recovered it and
/// runs its reaper.
pub async fn serve_broker(
    settings: &Settings,
    broker: Broker,
    running: &mut Running,
) -> Result<(), MasterError> {
    let listener = tokio::net::TcpListener::bind(settings.broker_listen)
        .await
        .map_err(|source| MasterError::Io {
            context: format!("binding the broker to {}", settings.broker_listen),
            source,
        })?;
    tracing::info!(listen = %settings.broker_listen, "broker started");
    let stopped = running.stopped();
    running.spawn(async move {
        if let Err(e) = crate::broker::serve(listener, broker, stopped).await {
            tracing::error!(error = %e, "broker stopped serving");
        }
    });
    Ok(())
}

/// Runs the broker alone (`base-server broker`): store, orchestrator,
/// recovery, reaper and the `:18082` API, until `shutdown`.
pub async fn run_broker(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let plan = base_sdk::node::plan(&settings, Role::Broker)?;
    let node = Node::build(&settings, plan, None).await?;
    let mut running = node.spawn_loops(LoopHooks {
        reconcile_wake: Arc::new(tokio::sync::Notify::new()),
        publish: Arc::new(|_| {}),
        epochs_after: None,
    })?;
    if let Some(broker) = node.broker.clone() {
        serve_broker(&settings, broker, &mut running).await?;
    }
    shutdown.await;
    running.stop().await;
    tracing::info!("BASE broker stopped");
    Ok(())
}
