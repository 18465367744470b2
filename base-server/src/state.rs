//! What every handler shares: the registry service, the admin credential
//! and the settings that shape responses.

use std::sync::Arc;

use base_sdk::auth::{AdminAuth, AdminGuard, AdminLimits};
use base_sdk::orchestrator::Orchestrator;
use base_sdk::proxy::{Proxy, ProxyConfig};
use base_sdk::registry::Registry;
use tokio::sync::Notify;

use crate::public::RegistryCache;
use crate::weights::WeightsCache;

/// Shared, cheaply cloned handler state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    admin: AdminAuth,
    netuid: u16,
    weights: Arc<WeightsCache>,
    orchestrator: Option<Arc<dyn Orchestrator>>,
    reconcile: Arc<Notify>,
    /// The public proxy (always set; an `Option` so that handlers degrade
    /// to 503 rather than panic if a future constructor cannot build one).
    proxy: Option<Arc<Proxy>>,
    /// Rate limit and failed-authentication lockout of the admin routes.
    admin_guard: AdminGuard,
    /// `GET /v1/registry`, serialized and kept in memory.
    registry_view: Arc<RegistryCache>,
}

impl AppState {
    /// State over a registry with the given admin credential.
    pub fn new(registry: Registry, admin: AdminAuth, netuid: u16) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                admin,
                netuid,
                weights: Arc::default(),
                orchestrator: None,
                reconcile: Arc::default(),
                proxy: Some(Arc::new(Proxy::new(
                    ProxyConfig {
                        netuid,
                        ..ProxyConfig::default()
                    },
                    None,
                ))),
                admin_guard: AdminGuard::default(),
                registry_view: Arc::default(),
            }),
        }
    }

    /// Sets the admin routes' rate limit and lockout. Call before cloning
    /// the state.
    pub fn with_admin_limits(mut self, limits: AdminLimits) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.admin_guard = AdminGuard::new(limits);
        }
        self
    }

    /// The admin routes' rate limit and lockout.
    pub fn admin_guard(&self) -> &AdminGuard {
        &self.inner.admin_guard
    }

    /// The in-memory `GET /v1/registry` answer.
    pub fn registry_view(&self) -> &Arc<RegistryCache> {
        &self.inner.registry_view
    }

    /// Gives runtime operations (volume purge on delete) an orchestrator.
    /// Call before cloning the state.
    pub fn with_orchestrator(mut self, orchestrator: Arc<dyn Orchestrator>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.orchestrator = Some(orchestrator);
        }
        self
    }

    /// Replaces the public proxy (its settings, the bridge's metagraph).
    /// Call before cloning the state.
    pub fn with_proxy(mut self, proxy: Arc<Proxy>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.proxy = Some(proxy);
        }
        self
    }

    /// The public proxy.
    pub fn proxy(&self) -> Option<&Arc<Proxy>> {
        self.inner.proxy.as_ref()
    }

    /// The orchestrator, when challenges run under this master.
    pub fn orchestrator(&self) -> Option<&Arc<dyn Orchestrator>> {
        self.inner.orchestrator.as_ref()
    }

    /// Notified after every admin write, so the reconciler acts at once.
    pub fn reconcile_wake(&self) -> Arc<Notify> {
        self.inner.reconcile.clone()
    }

    /// The registry service.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The admin credential.
    pub fn admin(&self) -> &AdminAuth {
        &self.inner.admin
    }

    /// The subnet id.
    pub fn netuid(&self) -> u16 {
        self.inner.netuid
    }

    /// The published weights.
    pub fn weights(&self) -> &Arc<WeightsCache> {
        &self.inner.weights
    }

    /// Called after every admin write so the reconciler and in-memory
    /// views catch up at once instead of at their next tick.
    pub fn registry_changed(&self) {
        self.inner.reconcile.notify_one();
        if let Some(p) = &self.inner.proxy {
            p.directory().invalidate();
        }
        self.inner.registry_view.invalidate();
    }
}
