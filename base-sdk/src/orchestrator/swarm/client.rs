//! [`SwarmOrchestrator`]: applies the `spec` mapping to a real engine.
//!
//! Every operation is idempotent and keeps no state the engine does not
//! also hold (names and labels are the state), so a restarted master — or
//! a second instance — adopts what is running instead of duplicating it.
//! Job completion is observed by one shared watcher per orchestrator that
//! refreshes all jobs' task states at once, woken by the engine's event
//! stream, rather than by a polling loop per waiting caller.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{Service, ServiceSpec, Task};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectNetworkOptionsBuilder, ListConfigsOptionsBuilder,
    ListNetworksOptionsBuilder, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, LogsOptionsBuilder, RemoveVolumeOptionsBuilder,
    UpdateServiceOptionsBuilder,
};
use futures::StreamExt;
use secrecy::SecretString;
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;

use super::SwarmError;
use super::spec::{self, BaseNetwork, ChallengeSecretRefs, SecretKind, SecretRef};
use crate::model::{DeploymentId, Slug};
use crate::orchestrator::{
    ChallengeSpec, JobLogs, JobOutputs, JobSpec, JobStatus, LogChunk, LogStream, LogStreamKind,
    Orchestrator, OrchestratorError, ServiceStatus,
};
use base_shim::frame;

/// How long a purge waits for the removed service's container to release
/// the data volume.
const VOLUME_RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times (500 ms apart) a network in transition is looked at
/// again before its state is taken as final.
const NETWORK_SETTLE_TRIES: u32 = 20;

/// The watcher's refresh interval while someone waits, on top of events:
/// task state changes on *other* nodes produce no event on this manager
/// (Docker 20.10 has no task events), so a multi-node cluster needs it.
const WATCH_FALLBACK: Duration = Duration::from_secs(2);

/// How long `remove_job` waits for the engine to tell a scaled-down job's
/// tasks to go before deleting the service anyway.
const STOP_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often that wait looks: the engine reacts within milliseconds, and a
/// cancelled or timed-out job's removal waits on it.
const STOP_SETTLE_POLL: Duration = Duration::from_millis(25);

/// How many config requests of one job run at once.
const CONFIG_CONCURRENCY: usize = 8;

/// How old a job-mount config without a job service must be before it is
/// pruned: `run_job` creates the configs, then the service, milliseconds
/// apart; a minute leaves any such job alone.
const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// How old a job network without a job service must be before it is
/// pruned: `run_job` creates it right before the service, one call apart.
/// Short, since every `network: none` job leaves its network to the prune
/// (the engine refuses the removal until the task's container detached).
const JOB_NETWORK_GRACE: Duration = Duration::from_secs(15);

/// Runs challenges and jobs on Docker Swarm through the Engine API.
pub struct SwarmOrchestrator {
    /// The engine client, version-negotiated.
    docker: Docker,
    /// Set once both overlays are known to exist, so each ensure does not
    /// inspect them again.
    networks_ready: Mutex<bool>,
    /// The shared job watcher.
    watcher: Arc<JobWatcher>,
    /// The watcher's task, aborted on drop.
    watch_task: JoinHandle<()>,
    /// Where worker nodes keep the job shim; `None` refuses writable
    /// mounts.
    job_shim: Option<String>,
    /// The deployment whose objects this orchestrator creates, lists and
    /// removes (`spec::LABEL_DEPLOYMENT`); others' it leaves alone.
    deployment: DeploymentId,
}

impl fmt::Debug for SwarmOrchestrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmOrchestrator")
            .field("api_version", &self.docker.client_version().to_string())
            .field("deployment", &self.deployment)
            .finish_non_exhaustive()
    }
}

impl Drop for SwarmOrchestrator {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

/// A label filter value list.
fn filters(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        map.entry((*k).to_string())
            .or_default()
            .push((*v).to_string());
    }
    map
}

/// The options of an update of `service`: the engine applies it only to
/// the version it was read at (optimistic concurrency).
fn update_options(
    name: &str,
    service: &Service,
) -> Result<bollard::query_parameters::UpdateServiceOptions, SwarmError> {
    let index = service.version.as_ref().and_then(|v| v.index).unwrap_or(0);
    let version = i32::try_from(index).map_err(|_| {
        SwarmError::Spec(format!(
            "service {name} version {index} exceeds the API's range"
        ))
    })?;
    Ok(UpdateServiceOptionsBuilder::new().version(version).build())
}

/// Whether an engine error is "not found".
fn is_status(e: &SwarmError, code: u16) -> bool {
    e.status() == Some(code)
}

/// A service by name; `None` when absent.
async fn find_service(docker: &Docker, name: &str) -> Result<Option<Service>, SwarmError> {
    match docker.inspect_service(name, None).await {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            let e = SwarmError::docker(format!("inspecting service {name}"), e);
            if is_status(&e, 404) { Ok(None) } else { Err(e) }
        }
    }
}

/// The tasks of the given services (all of them in one request).
async fn tasks_of(docker: &Docker, service_ids: &[String]) -> Result<Vec<Task>, SwarmError> {
    if service_ids.is_empty() {
        return Ok(Vec::new());
    }
    let pairs: Vec<(&str, &str)> = service_ids
        .iter()
        .map(|id| ("service", id.as_str()))
        .collect();
    let opts = ListTasksOptionsBuilder::new()
        .filters(&filters(&pairs))
        .build();
    docker
        .list_tasks(Some(opts))
        .await
        .map_err(|e| SwarmError::docker("listing tasks", e))
}

/// One job's status, read from its service and tasks (`NotFound` once the
/// service is gone).
async fn job_status_of(docker: &Docker, id: &str) -> Result<JobStatus, OrchestratorError> {
    let name = spec::job_service_name(id)?;
    let service = find_service(docker, &name)
        .await?
        .ok_or_else(|| OrchestratorError::NotFound(format!("job '{id}'")))?;
    // Read whoever owns it: job ids are the broker's unique ids, so a
    // status asked for by id is this deployment's own job; what it may
    // act on is decided by `list_jobs` and `remove_job`.
    let tasks = tasks_of(docker, &service.id.iter().cloned().collect::<Vec<_>>()).await?;
    let labels = service.spec.and_then(|s| s.labels).unwrap_or_default();
    spec::job_status(id, &labels, &tasks).ok_or_else(|| {
        OrchestratorError::NotFound(format!("job '{id}' (service has no BASE labels)"))
    })
}

impl SwarmOrchestrator {
    /// Connects with Docker's defaults (`DOCKER_HOST` or the local socket),
    /// negotiates the API version down to the engine's, and checks that the
    /// engine is a Swarm manager.
    pub async fn connect() -> Result<Self, OrchestratorError> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| SwarmError::docker("connecting to the Docker engine", e))?
            .negotiate_version()
            .await
            .map_err(|e| SwarmError::docker("negotiating the Docker API version", e))?;
        let info = docker
            .info()
            .await
            .map_err(|e| SwarmError::docker("reading engine info", e))?;
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            let state = swarm
                .local_node_state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".to_string());
            return Err(SwarmError::NotManager(format!("local node state: {state}")).into());
        }
        tracing::info!(
            api_version = %docker.client_version(),
            engine = info.server_version.as_deref().unwrap_or("?"),
            "connected to the Swarm manager"
        );
        let watcher = Arc::new(JobWatcher::new(docker.clone()));
        let watch_task = tokio::spawn(Arc::clone(&watcher).run());
        Ok(Self {
            docker,
            networks_ready: Mutex::new(false),
            watcher,
            watch_task,
            job_shim: Some(spec::DEFAULT_SHIM_HOST_PATH.to_string()),
            deployment: DeploymentId::default(),
        })
    }

    /// Sets the deployment this orchestrator acts for (default `base`,
    /// `Settings::deployment`): every object it creates carries
    /// `base.deployment=<id>`; listing, reconciling, reaping and pruning see
    /// only that deployment's objects (the default one also adopts the
    /// unlabelled objects made before deployment ids); an ensure that
    /// meets a same-name object of another deployment fails naming it.
    pub fn with_deployment(mut self, deployment: DeploymentId) -> Self {
        self.deployment = deployment;
        self
    }

    /// The deployment this orchestrator acts for.
    pub fn deployment(&self) -> &DeploymentId {
        &self.deployment
    }

    /// Sets where the job shim (`base-shim`) sits on every worker node
    /// (default [`spec::DEFAULT_SHIM_HOST_PATH`]); `None` refuses jobs with
    /// writable mounts. The path is bind-mounted into those jobs; a node
    /// without the file fails such a job at start, naming the path.
    pub fn with_job_shim(mut self, host_path: Option<String>) -> Self {
        self.job_shim = host_path.filter(|p| !p.is_empty());
        self
    }

    /// The image's `ENTRYPOINT`, which the shim must run before the job's
    /// command. Read from the manager's engine, pulling the image there
    /// first if it has no copy (the manager may never run the image, but
    /// only it can be asked; a registry is then needed as for any job).
    async fn image_entrypoint(&self, image: &str) -> Result<Vec<String>, SwarmError> {
        let inspect_err = |e| SwarmError::docker(format!("inspecting image {image}"), e);
        let found = match self.docker.inspect_image(image).await.map_err(inspect_err) {
            Ok(found) => found,
            Err(e) if !is_status(&e, 404) => return Err(e),
            Err(_) => {
                let opts = bollard::query_parameters::CreateImageOptionsBuilder::new()
                    .from_image(image)
                    .build();
                let mut pull = self.docker.create_image(Some(opts), None, None);
                while let Some(step) = pull.next().await {
                    step.map_err(|e| {
                        SwarmError::Spec(format!(
                            "writable mounts need the image's ENTRYPOINT, and image {image} is \
                             neither on the manager nor could be pulled there: {e}"
                        ))
                    })?;
                }
                self.docker
                    .inspect_image(image)
                    .await
                    .map_err(inspect_err)?
            }
        };
        Ok(found.config.and_then(|c| c.entrypoint).unwrap_or_default())
    }

    /// The shim plan of a job with writable mounts (`None` without).
    async fn shim_for(&self, job: &JobSpec) -> Result<Option<spec::JobShim>, SwarmError> {
        if spec::writable_targets(job).is_empty() {
            return Ok(None);
        }
        let Some(host_path) = self.job_shim.clone() else {
            return Ok(None);
        };
        Ok(Some(spec::JobShim {
            host_path,
            entrypoint: self.image_entrypoint(&job.image.to_string()).await?,
        }))
    }

    /// The negotiated Engine API version (`1.41` on Docker 20.10).
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Creates `base_challenges` (encrypted, MTU 1450, attachable) and
    /// `base_jobs_internal` (encrypted, MTU 1450, internal) unless they
    /// exist, and returns the names it created. An existing network is
    /// adopted only if it is an encrypted swarm overlay with the right
    /// `internal` flag; otherwise this fails rather than use a weaker one.
    pub async fn ensure_networks(&self) -> Result<Vec<String>, OrchestratorError> {
        let mut ready = self.networks_ready.lock().await;
        let mut created = Vec::new();
        for net in BaseNetwork::ALL {
            if self.ensure_network(net).await? {
                created.push(net.name().to_string());
            }
        }
        *ready = true;
        Ok(created)
    }

    /// [`ensure_networks`](Self::ensure_networks) once per orchestrator.
    async fn networks_once(&self) -> Result<(), OrchestratorError> {
        if *self.networks_ready.lock().await {
            return Ok(());
        }
        self.ensure_networks().await.map(|_| ())
    }

    /// One network; `true` when it was created.
    async fn ensure_network(&self, net: BaseNetwork) -> Result<bool, SwarmError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let opts = InspectNetworkOptionsBuilder::new().scope("swarm").build();
            match self.docker.inspect_network(net.name(), Some(opts)).await {
                // A network being removed (Swarm removes asynchronously)
                // reads back for a moment with no driver and no options;
                // wait for it to settle rather than judge it.
                Ok(n)
                    if n.driver.as_deref().is_none_or(str::is_empty)
                        && attempt < NETWORK_SETTLE_TRIES =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Ok(n) => {
                    if let Some(why) = spec::network_mismatch(
                        net,
                        n.driver.as_deref(),
                        n.scope.as_deref(),
                        n.internal,
                        n.options.as_ref(),
                    ) {
                        return Err(SwarmError::NetworkMismatch(why));
                    }
                    return Ok(false);
                }
                Err(e) => {
                    let e = SwarmError::docker(format!("inspecting network {}", net.name()), e);
                    if !is_status(&e, 404) {
                        return Err(e);
                    }
                }
            }
            match self
                .docker
                .create_network(spec::network_spec(net, &self.deployment))
                .await
            {
                Ok(_) => {
                    tracing::info!(network = net.name(), "created encrypted overlay network");
                    return Ok(true);
                }
                // Another manager process created it meanwhile, or a
                // removal is still in flight: look again, a bounded number
                // of times.
                Err(e) => {
                    let e = SwarmError::docker(format!("creating network {}", net.name()), e);
                    if !(is_status(&e, 409) && attempt < NETWORK_SETTLE_TRIES) {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// The secret holding `token` for `slug`, created if absent. The name
    /// carries a prefix of the token's hash, so an unchanged token finds
    /// its secret and a rotated one gets a new secret.
    async fn ensure_secret(
        &self,
        slug: &Slug,
        kind: SecretKind,
        token: &SecretString,
    ) -> Result<SecretRef, SwarmError> {
        let name = spec::secret_name(slug, kind, &spec::token_hash8(token));
        for attempt in 0..2 {
            if let Some((found, labels)) = self.find_secret(&name).await? {
                spec::check_owner(&format!("secret {name}"), labels.as_ref(), &self.deployment)?;
                return Ok(found);
            }
            // The spec holds the token: it goes into the request body and
            // nowhere else (never logged, never formatted).
            match self
                .docker
                .create_secret(spec::secret_spec(slug, kind, token, &self.deployment))
                .await
            {
                Ok(id) => {
                    tracing::info!(slug = %slug, secret = %name, "created challenge secret");
                    return Ok(SecretRef { id: id.id, name });
                }
                Err(e) => {
                    let e = SwarmError::docker(format!("creating secret {name}"), e);
                    if !(is_status(&e, 409) && attempt == 0) {
                        return Err(e);
                    }
                }
            }
        }
        Err(SwarmError::Spec(format!(
            "secret {name} could neither be created nor found"
        )))
    }

    /// A secret by exact name (the engine's name filter matches prefixes),
    /// with its labels (whose it is).
    async fn find_secret(
        &self,
        name: &str,
    ) -> Result<Option<(SecretRef, Option<HashMap<String, String>>)>, SwarmError> {
        let opts = ListSecretsOptionsBuilder::new()
            .filters(&filters(&[("name", name)]))
            .build();
        let secrets = self
            .docker
            .list_secrets(Some(opts))
            .await
            .map_err(|e| SwarmError::docker(format!("listing secret {name}"), e))?;
        Ok(secrets.into_iter().find_map(|s| {
            let found = s.spec.as_ref().and_then(|sp| sp.name.as_deref()) == Some(name);
            match (found, s.id) {
                (true, Some(id)) => Some((
                    SecretRef {
                        id,
                        name: name.to_string(),
                    },
                    s.spec.and_then(|sp| sp.labels),
                )),
                _ => None,
            }
        }))
    }

    /// Deletes `slug`'s token secrets that no service references any more
    /// (after a rotation, or after the service was removed). Failures are
    /// logged: the next ensure tries again.
    async fn prune_secrets(&self, slug: &Slug) -> Result<(), SwarmError> {
        let opts = ListSecretsOptionsBuilder::new()
            .filters(&filters(&[
                ("label", &format!("{}={slug}", spec::LABEL_CHALLENGE)),
                (
                    "label",
                    &format!("{}={}", spec::LABEL_COMPONENT, spec::COMPONENT_SECRET),
                ),
            ]))
            .build();
        let secrets = self
            .docker
            .list_secrets(Some(opts))
            .await
            .map_err(|e| SwarmError::docker(format!("listing secrets of {slug}"), e))?;
        if secrets.is_empty() {
            return Ok(());
        }
        let services = self
            .docker
            .list_services(None)
            .await
            .map_err(|e| SwarmError::docker("listing services", e))?;
        let used: BTreeSet<String> = services
            .iter()
            .filter_map(|s| {
                s.spec
                    .as_ref()?
                    .task_template
                    .as_ref()?
                    .container_spec
                    .as_ref()
            })
            .flat_map(|c| c.secrets.iter().flatten())
            .filter_map(|s| s.secret_id.clone())
            .collect();
        for secret in secrets {
            let Some(id) = secret.id else { continue };
            let labels = secret.spec.as_ref().and_then(|s| s.labels.as_ref());
            if used.contains(&id) || !spec::is_ours(labels, &self.deployment) {
                continue;
            }
            let name = secret.spec.and_then(|s| s.name).unwrap_or_default();
            match self.docker.delete_secret(&id).await {
                Ok(()) => tracing::info!(slug = %slug, secret = %name, "removed unused secret"),
                Err(e) => {
                    tracing::warn!(slug = %slug, secret = %name, error = %e, "cannot remove unused secret")
                }
            }
        }
        Ok(())
    }

    /// The labels of the volume `name` (`Some(None)`: it exists without
    /// labels), or `None` when there is no such volume.
    async fn volume_labels(
        &self,
        name: &str,
    ) -> Result<Option<Option<HashMap<String, String>>>, SwarmError> {
        match self.docker.inspect_volume(name).await {
            // The engine reports an unlabelled volume with an empty map.
            Ok(v) => Ok(Some(Some(v.labels).filter(|l| !l.is_empty()))),
            Err(e) => {
                let e = SwarmError::docker(format!("inspecting volume {name}"), e);
                if is_status(&e, 404) { Ok(None) } else { Err(e) }
            }
        }
    }

    /// The challenge's data volume: adopted when it is this deployment's
    /// (what an uninstall kept, so a re-install finds its data), created
    /// when absent, refused when another deployment's.
    async fn ensure_volume(&self, slug: &Slug) -> Result<(), SwarmError> {
        let name = spec::volume_name(slug);
        if let Some(labels) = self.volume_labels(&name).await? {
            return spec::check_owner(&format!("volume {name}"), labels.as_ref(), &self.deployment);
        }
        // Creating an existing volume returns it unchanged, so a volume
        // made concurrently is fine too.
        self.docker
            .create_volume(spec::volume_spec(slug, &self.deployment))
            .await
            .map_err(|e| SwarmError::docker(format!("creating volume {name}"), e))?;
        Ok(())
    }

    /// A service by name; `None` when absent.
    async fn find_service(&self, name: &str) -> Result<Option<Service>, SwarmError> {
        find_service(&self.docker, name).await
    }

    /// The service name of a job that exists; `NotFound` otherwise.
    async fn existing_job_service(&self, id: &str) -> Result<String, OrchestratorError> {
        let name = spec::job_service_name(id)?;
        if self.find_service(&name).await?.is_none() {
            return Err(OrchestratorError::NotFound(format!("job '{id}'")));
        }
        Ok(name)
    }

    /// The tasks of the given services (all of them in one request).
    async fn tasks_of(&self, service_ids: &[String]) -> Result<Vec<Task>, SwarmError> {
        tasks_of(&self.docker, service_ids).await
    }

    /// Creates the service, or updates it when the desired spec's digest
    /// differs from the running one's.
    async fn apply_service(&self, name: &str, desired: ServiceSpec) -> Result<(), SwarmError> {
        for attempt in 0..3 {
            match self.find_service(name).await? {
                None => match self.docker.create_service(desired.clone(), None).await {
                    Ok(created) => {
                        for w in created.warnings.iter().flatten() {
                            tracing::warn!(service = name, warning = %w, "engine warning");
                        }
                        tracing::info!(service = name, "created service");
                        return Ok(());
                    }
                    Err(e) => {
                        let e = SwarmError::docker(format!("creating service {name}"), e);
                        // Created concurrently: go round and update it.
                        if !(is_status(&e, 409) && attempt < 2) {
                            return Err(e);
                        }
                    }
                },
                Some(current) => {
                    // Never update another deployment's service of the same
                    // name; adopt this deployment's own (and, for the
                    // default deployment, the unlabelled ones of old).
                    spec::check_owner(
                        &format!("service {name}"),
                        current.spec.as_ref().and_then(|s| s.labels.as_ref()),
                        &self.deployment,
                    )?;
                    if !spec::needs_update(&current, &desired) {
                        return Ok(());
                    }
                    let opts = update_options(name, &current)?;
                    match self
                        .docker
                        .update_service(name, desired.clone(), opts, None)
                        .await
                    {
                        Ok(updated) => {
                            for w in updated.warnings.iter().flatten() {
                                tracing::warn!(service = name, warning = %w, "engine warning");
                            }
                            tracing::info!(service = name, "updated service (rolling)");
                            return Ok(());
                        }
                        Err(e) => {
                            let e = SwarmError::docker(format!("updating service {name}"), e);
                            // "update out of sequence": someone else updated
                            // it between inspect and update; read it again.
                            if attempt == 2 || !e.to_string().contains("out of sequence") {
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }
        Err(SwarmError::Spec(format!(
            "service {name} kept changing while being applied"
        )))
    }

    /// Creates one config per mounted file (a few at a time) and returns
    /// their ids by name. A config that exists already — a retried call —
    /// is looked up and used: configs are immutable, and the name holds the
    /// job id, so it holds this job's file.
    async fn create_job_configs(
        &self,
        job: &JobSpec,
        files: &[spec::MountFile<'_>],
    ) -> Result<HashMap<String, String>, SwarmError> {
        // Boxed one by one in a loop: a closure returning these futures
        // trips the compiler's higher-ranked lifetime check under
        // `async_trait`'s `Send` bound.
        let mut creations: Vec<
            futures::future::BoxFuture<'_, Result<(String, String), SwarmError>>,
        > = Vec::with_capacity(files.len());
        for file in files {
            creations.push(Box::pin(self.create_job_config(job, file)));
        }
        futures::stream::iter(creations)
            .buffer_unordered(CONFIG_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// One config of a mounted file; its id by name.
    async fn create_job_config(
        &self,
        job: &JobSpec,
        file: &spec::MountFile<'_>,
    ) -> Result<(String, String), SwarmError> {
        let name = file.name.clone();
        match self
            .docker
            .create_config(spec::job_config_spec(job, file, &self.deployment))
            .await
        {
            Ok(created) => Ok((name, created.id)),
            Err(e) => {
                let e = SwarmError::docker(format!("creating config {name}"), e);
                if !is_status(&e, 409) {
                    return Err(e);
                }
                let opts = ListConfigsOptionsBuilder::new()
                    .filters(&filters(&[("name", &name)]))
                    .build();
                let found = self
                    .docker
                    .list_configs(Some(opts))
                    .await
                    .map_err(|e| SwarmError::docker(format!("looking up config {name}"), e))?
                    .into_iter()
                    .find(|c| c.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(&name))
                    .and_then(|c| c.id);
                found.map(|id| (name.clone(), id)).ok_or_else(|| {
                    SwarmError::Spec(format!("config {name} could neither be created nor found"))
                })
            }
        }
    }

    /// Deletes every config of a job's mounted files (404s ignored: the call
    /// is idempotent); the first other failure is returned after trying all.
    async fn remove_job_configs(&self, id: &str) -> Result<usize, SwarmError> {
        let job_label = format!("{}={id}", spec::LABEL_JOB_ID);
        let component = format!("{}={}", spec::LABEL_COMPONENT, spec::COMPONENT_JOB_MOUNT);
        let opts = ListConfigsOptionsBuilder::new()
            .filters(&filters(&[("label", &component), ("label", &job_label)]))
            .build();
        let configs = self
            .docker
            .list_configs(Some(opts))
            .await
            .map_err(|e| SwarmError::docker(format!("listing the configs of job {id}"), e))?;
        let ids: Vec<String> = configs
            .into_iter()
            .filter(|c| {
                let labels = c.spec.as_ref().and_then(|s| s.labels.as_ref());
                spec::is_ours(labels, &self.deployment)
            })
            .filter_map(|c| c.id)
            .collect();
        self.delete_configs(&ids).await
    }

    /// Deletes configs by id, 404s counted as done; returns how many were
    /// deleted, or the first failure after trying them all.
    async fn delete_configs(&self, ids: &[String]) -> Result<usize, SwarmError> {
        let mut deletions: Vec<futures::future::BoxFuture<'_, Result<bool, SwarmError>>> =
            Vec::with_capacity(ids.len());
        for cid in ids {
            deletions.push(Box::pin(async move {
                match self.docker.delete_config(cid).await {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        let e = SwarmError::docker(format!("removing config {cid}"), e);
                        if is_status(&e, 404) {
                            Ok(false)
                        } else {
                            Err(e)
                        }
                    }
                }
            }));
        }
        let results: Vec<Result<bool, SwarmError>> = futures::stream::iter(deletions)
            .buffer_unordered(CONFIG_CONCURRENCY)
            .collect()
            .await;
        let mut deleted = 0;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }

    /// Best-effort cleanup after a failed `run_job`: whatever is left here
    /// is found later by [`SwarmOrchestrator::prune_job_mounts`].
    async fn discard_job_configs(&self, id: &str) {
        if let Err(e) = self.remove_job_configs(id).await {
            tracing::warn!(job = id, error = %e, "cannot remove the configs of a job that failed to start; the reaper will");
        }
    }

    /// Creates the internal overlay a `network: none` job has to itself
    /// (`spec::job_network_spec`); one that exists already (a retried
    /// `run_job`) is fine.
    async fn create_job_network(&self, job: &JobSpec) -> Result<(), SwarmError> {
        let request = spec::job_network_spec(job, &self.deployment)?;
        let name = request.name.clone();
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = SwarmError::docker(format!("creating job network {name}"), e);
                if is_status(&e, 409) { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Deletes a job's own network; a missing one is fine.
    async fn remove_job_network(&self, id: &str) -> Result<bool, SwarmError> {
        let name = spec::job_network_name(id)?;
        match self.docker.remove_network(&name).await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = SwarmError::docker(format!("removing job network {name}"), e);
                if is_status(&e, 404) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// [`remove_job_network`](Self::remove_job_network) for a job that
    /// failed to start, failures left to the reaper.
    async fn discard_job_network(&self, id: &str, created: bool) {
        if !created {
            return;
        }
        if let Err(e) = self.remove_job_network(id).await {
            tracing::warn!(job = id, error = %e, "cannot remove the network of a job that failed to start; the reaper will");
        }
    }

    /// Deletes the job networks whose job has no service any more and that
    /// are at least `grace` old (`spec::orphaned_job_networks`); returns how
    /// many were deleted. One the engine still refuses (its container still
    /// detaching) is tried again on the next pass.
    pub async fn prune_job_networks(&self, grace: Duration) -> Result<usize, OrchestratorError> {
        let component = format!("{}={}", spec::LABEL_COMPONENT, spec::COMPONENT_JOB_NETWORK);
        let opts = ListNetworksOptionsBuilder::new()
            .filters(&filters(&[("label", &component)]))
            .build();
        let networks = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(|e| SwarmError::docker("listing job networks", e))?;
        if networks.is_empty() {
            return Ok(0);
        }
        let live = self.live_job_ids().await?;
        let orphans = spec::orphaned_job_networks(
            &networks,
            &live,
            chrono::Utc::now(),
            chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX),
            &self.deployment,
        );
        let mut removed = 0;
        for name in orphans {
            match self.docker.remove_network(&name).await {
                Ok(()) => {
                    tracing::info!(network = %name, "removed orphaned job network");
                    removed += 1;
                }
                Err(e) => {
                    tracing::debug!(network = %name, error = %e, "orphaned job network not removed yet")
                }
            }
        }
        Ok(removed)
    }

    /// The job-mount configs whose job service no longer exists, and are
    /// older than `grace` (younger ones may belong to a job whose service
    /// is being created right now).
    async fn orphan_configs(&self, grace: Duration) -> Result<Vec<spec::OrphanConfig>, SwarmError> {
        let component = format!("{}={}", spec::LABEL_COMPONENT, spec::COMPONENT_JOB_MOUNT);
        let opts = ListConfigsOptionsBuilder::new()
            .filters(&filters(&[("label", &component)]))
            .build();
        let configs = self
            .docker
            .list_configs(Some(opts))
            .await
            .map_err(|e| SwarmError::docker("listing job-mount configs", e))?;
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        let live = self.live_job_ids().await?;
        Ok(spec::orphaned_job_mounts(
            &configs,
            &live,
            chrono::Utc::now(),
            chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX),
            &self.deployment,
        ))
    }

    /// Names of the job-mount configs no job service uses any more (a
    /// removal that failed half-way, or a broker killed between creating a
    /// job's configs and its service).
    pub async fn orphaned_job_mounts(&self) -> Result<Vec<String>, OrchestratorError> {
        Ok(self
            .orphan_configs(ORPHAN_GRACE)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect())
    }

    /// Deletes the configs [`orphaned_job_mounts`](Self::orphaned_job_mounts)
    /// finds; returns how many were deleted.
    pub async fn prune_job_mounts(&self) -> Result<usize, OrchestratorError> {
        self.prune_job_mounts_older_than(ORPHAN_GRACE).await
    }

    /// [`prune_job_mounts`](Self::prune_job_mounts) with another grace
    /// period than its 60 s: only orphans at least `grace` old are deleted
    /// (zero deletes every orphan, also of a job being created right now —
    /// for when no broker runs, and for tests).
    pub async fn prune_job_mounts_older_than(
        &self,
        grace: Duration,
    ) -> Result<usize, OrchestratorError> {
        let orphans = self.orphan_configs(grace).await?;
        if orphans.is_empty() {
            return Ok(0);
        }
        for o in &orphans {
            tracing::info!(config = %o.name, job = %o.job_id, "removing orphaned job-mount config");
        }
        let ids: Vec<String> = orphans.into_iter().map(|o| o.id).collect();
        Ok(self.delete_configs(&ids).await?)
    }

    /// Scales an unsettled job service to nothing and waits (at most
    /// [`STOP_SETTLE_TIMEOUT`]) until the engine has told its tasks to go.
    /// A job already settled is left as it is.
    async fn stop_job_tasks(&self, name: &str, mut service: Service) -> Result<(), SwarmError> {
        for attempt in 0..3 {
            let tasks = self
                .tasks_of(&service.id.iter().cloned().collect::<Vec<_>>())
                .await?;
            if spec::job_tasks_settled(&tasks) {
                return Ok(());
            }
            // Only a replicated job has the bug (and the mode cannot be
            // changed): anything else is deleted as it is.
            let Some(current) = service
                .spec
                .clone()
                .filter(|s| s.mode.as_ref().is_some_and(|m| m.replicated_job.is_some()))
            else {
                return Ok(());
            };
            let opts = update_options(name, &service)?;
            match self
                .docker
                .update_service(name, spec::stopped_job_spec(current), opts, None)
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    let e = SwarmError::docker(format!("stopping job service {name}"), e);
                    if is_status(&e, 404) {
                        return Ok(());
                    }
                    // Changed since read: read it again.
                    if attempt == 2 || !e.to_string().contains("out of sequence") {
                        return Err(e);
                    }
                    match self.find_service(name).await? {
                        Some(fresh) => service = fresh,
                        None => return Ok(()),
                    }
                }
            }
        }
        let ids: Vec<String> = service.id.iter().cloned().collect();
        let deadline = tokio::time::Instant::now() + STOP_SETTLE_TIMEOUT;
        loop {
            let tasks = self.tasks_of(&ids).await?;
            // No task at all after the scale-down: none will come.
            if tasks.is_empty() || spec::job_tasks_settled(&tasks) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    service = name,
                    "job tasks not told to stop in time; deleting anyway"
                );
                return Ok(());
            }
            tokio::time::sleep(STOP_SETTLE_POLL).await;
        }
    }

    /// The ids of the jobs that still have a service: what the orphan
    /// sweeps (job networks, job-mount configs) keep. Every deployment's
    /// jobs count here: keeping more is the safe side, and the sweeps
    /// themselves only look at their own deployment's objects.
    async fn live_job_ids(&self) -> Result<HashSet<String>, SwarmError> {
        let services = self
            .services_labelled(&[(spec::LABEL_COMPONENT, spec::COMPONENT_JOB)])
            .await?;
        Ok(services
            .iter()
            .filter_map(|s| s.spec.as_ref()?.labels.as_ref()?.get(spec::LABEL_JOB_ID))
            .cloned()
            .collect())
    }

    /// All services with the given labels.
    async fn services_labelled(&self, labels: &[(&str, &str)]) -> Result<Vec<Service>, SwarmError> {
        let values: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("label", v.as_str())).collect();
        let opts = ListServicesOptionsBuilder::new()
            .filters(&filters(&pairs))
            .build();
        self.docker
            .list_services(Some(opts))
            .await
            .map_err(|e| SwarmError::docker("listing services", e))
    }

    /// The services of this deployment among `services` (`spec::is_ours`:
    /// the engine's label filter cannot say "this id, or no label").
    fn own(&self, services: Vec<Service>) -> Vec<Service> {
        services
            .into_iter()
            .filter(|s| {
                spec::is_ours(
                    s.spec.as_ref().and_then(|sp| sp.labels.as_ref()),
                    &self.deployment,
                )
            })
            .collect()
    }

    /// Statuses of this deployment's BASE jobs, optionally of one challenge.
    async fn job_statuses(&self, slug: Option<&Slug>) -> Result<Vec<JobStatus>, SwarmError> {
        let slug_label = slug.map(|s| s.to_string());
        let mut labels = vec![(spec::LABEL_COMPONENT, spec::COMPONENT_JOB)];
        if let Some(s) = &slug_label {
            labels.push((spec::LABEL_CHALLENGE, s.as_str()));
        }
        let services = self.own(self.services_labelled(&labels).await?);
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let tasks = self.tasks_of(&ids).await?;
        let mut out: Vec<JobStatus> = services
            .iter()
            .filter_map(|s| {
                let labels = s.spec.as_ref()?.labels.as_ref()?;
                let id = labels.get(spec::LABEL_JOB_ID)?;
                let mine: Vec<Task> = tasks
                    .iter()
                    .filter(|t| t.service_id.is_some() && t.service_id == s.id)
                    .cloned()
                    .collect();
                spec::job_status(id, labels, &mine)
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[async_trait]
impl Orchestrator for SwarmOrchestrator {
    fn name(&self) -> &'static str {
        "swarm"
    }

    /// Networks (once), data volume, token secrets, then the service:
    /// created when absent, updated (rolling, stop-first) when the desired
    /// spec changed, left alone otherwise; then secrets no service uses
    /// any more are removed.
    async fn ensure_challenge(
        &self,
        spec: &ChallengeSpec,
    ) -> Result<ServiceStatus, OrchestratorError> {
        let name = spec::service_name(&spec.slug)?;
        // Validate before creating anything, so a bad record leaves no
        // secrets or volumes behind.
        let placeholder = SecretRef {
            id: String::new(),
            name: String::new(),
        };
        spec::challenge_service(
            spec,
            &ChallengeSecretRefs {
                challenge: placeholder.clone(),
                broker: placeholder,
            },
            &self.deployment,
        )?;
        // A same-name service or volume of another deployment stops the
        // ensure before anything is created or changed (slugs are not
        // unique across deployments, service and volume names are).
        if let Some(current) = self.find_service(&name).await? {
            spec::check_owner(
                &format!("service {name}"),
                current.spec.as_ref().and_then(|s| s.labels.as_ref()),
                &self.deployment,
            )?;
        }
        self.ensure_volume(&spec.slug).await?;
        self.networks_once().await?;
        let refs = ChallengeSecretRefs {
            challenge: self
                .ensure_secret(
                    &spec.slug,
                    SecretKind::Challenge,
                    &spec.secrets.challenge_token,
                )
                .await?,
            broker: self
                .ensure_secret(&spec.slug, SecretKind::Broker, &spec.secrets.broker_token)
                .await?,
        };
        let desired = spec::challenge_service(spec, &refs, &self.deployment)?;
        self.apply_service(&name, desired).await?;
        if let Err(e) = self.prune_secrets(&spec.slug).await {
            tracing::warn!(slug = %spec.slug, error = %e, "cannot prune secrets");
        }
        self.challenge_status(&spec.slug).await
    }

    /// Removes the service and its now unused secrets. The data volume is
    /// kept unless `purge_data`; a purge waits (bounded) for the stopping
    /// container to release it.
    async fn remove_challenge(
        &self,
        slug: &Slug,
        purge_data: bool,
    ) -> Result<(), OrchestratorError> {
        let name = spec::service_name(slug)?;
        if let Some(current) = self.find_service(&name).await? {
            spec::check_owner(
                &format!("service {name}"),
                current.spec.as_ref().and_then(|s| s.labels.as_ref()),
                &self.deployment,
            )?;
        }
        match self.docker.delete_service(&name).await {
            Ok(()) => tracing::info!(slug = %slug, "removed challenge service"),
            Err(e) => {
                let e = SwarmError::docker(format!("removing service {name}"), e);
                if !is_status(&e, 404) {
                    return Err(e.into());
                }
            }
        }
        self.prune_secrets(slug).await?;
        if purge_data {
            let volume = spec::volume_name(slug);
            if let Some(labels) = self.volume_labels(&volume).await? {
                spec::check_owner(
                    &format!("volume {volume}"),
                    labels.as_ref(),
                    &self.deployment,
                )?;
            }
            let deadline = tokio::time::Instant::now() + VOLUME_RELEASE_TIMEOUT;
            loop {
                let opts = RemoveVolumeOptionsBuilder::new().force(false).build();
                match self.docker.remove_volume(&volume, Some(opts)).await {
                    Ok(()) => {
                        tracing::info!(slug = %slug, volume, "purged challenge data");
                        break;
                    }
                    Err(e) => {
                        let e = SwarmError::docker(format!("removing volume {volume}"), e);
                        if is_status(&e, 404) {
                            break;
                        }
                        // 409: the service's container is still stopping.
                        if !is_status(&e, 409) || tokio::time::Instant::now() >= deadline {
                            return Err(e.into());
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn challenge_status(&self, slug: &Slug) -> Result<ServiceStatus, OrchestratorError> {
        let name = spec::service_name(slug)?;
        let Some(service) = self.find_service(&name).await? else {
            return Ok(spec::missing_status(slug));
        };
        // Another deployment's service of the same name is not this
        // deployment's challenge: it is missing here, and says whose it is.
        let labels = service.spec.as_ref().and_then(|s| s.labels.as_ref());
        if let Err(e) = spec::check_owner(&format!("service {name}"), labels, &self.deployment) {
            let mut missing = spec::missing_status(slug);
            missing.message = Some(e.to_string());
            return Ok(missing);
        }
        let tasks = self
            .tasks_of(&service.id.iter().cloned().collect::<Vec<_>>())
            .await?;
        Ok(spec::service_status(slug, &service, &tasks))
    }

    async fn list_challenges(&self) -> Result<Vec<ServiceStatus>, OrchestratorError> {
        let services = self.own(
            self.services_labelled(&[(spec::LABEL_COMPONENT, spec::COMPONENT_CHALLENGE)])
                .await?,
        );
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let tasks = self.tasks_of(&ids).await?;
        let mut out: Vec<ServiceStatus> = services
            .iter()
            .filter_map(|s| {
                let name = s.spec.as_ref()?.name.as_deref()?;
                let slug = spec::slug_of_service(name)?;
                let mine: Vec<Task> = tasks
                    .iter()
                    .filter(|t| t.service_id.is_some() && t.service_id == s.id)
                    .cloned()
                    .collect();
                Some(spec::service_status(&slug, s, &mine))
            })
            .collect();
        out.sort_by(|a, b| a.slug.cmp(&b.slug));
        Ok(out)
    }

    /// Creates the job's mount configs, then its replicated-job service;
    /// an existing job of the same id is returned as it is (the call is
    /// idempotent). Everything is validated before anything is created, and
    /// the configs are removed again if the service cannot be created.
    async fn run_job(&self, job: &JobSpec) -> Result<JobStatus, OrchestratorError> {
        let name = spec::job_service_name(&job.id)?;
        let files = spec::job_mount_files(job)?;
        let placeholders: HashMap<String, String> = files
            .iter()
            .map(|f| (f.name.clone(), String::new()))
            .collect();
        // Checked with a stand-in shim first: everything but the image's
        // entrypoint is known without asking the engine.
        let stand_in = self.job_shim.clone().map(|host_path| spec::JobShim {
            host_path,
            entrypoint: Vec::new(),
        });
        spec::job_service(job, &placeholders, stand_in.as_ref(), &self.deployment)?;
        if let Some(current) = self.find_service(&name).await? {
            spec::check_owner(
                &format!("job service {name}"),
                current.spec.as_ref().and_then(|s| s.labels.as_ref()),
                &self.deployment,
            )?;
            self.watcher.kick.notify_one();
            return self.job_status(&job.id).await;
        }
        let shim = self.shim_for(job).await?;
        let config_ids = match self.create_job_configs(job, &files).await {
            Ok(ids) => ids,
            Err(e) => {
                self.discard_job_configs(&job.id).await;
                return Err(e.into());
            }
        };
        let desired = spec::job_service(job, &config_ids, shim.as_ref(), &self.deployment)?;
        // Last before the service, so the window in which the reaper could
        // take the network for an orphan (`JOB_NETWORK_GRACE`) is one call.
        let own_network = job.limits.network == crate::orchestrator::JobNetwork::None;
        if own_network && let Err(e) = self.create_job_network(job).await {
            self.discard_job_configs(&job.id).await;
            return Err(e.into());
        }
        match self.docker.create_service(desired, None).await {
            Ok(created) => {
                for w in created.warnings.iter().flatten() {
                    tracing::warn!(service = %name, warning = %w, "engine warning");
                }
                tracing::info!(job = %job.id, slug = %job.slug, gpus = ?job.limits.gpus, files = files.len(), "created job service");
            }
            Err(e) => {
                let e = SwarmError::docker(format!("creating job service {name}"), e);
                // 409: a concurrent run_job of the same id created it, with
                // these same configs.
                if !is_status(&e, 409) {
                    self.discard_job_configs(&job.id).await;
                    self.discard_job_network(&job.id, own_network).await;
                    return Err(e.into());
                }
            }
        }
        self.watcher.kick.notify_one();
        self.job_status(&job.id).await
    }

    async fn job_status(&self, id: &str) -> Result<JobStatus, OrchestratorError> {
        job_status_of(&self.docker, id).await
    }

    /// Subscribes to the shared watcher and returns as soon as a refresh
    /// shows the job terminal, or its status as it is at `timeout` (an
    /// unschedulable job is then `Queued` with the scheduler's message).
    async fn wait_job(&self, id: &str, timeout: Duration) -> Result<JobStatus, OrchestratorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.watcher.state.subscribe();
        let status = self.job_status(id).await?;
        if status.state.is_terminal() {
            return Ok(status);
        }
        let _waiting = self.watcher.wait_guard();
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = Arc::clone(&rx.borrow_and_update());
                    match snapshot.jobs.get(id) {
                        Some(s) if s.state.is_terminal() => return Ok(s.clone()),
                        Some(_) => {}
                        // Absent from this refresh: either removed while
                        // waited for (NotFound), or the refresh began before
                        // the job was created; ask the engine directly.
                        None if snapshot.error.is_none() => {
                            let status = self.job_status(id).await?;
                            if status.state.is_terminal() {
                                return Ok(status);
                            }
                        }
                        None => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.job_status(id).await
    }

    /// Both streams through the service logs endpoint, each cut to its last
    /// `max_bytes` while reading (memory stays bounded by twice that).
    async fn job_logs(&self, id: &str, max_bytes: usize) -> Result<JobLogs, OrchestratorError> {
        let name = self.existing_job_service(id).await?;
        let opts = log_options(false);
        let mut stream = self.docker.service_logs(&name, Some(opts));
        let mut stdout = TailBuffer::new(max_bytes);
        let mut stderr = TailBuffer::new(max_bytes);
        while let Some(item) = stream.next().await {
            match item.map_err(|e| SwarmError::docker(format!("reading logs of {name}"), e))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    // The shim's output lines are not the job's output.
                    if !frame::is_frame(&message) {
                        stdout.push(&message)
                    }
                }
                LogOutput::StdErr { message } => stderr.push(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        let (stdout, out_cut) = stdout.finish();
        let (stderr, err_cut) = stderr.finish();
        Ok(JobLogs {
            stdout,
            stderr,
            truncated: out_cut || err_cut,
        })
    }

    /// Reads the job's stdout once more and picks the shim's output lines
    /// out of it (`base_shim::frame`); the rest of the log is not kept.
    async fn job_outputs(
        &self,
        id: &str,
        writable: usize,
    ) -> Result<JobOutputs, OrchestratorError> {
        if writable == 0 {
            return Ok(Vec::new());
        }
        let name = self.existing_job_service(id).await?;
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(false)
            .follow(false)
            .timestamps(false)
            .build();
        let mut stream = self.docker.service_logs(&name, Some(opts));
        let mut decoder = frame::Decoder::new(id, writable, base_shim::MAX_OUTPUT_COMPRESSED_BYTES);
        while let Some(item) = stream.next().await {
            match item.map_err(|e| SwarmError::docker(format!("reading logs of {name}"), e))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    decoder.feed(&message);
                }
                _ => {}
            }
        }
        Ok(decoder.finish())
    }

    /// Stops the job's task if it may still run, deletes the service, then
    /// the configs of its mounted files (a config in use by a service
    /// cannot be deleted, so the order matters). Idempotent: a missing
    /// service or config is fine.
    ///
    /// The stop is needed on Docker 20.10, which deletes a replicated-job
    /// service without stopping its running task (moby/moby#44312): the
    /// service is first scaled to nothing, which the engine answers by
    /// telling the task to go; see `spec::job_tasks_settled`.
    async fn remove_job(&self, id: &str) -> Result<(), OrchestratorError> {
        let name = spec::job_service_name(id)?;
        // Without a service to read (already deleted: a retry, or a crash
        // half-way) the configs are looked for; a service with no mounts
        // spares that request.
        let mut has_configs = true;
        if let Some(service) = self.find_service(&name).await? {
            spec::check_owner(
                &format!("job service {name}"),
                service.spec.as_ref().and_then(|s| s.labels.as_ref()),
                &self.deployment,
            )?;
            has_configs = service
                .spec
                .as_ref()
                .and_then(|s| s.task_template.as_ref())
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.configs.as_ref())
                .is_some_and(|c| !c.is_empty());
            self.stop_job_tasks(&name, service).await?;
        }
        match self.docker.delete_service(&name).await {
            Ok(()) => {
                tracing::info!(job = id, "removed job service");
                self.watcher.kick.notify_one();
            }
            Err(e) => {
                let e = SwarmError::docker(format!("removing job service {name}"), e);
                if !is_status(&e, 404) {
                    return Err(e.into());
                }
            }
        }
        if has_configs {
            self.remove_job_configs(id).await?;
        }
        // Not an error when it fails: the engine refuses while the task's
        // container is still detaching, and the reaper's prune removes it
        // a moment later.
        if let Err(e) = self.remove_job_network(id).await {
            tracing::debug!(job = id, error = %e, "job network not removed yet; the reaper will");
        }
        Ok(())
    }

    async fn list_jobs(&self, slug: Option<Slug>) -> Result<Vec<JobStatus>, OrchestratorError> {
        Ok(self.job_statuses(slug.as_ref()).await?)
    }

    /// The service logs endpoint with `follow=true`, stdout and stderr
    /// kept apart as the engine frames them. The engine's follow stream of
    /// a job may stay open after its task exited (Docker 20.10 does), so
    /// the stream also ends by itself once the service is gone, or once the
    /// job is terminal and nothing arrived for [`FOLLOW_QUIET`].
    async fn follow_job_logs(&self, id: &str) -> Result<LogStream, OrchestratorError> {
        let name = self.existing_job_service(id).await?;
        let opts = log_options(true);
        let mut check = tokio::time::interval(FOLLOW_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let state = Follow {
            logs: Box::pin(self.docker.service_logs(&name, Some(opts))),
            docker: self.docker.clone(),
            id: id.to_string(),
            name,
            last_output: tokio::time::Instant::now(),
            check,
            check_failures: 0,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, follow_step)))
    }

    /// Read from the nodes on every call (one request), so a GPU worker
    /// that joins, drains or goes down changes what the broker may lease
    /// without a restart; the rule is `nodes::gpu_capacity`.
    async fn prune_job_leftovers(&self) -> Result<usize, OrchestratorError> {
        let mounts = self.prune_job_mounts().await?;
        Ok(mounts + self.prune_job_networks(JOB_NETWORK_GRACE).await?)
    }

    async fn gpu_capacity(&self) -> Result<u32, OrchestratorError> {
        let nodes = self
            .docker
            .list_nodes(None)
            .await
            .map_err(|e| SwarmError::docker("listing swarm nodes", e))?;
        Ok(super::nodes::gpu_capacity(&nodes))
    }
}

/// Both streams of a service's logs, without timestamps.
fn log_options(follow: bool) -> bollard::query_parameters::LogsOptions {
    LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .follow(follow)
        .timestamps(false)
        .build()
}

/// Keeps the last `cap` bytes of a stream.
struct TailBuffer {
    cap: usize,
    buf: Vec<u8>,
    truncated: bool,
}

impl TailBuffer {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: Vec::new(),
            truncated: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Trim in batches (at twice the cap) so the copy is amortised.
        if self.buf.len() > self.cap.saturating_mul(2).max(8192) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
            self.truncated = true;
        }
    }

    /// The kept bytes as (lossy) UTF-8, and whether anything was cut.
    fn finish(mut self) -> (String, bool) {
        self.trim();
        (
            String::from_utf8_lossy(&self.buf).into_owned(),
            self.truncated,
        )
    }
}

/// A follower that has seen the job terminal ends after this long without
/// output: long enough for the engine to deliver the last lines it still
/// holds, short enough that a caller is not left hanging on a stream
/// Docker 20.10 never closes.
const FOLLOW_QUIET: Duration = Duration::from_secs(2);

/// How often a follower looks at its job's state (two small requests).
const FOLLOW_CHECK: Duration = Duration::from_millis(500);

/// Consecutive failed state checks after which a follower gives up with an
/// error (the engine is unreachable, not just slow).
const FOLLOW_MAX_CHECK_FAILURES: u32 = 10;

/// Where a [`SwarmOrchestrator::follow_job_logs`] stream is.
struct Follow {
    /// The engine's follow stream.
    logs: futures::stream::BoxStream<'static, Result<LogOutput, bollard::errors::Error>>,
    /// For the state checks.
    docker: Docker,
    /// The job.
    id: String,
    /// Its service.
    name: String,
    /// When the last bytes arrived (or following began).
    last_output: tokio::time::Instant,
    /// Ticks the state checks.
    check: tokio::time::Interval,
    /// State checks failed in a row.
    check_failures: u32,
    /// Set when nothing more is to be yielded.
    done: bool,
}

/// What woke a follower.
enum FollowEvent {
    /// The engine sent a frame, failed, or ended the stream.
    Output(Option<Result<LogOutput, bollard::errors::Error>>),
    /// Time to look at the job's state.
    Check,
}

/// One step of following: the next chunk of output, or the end.
async fn follow_step(mut f: Follow) -> Option<(Result<LogChunk, OrchestratorError>, Follow)> {
    loop {
        if f.done {
            return None;
        }
        let event = tokio::select! {
            item = f.logs.next() => FollowEvent::Output(item),
            _ = f.check.tick() => FollowEvent::Check,
        };
        match event {
            // The engine closed the stream: all output was delivered.
            FollowEvent::Output(None) => return None,
            FollowEvent::Output(Some(Ok(out))) => {
                let (stream, data) = match out {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        if frame::is_frame(&message) {
                            continue;
                        }
                        (LogStreamKind::Stdout, message)
                    }
                    LogOutput::StdErr { message } => (LogStreamKind::Stderr, message),
                    LogOutput::StdIn { .. } => continue,
                };
                if data.is_empty() {
                    continue;
                }
                f.last_output = tokio::time::Instant::now();
                return Some((Ok(LogChunk { stream, data }), f));
            }
            FollowEvent::Output(Some(Err(e))) => {
                f.done = true;
                // The service was removed under the stream: that is the
                // end of the job's output, not a failure.
                if let Ok(None) = find_service(&f.docker, &f.name).await {
                    return None;
                }
                let e = SwarmError::docker(format!("following the logs of {}", f.name), e);
                return Some((Err(e.into()), f));
            }
            FollowEvent::Check => match job_status_of(&f.docker, &f.id).await {
                Err(OrchestratorError::NotFound(_)) => return None,
                Ok(status) => {
                    f.check_failures = 0;
                    if status.state.is_terminal() && f.last_output.elapsed() >= FOLLOW_QUIET {
                        return None;
                    }
                }
                Err(e) => {
                    f.check_failures += 1;
                    if f.check_failures >= FOLLOW_MAX_CHECK_FAILURES {
                        f.done = true;
                        return Some((Err(e), f));
                    }
                    tracing::debug!(job = %f.id, error = %e, "follower could not read the job's state");
                }
            },
        }
    }
}

/// One refresh of every job's status.
#[derive(Debug, Default)]
struct Snapshot {
    /// Job id → status.
    jobs: HashMap<String, JobStatus>,
    /// Set when the refresh failed (waiters then keep waiting rather than
    /// read "absent" into a failed listing).
    error: Option<String>,
}

/// The single shared watcher of job states: while anyone waits, it
/// refreshes all jobs at once whenever the engine reports a container or
/// service event, and every [`WATCH_FALLBACK`] for tasks on other nodes;
/// when nobody waits it only keeps its event stream drained.
struct JobWatcher {
    docker: Docker,
    state: watch::Sender<Arc<Snapshot>>,
    waiters: AtomicUsize,
    kick: Notify,
}

/// Counts a waiter for as long as it lives.
struct WaitGuard<'a>(&'a JobWatcher);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl JobWatcher {
    fn new(docker: Docker) -> Self {
        Self {
            docker,
            state: watch::Sender::new(Arc::new(Snapshot::default())),
            waiters: AtomicUsize::new(0),
            kick: Notify::new(),
        }
    }

    fn wait_guard(&self) -> WaitGuard<'_> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        self.kick.notify_one();
        WaitGuard(self)
    }

    /// The job events worth a refresh: BASE job containers starting or
    /// dying on this node, and service changes anywhere.
    fn events(
        &self,
    ) -> impl futures::Stream<Item = Result<bollard::models::EventMessage, bollard::errors::Error>> + use<>
    {
        let label = format!("{}={}", spec::LABEL_COMPONENT, spec::COMPONENT_JOB);
        let opts = EventsOptionsBuilder::new()
            .filters(&filters(&[
                ("type", "container"),
                ("type", "service"),
                ("label", &label),
            ]))
            .build();
        self.docker.events(Some(opts))
    }

    async fn refresh(&self) {
        let snapshot = match snapshot_jobs(&self.docker).await {
            Ok(jobs) => Snapshot { jobs, error: None },
            Err(e) => {
                tracing::warn!(error = %e, "job watcher refresh failed");
                Snapshot {
                    jobs: HashMap::new(),
                    error: Some(e.to_string()),
                }
            }
        };
        self.state.send_replace(Arc::new(snapshot));
    }

    async fn run(self: Arc<Self>) {
        let mut events = Box::pin(self.events());
        loop {
            if self.waiters.load(Ordering::SeqCst) > 0 {
                self.refresh().await;
                tokio::select! {
                    _ = self.kick.notified() => {}
                    _ = tokio::time::sleep(WATCH_FALLBACK) => {}
                    ev = events.next() => {
                        if !matches!(ev, Some(Ok(_))) {
                            // The stream ended or broke (engine restart):
                            // reopen it after a pause.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            events = Box::pin(self.events());
                        }
                    }
                }
            } else {
                tokio::select! {
                    _ = self.kick.notified() => {}
                    ev = events.next() => {
                        if !matches!(ev, Some(Ok(_))) {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            events = Box::pin(self.events());
                        }
                    }
                }
            }
        }
    }
}

/// Every BASE job's status in two requests (services, then their tasks).
async fn snapshot_jobs(docker: &Docker) -> Result<HashMap<String, JobStatus>, SwarmError> {
    let label = format!("{}={}", spec::LABEL_COMPONENT, spec::COMPONENT_JOB);
    let opts = ListServicesOptionsBuilder::new()
        .filters(&filters(&[("label", &label)]))
        .build();
    let services = docker
        .list_services(Some(opts))
        .await
        .map_err(|e| SwarmError::docker("listing job services", e))?;
    let ids: Vec<(&str, &str)> = services
        .iter()
        .filter_map(|s| s.id.as_deref())
        .map(|id| ("service", id))
        .collect();
    let tasks = if ids.is_empty() {
        Vec::new()
    } else {
        let opts = ListTasksOptionsBuilder::new()
            .filters(&filters(&ids))
            .build();
        docker
            .list_tasks(Some(opts))
            .await
            .map_err(|e| SwarmError::docker("listing job tasks", e))?
    };
    Ok(services
        .iter()
        .filter_map(|s| {
            let labels = s.spec.as_ref()?.labels.as_ref()?;
            let id = labels.get(spec::LABEL_JOB_ID)?;
            let mine: Vec<Task> = tasks
                .iter()
                .filter(|t| t.service_id.is_some() && t.service_id == s.id)
                .cloned()
                .collect();
            Some((id.clone(), spec::job_status(id, labels, &mine)?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_buffer_keeps_the_last_bytes() {
        let mut t = TailBuffer::new(5);
        t.push(b"abc");
        t.push(b"defgh");
        assert!(!t.truncated, "trimmed lazily");
        let mut big = TailBuffer::new(4);
        for _ in 0..10_000 {
            big.push(b"0123456789");
        }
        assert!(big.buf.len() <= 8192 + 10);
        assert_eq!(big.finish(), ("6789".to_string(), true));
        assert_eq!(t.finish(), ("defgh".to_string(), true));
        let mut small = TailBuffer::new(100);
        small.push(b"short");
        assert_eq!(small.finish(), ("short".to_string(), false));
    }
}
