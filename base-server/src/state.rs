//! What every handler shares: the registry service, the admin credential
//! and the settings that shape responses.

use std::sync::Arc;

use base_sdk::auth::AdminAuth;
use base_sdk::registry::Registry;

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
            }),
        }
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

    /// Called after every admin write so in-memory views can refresh.
    pub fn registry_changed(&self) {}
}
