//! The installer's executor: observes a Docker engine into an
//! [`Observed`](super::Observed) and applies [`Step`](super::Step)s through
//! the Engine API (bollard). Every object it creates carries
//! [`LABEL_DEPLOYMENT`](super::LABEL_DEPLOYMENT). Secret values are read or
//! generated here, go into the request body only, and are returned to the
//! caller only when generated (to be shown once or written to a 0600 file).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use base64::Engine as _;
use bollard::Docker;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum,
    Mount, MountType, NetworkAttachmentConfig, NetworkCreateRequest, SecretSpec, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum, SwarmInitRequest, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
    TaskSpecPlacement, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    ListNetworksOptionsBuilder, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder, UpdateServiceOptionsBuilder,
};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use super::{
    InstallError, InstallOptions, LABEL_CONTROL, LABEL_DEPLOYMENT, LABEL_OPTIONS, Observed,
    ObservedService, Removal, SecretKind, SecretPlan, SecretSource, ServicePlan, Step, SwarmState,
    object_name,
};
use crate::orchestrator::swarm::{LABEL_SPEC_SHA256, OVERLAY_MTU};

/// A secret the executor generated: its value is shown once or written to
/// the operator's file, never logged.
pub struct Generated {
    /// The Docker secret's name.
    pub name: String,
    /// The setting it backs (`BASE_ADMIN_TOKEN`, …).
    pub setting: &'static str,
    /// The value.
    pub value: SecretString,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Generated({}, [redacted])", self.name)
    }
}

/// A deployment's service as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServiceStatus {
    /// The service name.
    pub name: String,
    /// Present on the engine.
    pub present: bool,
    /// Its image.
    pub image: Option<String>,
    /// Running tasks / desired (1).
    pub running: usize,
    /// The engine's update state (`completed`, `rollback_completed`, …).
    pub update_state: Option<String>,
    /// Whether its spec differs from the plan of the recorded options.
    pub drifted: bool,
}

/// The Docker engine, for the installer.
pub struct Engine {
    /// Version-negotiated client.
    docker: Docker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(local Docker engine)")
    }
}

/// Flattens a bollard error with what was being done.
fn docker_err(context: impl Into<String>, e: bollard::errors::Error) -> InstallError {
    let message = match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    InstallError::Docker {
        context: context.into(),
        message,
    }
}

/// Whether a bollard error is the engine's 404.
fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// 32 random bytes, URL-safe base64 (no padding).
fn random_value() -> SecretString {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The labels of every object of `deployment`.
fn labels(deployment: &str, part: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_DEPLOYMENT.to_string(), deployment.to_string()),
        (LABEL_CONTROL.to_string(), part.to_string()),
    ])
}

/// The Swarm spec of a planned service. `secret_ids` maps secret names to
/// ids; `options` is recorded on the master.
pub fn service_spec(
    deployment: &str,
    s: &ServicePlan,
    secret_ids: &HashMap<String, String>,
    options: Option<&str>,
) -> Result<ServiceSpec, InstallError> {
    let mut secrets = Vec::new();
    for m in &s.secrets {
        let id = secret_ids.get(&m.secret).ok_or_else(|| {
            InstallError::State(format!(
                "secret {} of service {} does not exist",
                m.secret, s.name
            ))
        })?;
        secrets.push(TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(m.file.clone()),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(0o400),
            }),
            secret_id: Some(id.clone()),
            secret_name: Some(m.secret.clone()),
        });
    }
    let mut mounts = Vec::new();
    if s.docker_socket {
        mounts.push(Mount {
            target: Some(super::DOCKER_SOCKET.into()),
            source: Some(super::DOCKER_SOCKET.into()),
            typ: Some(MountType::BIND),
            ..Default::default()
        });
    }
    for (vol, target) in &s.volumes {
        mounts.push(Mount {
            target: Some(target.clone()),
            source: Some(vol.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        });
    }
    let mut service_labels = labels(deployment, s.role);
    service_labels.insert(LABEL_SPEC_SHA256.into(), s.spec_sha256());
    if let Some(o) = options {
        service_labels.insert(LABEL_OPTIONS.into(), o.to_string());
    }
    let container = TaskSpecContainerSpec {
        image: Some(s.image.clone()),
        args: (!s.args.is_empty()).then(|| s.args.clone()),
        env: Some(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels(deployment, s.role)),
        mounts: Some(mounts),
        secrets: Some(secrets),
        stop_grace_period: Some(10_000_000_000),
        ..Default::default()
    };
    let update = ServiceSpecUpdateConfig {
        parallelism: Some(1),
        // stop-first: a host-mode published port cannot be bound by two
        // tasks, and a database must not have two writers.
        order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
        failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
        monitor: Some(15_000_000_000),
        max_failure_ratio: Some(0.0),
        ..Default::default()
    };
    Ok(ServiceSpec {
        name: Some(s.name.clone()),
        labels: Some(service_labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(5_000_000_000),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec!["node.role==manager".into()]),
                ..Default::default()
            }),
            networks: Some(
                s.networks
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: Some(n.clone()),
                        aliases: Some(vec![s.name.clone()]),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        update_config: Some(update),
        rollback_config: Some(ServiceSpecRollbackConfig {
            parallelism: Some(1),
            order: Some(ServiceSpecRollbackConfigOrderEnum::STOP_FIRST),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            ..Default::default()
        }),
        // DNS round-robin and host-mode ports: neither needs the kernel's
        // IPVS (which the routing mesh and VIPs do, and which not every
        // host has, see docs/swarm.md). The master is pinned to the
        // manager, so its port is the manager's.
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(
                s.ports
                    .iter()
                    .map(|(published, target)| EndpointPortConfig {
                        protocol: Some(bollard::models::EndpointPortConfigProtocolEnum::TCP),
                        published_port: Some(i64::from(*published)),
                        target_port: Some(i64::from(*target)),
                        publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    })
}

impl Engine {
    /// Connects the usual way (`DOCKER_HOST`, else the local socket).
    pub async fn connect() -> Result<Self, InstallError> {
        let docker =
            Docker::connect_with_defaults().map_err(|e| docker_err("connecting to Docker", e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| docker_err("agreeing on a Docker API version", e))?;
        Ok(Self { docker })
    }

    /// What the engine has, by name (the plan picks out its own objects).
    pub async fn observe(&self) -> Result<Observed, InstallError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| docker_err("reading the engine's info", e))?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm
            .local_node_state
            .map(|s| s.to_string())
            .unwrap_or_default();
        let swarm = match (state.as_str(), swarm.control_available) {
            ("inactive" | "", _) => SwarmState::Inactive,
            ("active", Some(true)) => SwarmState::Manager,
            _ => SwarmState::NotManager,
        };
        let mut o = Observed::empty_manager();
        o.swarm = swarm;
        if swarm != SwarmState::Manager {
            return Ok(o);
        }
        let nets = self
            .docker
            .list_networks(Some(ListNetworksOptionsBuilder::new().build()))
            .await
            .map_err(|e| docker_err("listing networks", e))?;
        o.networks = nets.into_iter().filter_map(|n| n.name).collect();
        let vols = self
            .docker
            .list_volumes(Some(ListVolumesOptionsBuilder::new().build()))
            .await
            .map_err(|e| docker_err("listing volumes", e))?;
        o.volumes = vols
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        o.secrets = self.secret_ids().await?.into_keys().collect();
        let services = self
            .docker
            .list_services(Some(ListServicesOptionsBuilder::new().build()))
            .await
            .map_err(|e| docker_err("listing services", e))?;
        for s in services {
            let spec = s.spec.unwrap_or_default();
            let Some(name) = spec.name else { continue };
            let l = spec.labels.unwrap_or_default();
            o.services.insert(
                name,
                ObservedService {
                    spec_sha256: l.get(LABEL_SPEC_SHA256).cloned(),
                    deployment: l.get(LABEL_DEPLOYMENT).cloned(),
                },
            );
        }
        Ok(o)
    }

    /// Every secret's id by name.
    async fn secret_ids(&self) -> Result<HashMap<String, String>, InstallError> {
        let secrets = self
            .docker
            .list_secrets(Some(ListSecretsOptionsBuilder::new().build()))
            .await
            .map_err(|e| docker_err("listing secrets", e))?;
        Ok(secrets
            .into_iter()
            .filter_map(|s| Some((s.spec?.name?, s.id?)))
            .collect())
    }

    /// Applies `steps` in order. Returns the generated secret values. On a
    /// failure, the error names the step and how many are left; what was
    /// applied stays, so a second run resumes.
    pub async fn apply(
        &self,
        opts: &InstallOptions,
        steps: &[Step],
    ) -> Result<Vec<Generated>, InstallError> {
        let mut generated: Vec<Generated> = Vec::new();
        let options_json = serde_json::to_string(opts)
            .map_err(|e| InstallError::State(format!("serializing the options: {e}")))?;
        for (i, step) in steps.iter().enumerate() {
            let r = self
                .apply_one(opts, step, &mut generated, &options_json)
                .await;
            if let Err(e) = r {
                return Err(InstallError::Step {
                    step: step.to_string(),
                    done: i,
                    left: steps.len() - i,
                    source: Box::new(e),
                });
            }
        }
        Ok(generated)
    }

    /// One step.
    async fn apply_one(
        &self,
        opts: &InstallOptions,
        step: &Step,
        generated: &mut Vec<Generated>,
        options_json: &str,
    ) -> Result<(), InstallError> {
        let d = &opts.deployment;
        match step {
            Step::InitSwarm { advertise_addr } => {
                let req = SwarmInitRequest {
                    listen_addr: Some("0.0.0.0:2377".into()),
                    advertise_addr: advertise_addr.clone(),
                    ..Default::default()
                };
                self.docker
                    .init_swarm(req)
                    .await
                    .map_err(|e| docker_err("initialising the swarm", e))?;
            }
            Step::CreateNetwork(n) => {
                let mut l = labels(d, "network");
                if n.shared {
                    // The shared overlay outlives any one deployment.
                    l.remove(LABEL_DEPLOYMENT);
                    l.insert(
                        crate::orchestrator::swarm::LABEL_COMPONENT.into(),
                        "network".into(),
                    );
                }
                let req = NetworkCreateRequest {
                    name: n.name.clone(),
                    driver: Some("overlay".into()),
                    scope: Some("swarm".into()),
                    internal: Some(false),
                    attachable: Some(true),
                    options: Some(HashMap::from([
                        ("encrypted".to_string(), String::new()),
                        (
                            "com.docker.network.driver.mtu".to_string(),
                            OVERLAY_MTU.to_string(),
                        ),
                    ])),
                    labels: Some(l),
                    ..Default::default()
                };
                self.docker
                    .create_network(req)
                    .await
                    .map_err(|e| docker_err(format!("creating network {}", n.name), e))?;
            }
            Step::CreateVolume(v) => {
                let req = VolumeCreateRequest {
                    name: Some(v.clone()),
                    driver: Some("local".into()),
                    labels: Some(labels(d, "data")),
                    ..Default::default()
                };
                self.docker
                    .create_volume(req)
                    .await
                    .map_err(|e| docker_err(format!("creating volume {v}"), e))?;
            }
            Step::CreateSecret(s) => {
                let value = self.secret_value(opts, s, generated)?;
                let spec = SecretSpec {
                    name: Some(s.name.clone()),
                    labels: Some(labels(d, "secret")),
                    data: Some(
                        base64::engine::general_purpose::STANDARD.encode(value.expose_secret()),
                    ),
                    ..Default::default()
                };
                self.docker
                    .create_secret(spec)
                    .await
                    .map_err(|e| docker_err(format!("creating secret {}", s.name), e))?;
            }
            Step::CreateService(s) => {
                let ids = self.secret_ids().await?;
                let options = (s.role == "master").then_some(options_json);
                let spec = service_spec(d, s, &ids, options)?;
                self.docker
                    .create_service(spec, None)
                    .await
                    .map_err(|e| docker_err(format!("creating service {}", s.name), e))?;
            }
            Step::UpdateService(s) => {
                let ids = self.secret_ids().await?;
                let options = (s.role == "master").then_some(options_json);
                let spec = service_spec(d, s, &ids, options)?;
                let current = self
                    .docker
                    .inspect_service(&s.name, None)
                    .await
                    .map_err(|e| docker_err(format!("inspecting service {}", s.name), e))?;
                let index = current.version.and_then(|v| v.index).unwrap_or(0);
                let version = i32::try_from(index).map_err(|_| {
                    InstallError::State(format!("service {} version out of range", s.name))
                })?;
                self.docker
                    .update_service(
                        &s.name,
                        spec,
                        UpdateServiceOptionsBuilder::new().version(version).build(),
                        None,
                    )
                    .await
                    .map_err(|e| docker_err(format!("updating service {}", s.name), e))?;
            }
        }
        Ok(())
    }

    /// The value of a secret to create: read from its file, generated, or
    /// (the database URL of a deployed PostgreSQL) built from the password
    /// generated in the same run.
    fn secret_value(
        &self,
        opts: &InstallOptions,
        s: &SecretPlan,
        generated: &mut Vec<Generated>,
    ) -> Result<SecretString, InstallError> {
        match &s.source {
            SecretSource::File(p) => {
                let raw = std::fs::read_to_string(p).map_err(|source| InstallError::File {
                    what: "reading",
                    path: p.clone(),
                    source,
                })?;
                let v = raw.trim();
                if v.is_empty() {
                    return Err(InstallError::Option(format!(
                        "{} is empty (expected the value of {})",
                        p.display(),
                        s.kind.setting()
                    )));
                }
                Ok(SecretString::from(v.to_string()))
            }
            SecretSource::Generated => {
                let value = random_value();
                generated.push(Generated {
                    name: s.name.clone(),
                    setting: s.kind.setting(),
                    value: value.clone(),
                });
                Ok(value)
            }
            SecretSource::PostgresUrl => {
                let pw_name = object_name(&opts.deployment, SecretKind::PostgresPassword.suffix());
                let pw = generated.iter().find(|g| g.name == pw_name).ok_or_else(|| {
                    InstallError::State(format!(
                        "the database URL needs the password {pw_name} generated in the same run"
                    ))
                })?;
                // The generated password is URL-safe base64: no escaping needed.
                Ok(SecretString::from(format!(
                    "postgres://base:{}@{}:{}/base",
                    pw.value.expose_secret(),
                    object_name(&opts.deployment, "postgres"),
                    super::POSTGRES_PORT
                )))
            }
        }
    }

    /// The install options recorded on `<deployment>-master`.
    pub async fn recorded_options(&self, deployment: &str) -> Result<InstallOptions, InstallError> {
        let name = object_name(deployment, "master");
        let s = self
            .docker
            .inspect_service(&name, None)
            .await
            .map_err(|e| {
                if is_404(&e) {
                    InstallError::State(format!(
                        "deployment {deployment} is not installed (no service {name})"
                    ))
                } else {
                    docker_err(format!("inspecting service {name}"), e)
                }
            })?;
        let raw = s
            .spec
            .and_then(|s| s.labels)
            .and_then(|mut l| l.remove(LABEL_OPTIONS))
            .ok_or_else(|| {
                InstallError::State(format!("service {name} has no {LABEL_OPTIONS} label"))
            })?;
        serde_json::from_str(&raw)
            .map_err(|e| InstallError::State(format!("{LABEL_OPTIONS} on {name}: {e}")))
    }

    /// The deployment's services: presence, image, running tasks, update
    /// state and drift from the plan of the recorded options.
    pub async fn status(&self, opts: &InstallOptions) -> Result<Vec<ServiceStatus>, InstallError> {
        let want = super::desired(opts)?;
        let mut out = Vec::new();
        for s in &want.services {
            let svc = match self.docker.inspect_service(&s.name, None).await {
                Ok(svc) => svc,
                Err(e) if is_404(&e) => {
                    out.push(ServiceStatus {
                        name: s.name.clone(),
                        present: false,
                        image: None,
                        running: 0,
                        update_state: None,
                        drifted: true,
                    });
                    continue;
                }
                Err(e) => return Err(docker_err(format!("inspecting service {}", s.name), e)),
            };
            let spec = svc.spec.clone().unwrap_or_default();
            let image = spec
                .task_template
                .as_ref()
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone());
            let hash = spec
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SPEC_SHA256).cloned());
            let tasks = self
                .docker
                .list_tasks(Some(
                    bollard::query_parameters::ListTasksOptionsBuilder::new()
                        .filters(&HashMap::from([(
                            "service".to_string(),
                            vec![s.name.clone()],
                        )]))
                        .build(),
                ))
                .await
                .map_err(|e| docker_err(format!("listing tasks of {}", s.name), e))?;
            let running = tasks
                .iter()
                .filter(|t| {
                    t.status.as_ref().and_then(|st| st.state)
                        == Some(bollard::models::TaskState::RUNNING)
                })
                .count();
            out.push(ServiceStatus {
                name: s.name.clone(),
                present: true,
                image,
                running,
                update_state: svc
                    .update_status
                    .and_then(|u| u.state)
                    .map(|s| s.to_string()),
                drifted: hash.as_deref() != Some(s.spec_sha256().as_str()),
            });
        }
        Ok(out)
    }

    /// Waits until the update of `service` settles: `Ok` when it completed,
    /// [`InstallError::Rollout`] when the engine rolled it back or paused.
    pub async fn wait_rollout(&self, service: &str, limit: Duration) -> Result<(), InstallError> {
        let start = std::time::Instant::now();
        loop {
            let svc = self
                .docker
                .inspect_service(service, None)
                .await
                .map_err(|e| docker_err(format!("inspecting service {service}"), e))?;
            let status = svc.update_status.unwrap_or_default();
            match status.state {
                // No update status: the spec was not changed by an update.
                None | Some(ServiceUpdateStatusStateEnum::COMPLETED) => return Ok(()),
                Some(
                    s @ (ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED
                    | ServiceUpdateStatusStateEnum::PAUSED
                    | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED),
                ) => {
                    return Err(InstallError::Rollout {
                        service: service.to_string(),
                        state: s.to_string(),
                        message: status.message,
                    });
                }
                _ => {}
            }
            if start.elapsed() > limit {
                return Err(InstallError::Rollout {
                    service: service.to_string(),
                    state: "still updating".into(),
                    message: Some(format!("gave up waiting after {} s", limit.as_secs())),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Removes what `removal` lists, services first. A missing object is
    /// already removed. Volumes are removed once the containers released
    /// them (retried for up to a minute).
    pub async fn remove(&self, r: &Removal) -> Result<(), InstallError> {
        for s in &r.services {
            match self.docker.delete_service(s).await {
                Ok(()) => {}
                Err(e) if is_404(&e) => {}
                Err(e) => return Err(docker_err(format!("removing service {s}"), e)),
            }
        }
        // The services' tasks must be gone before their secrets, volumes
        // and networks can be.
        self.wait_services_gone(&r.services).await?;
        for s in &r.secrets {
            self.retry_remove(format!("removing secret {s}"), || {
                self.docker.delete_secret(s)
            })
            .await?;
        }
        for v in &r.volumes {
            self.retry_remove(format!("removing volume {v}"), || {
                self.docker
                    .remove_volume(v, Some(RemoveVolumeOptionsBuilder::new().build()))
            })
            .await?;
        }
        for n in &r.networks {
            self.retry_remove(format!("removing network {n}"), || {
                self.docker.remove_network(n)
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until no container of the named services remains.
    async fn wait_services_gone(&self, services: &[String]) -> Result<(), InstallError> {
        let wanted: BTreeSet<&str> = services.iter().map(String::as_str).collect();
        for _ in 0..60 {
            let containers = self
                .docker
                .list_containers(Some(
                    bollard::query_parameters::ListContainersOptionsBuilder::new()
                        .all(true)
                        .build(),
                ))
                .await
                .map_err(|e| docker_err("listing containers", e))?;
            let left = containers.iter().any(|c| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get("com.docker.swarm.service.name"))
                    .is_some_and(|n| wanted.contains(n.as_str()))
            });
            if !left {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// Runs a removal until it succeeds or 404s, retrying "in use" for a
    /// minute (the engine releases a removed service's objects lazily).
    async fn retry_remove<F, Fut>(&self, what: String, f: F) -> Result<(), InstallError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), bollard::errors::Error>>,
    {
        let mut last = None;
        for _ in 0..60 {
            match f().await {
                Ok(()) => return Ok(()),
                Err(e) if is_404(&e) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match last {
            Some(e) => Err(docker_err(what, e)),
            None => Ok(()),
        }
    }
}

/// Writes the generated secrets to `path`, created with mode 0600 (and
/// refused if it exists, so a value is never overwritten or lost).
pub fn write_generated(
    path: &std::path::Path,
    generated: &[Generated],
) -> Result<(), InstallError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| InstallError::File {
            what: "writing",
            path: path.to_path_buf(),
            source,
        })?;
    let mut body = String::new();
    for g in generated {
        body.push_str(&format!("{}={}\n", g.setting, g.value.expose_secret()));
    }
    f.write_all(body.as_bytes())
        .map_err(|source| InstallError::File {
            what: "writing",
            path: path.to_path_buf(),
            source,
        })
}

/// The generated values as `SETTING=value` lines, for showing once.
pub fn render_generated(generated: &[Generated]) -> BTreeMap<String, String> {
    generated
        .iter()
        .map(|g| (g.name.clone(), g.value.expose_secret().to_string()))
        .collect()
}
