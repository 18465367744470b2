//! Swarm nodes: what an operator needs to enrol, label, drain and remove
//! the worker machines that run evaluation jobs.
//!
//! Jobs are placed with the constraint `node.labels.base.workload==cpu|gpu`
//! (CONTRACTS.md naming rules) and GPU jobs reserve the `NVIDIA-GPU`
//! generic resource, so a worker is only useful once it has joined the
//! swarm, carries the right label and (for GPUs) advertises its devices.
//! This module is the Engine-API side of `base master worker …`: it talks
//! to the local Docker engine (which must be a swarm manager) through
//! bollard and hands back BASE's own types ([`NodeInfo`], [`JoinInfo`]);
//! bollard's types stay in here. The mapping from Docker's answers to those
//! types is made of pure functions so it is unit-tested without an engine.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use bollard::Docker;
use bollard::models::{
    GenericResourcesInner, Node, NodeDescription, NodeSpec, NodeSpecAvailabilityEnum,
    NodeSpecRoleEnum, NodeState as DockerNodeState, SystemInfo,
};
use bollard::query_parameters::{
    DeleteNodeOptionsBuilder, UpdateNodeOptionsBuilder, UpdateSwarmOptionsBuilder,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The node label that says which kind of job a worker takes
/// (`node.labels.base.workload==cpu|gpu` in placement constraints).
pub const WORKLOAD_LABEL: &str = "base.workload";

/// The generic resource kind a GPU worker advertises once per device
/// (`node-generic-resources` in its daemon.json) and GPU jobs reserve.
pub const GPU_RESOURCE_KIND: &str = "NVIDIA-GPU";

/// The port managers listen on for swarm joins and cluster management.
pub const SWARM_MANAGEMENT_PORT: u16 = 2377;

/// How many times a node update is retried when another client changed the
/// node between our read and our write (Docker's optimistic concurrency).
const UPDATE_ATTEMPTS: usize = 3;

/// A type-erased engine failure, so that bollard's error type does not
/// become part of this module's public API.
type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why a node operation failed. Each variant says what the operator can do
/// about it; the engine's own message is kept where it helps.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Docker engine could not be reached at all.
    #[error(
        "cannot reach the Docker engine (is dockerd running, is DOCKER_HOST right, and may this user use the Docker socket?): {source}"
    )]
    Unreachable {
        /// The connection failure.
        #[source]
        source: Source,
    },
    /// The engine answered, but it is not a manager of an active swarm, so
    /// it cannot see or change nodes.
    #[error(
        "this engine is not a swarm manager ({detail}); run `base master worker …` on a manager node, or `docker swarm init` to make this engine one"
    )]
    NotManager {
        /// The swarm state or the engine's message.
        detail: String,
    },
    /// No node has this id, id prefix or hostname.
    #[error(
        "no swarm node '{0}' (give a node id, an unambiguous id prefix, or a hostname; see `base master worker list`)"
    )]
    NodeNotFound(String),
    /// The engine refused a request.
    #[error("Docker refused to {action}: {message} (HTTP {status})")]
    Refused {
        /// What was being done.
        action: &'static str,
        /// The HTTP status the engine answered.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// Talking to the engine failed in the middle of a request.
    #[error("cannot {action}: {source}")]
    Engine {
        /// What was being done.
        action: &'static str,
        /// The failure.
        #[source]
        source: Source,
    },
    /// The engine's answer lacks something it always carries on a healthy
    /// swarm (a node id, an object version, a join token).
    #[error("the Docker engine's answer has no {0}")]
    Incomplete(&'static str),
    /// No address of a manager could be found to join.
    #[error(
        "cannot tell which address workers should join: the swarm reports no manager address (re-init with `docker swarm init --advertise-addr <IP>`)"
    )]
    NoManagerAddr,
    /// Another client kept changing the node while we tried to update it.
    #[error("node '{0}' kept changing while it was being updated; try again")]
    Conflict(String),
}

/// What kind of evaluation job a worker takes: the value of its
/// `base.workload` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// CPU-only jobs.
    Cpu,
    /// GPU jobs (the node must advertise `NVIDIA-GPU` resources).
    Gpu,
}

impl Workload {
    /// The label value (`cpu`, `gpu`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A label value that is not a workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a workload (expected cpu or gpu)")]
pub struct InvalidWorkload(pub String);

impl FromStr for Workload {
    type Err = InvalidWorkload;

    /// Accepts `cpu` and `gpu` in any case, surrounding blanks ignored: a
    /// label typed by hand as `GPU` still means GPU.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            _ => Err(InvalidWorkload(s.to_string())),
        }
    }
}

/// Whether the scheduler may place tasks on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be scheduled here.
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// No new tasks, and running ones are moved elsewhere.
    Drain,
}

impl Availability {
    /// Docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Pause => "pause",
            Self::Drain => "drain",
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's role in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs the raft store and the control plane (BASE's master).
    Manager,
    /// Only runs tasks.
    Worker,
}

impl NodeRole {
    /// Docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manager => "manager",
            Self::Worker => "worker",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the managers can currently talk to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Reachable and taking tasks.
    Ready,
    /// Gone (stopped, or left the swarm); `rm` removes it for good.
    Down,
    /// Lost contact; tasks may be rescheduled.
    Disconnected,
    /// Docker did not say.
    Unknown,
}

impl NodeState {
    /// Docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Down => "down",
            Self::Disconnected => "disconnected",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One swarm node as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Swarm node id (what `drain`, `rm` and `label` accept, as does the hostname).
    pub id: String,
    /// The machine's hostname.
    pub hostname: String,
    /// Manager or worker.
    pub role: NodeRole,
    /// Whether the raft leader is this node (managers only).
    pub leader: bool,
    /// Whether new tasks may be placed here.
    pub availability: Availability,
    /// Whether the managers can reach it.
    pub state: NodeState,
    /// The address the node talks from, as the managers see it.
    pub addr: Option<String>,
    /// The `base.workload` label, when it holds `cpu` or `gpu`; `None`
    /// means no BASE job will be placed here (see `labels` for the raw value).
    pub workload: Option<Workload>,
    /// GPUs advertised as `NVIDIA-GPU` generic resources (what GPU jobs can
    /// reserve here).
    pub gpus: u32,
    /// The Docker engine version on the node.
    pub engine_version: Option<String>,
    /// Every node label, `base.workload` included.
    pub labels: BTreeMap<String, String>,
}

/// What a machine needs to join the swarm as a worker.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    /// The join token: anyone holding it can add a machine to the swarm.
    /// `SecretString` keeps it out of `Debug` and logs.
    pub token: SecretString,
    /// `host:port` of a manager, port 2377 unless the swarm says otherwise.
    pub manager_addr: String,
}

impl JoinInfo {
    /// `docker swarm join --token <TOKEN> <MANAGER_ADDR>`: the command to run
    /// on the new machine. It contains the token, hence the `SecretString`;
    /// expose it only to print it where the operator asked for it.
    pub fn join_command(&self) -> SecretString {
        SecretString::from(join_command(self.token.expose_secret(), &self.manager_addr))
    }
}

/// The join command for a token and a manager address (`:2377` added when
/// the address has no port).
fn join_command(token: &str, manager_addr: &str) -> String {
    format!(
        "docker swarm join --token {token} {}",
        with_management_port(manager_addr)
    )
}

/// `addr` with the swarm management port when it has none. Handles bare
/// IPv6 addresses (`fd00::1` → `[fd00::1]:2377`).
fn with_management_port(addr: &str) -> String {
    let addr = addr.trim();
    if addr.starts_with('[') {
        // `[v6]` or `[v6]:port`.
        return if addr.contains("]:") {
            addr.to_string()
        } else {
            format!("{addr}:{SWARM_MANAGEMENT_PORT}")
        };
    }
    match addr.matches(':').count() {
        0 => format!("{addr}:{SWARM_MANAGEMENT_PORT}"),
        1 => addr.to_string(),
        _ => format!("[{addr}]:{SWARM_MANAGEMENT_PORT}"),
    }
}

/// The workload a label set names: `Ok(None)` without the label, an error
/// when the label holds something else.
pub fn workload_from_labels(
    labels: &BTreeMap<String, String>,
) -> Result<Option<Workload>, InvalidWorkload> {
    labels.get(WORKLOAD_LABEL).map(|v| v.parse()).transpose()
}

/// The GPUs a node advertises: the sum over its `NVIDIA-GPU` generic
/// resources, a discrete resource counting its value and a named one (a GPU
/// UUID, as the daemon.json of a GPU worker lists them) counting 1.
fn gpu_count(description: Option<&NodeDescription>) -> u32 {
    let resources = description
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.generic_resources.as_deref())
        .unwrap_or_default();
    resources.iter().map(gpus_in).fold(0, u32::saturating_add)
}

fn gpus_in(r: &GenericResourcesInner) -> u32 {
    let is_gpu = |kind: &Option<String>| kind.as_deref() == Some(GPU_RESOURCE_KIND);
    let discrete = r
        .discrete_resource_spec
        .as_ref()
        .filter(|d| is_gpu(&d.kind))
        .map_or(0, |d| {
            u32::try_from(d.value.unwrap_or(0).max(0)).unwrap_or(u32::MAX)
        });
    let named = r
        .named_resource_spec
        .as_ref()
        .filter(|n| is_gpu(&n.kind))
        .map_or(0, |_| 1);
    discrete.saturating_add(named)
}

/// How many GPUs jobs can use across the cluster: the sum of the
/// `NVIDIA-GPU` generic resources (discrete values, and one per named
/// resource) of the nodes a GPU job can be placed on right now — `ready`,
/// availability `active` (Docker's default when unset) and labelled
/// `base.workload=gpu`.
///
/// A drained, paused, down or CPU-labelled node is left out even if it
/// advertises GPUs: the broker's lease ledger must not promise a GPU the
/// scheduler cannot place a job on, or the job would wait as "no suitable
/// node" while holding its lease. The label is compared case-insensitively
/// because Swarm's constraint matching is (`base.workload==gpu` places
/// jobs on a node labelled `GPU`).
pub(crate) fn gpu_capacity(nodes: &[Node]) -> u32 {
    nodes
        .iter()
        .filter(|n| takes_gpu_jobs(n))
        .map(|n| gpu_count(n.description.as_ref()))
        .fold(0, u32::saturating_add)
}

/// Whether the scheduler may place a GPU job on `node` now.
fn takes_gpu_jobs(node: &Node) -> bool {
    let ready = node.status.as_ref().and_then(|s| s.state) == Some(DockerNodeState::READY);
    let spec = node.spec.as_ref();
    let active = matches!(
        spec.and_then(|s| s.availability),
        None | Some(NodeSpecAvailabilityEnum::ACTIVE | NodeSpecAvailabilityEnum::EMPTY)
    );
    let gpu_label = spec
        .and_then(|s| s.labels.as_ref())
        .and_then(|l| l.get(WORKLOAD_LABEL))
        .is_some_and(|v| v.eq_ignore_ascii_case(Workload::Gpu.as_str()));
    ready && active && gpu_label
}

/// BASE's view of a Docker node.
fn node_info(node: Node) -> Result<NodeInfo, NodeError> {
    let id = node.id.ok_or(NodeError::Incomplete("node id"))?;
    let spec = node.spec.unwrap_or_default();
    let labels: BTreeMap<String, String> = spec.labels.unwrap_or_default().into_iter().collect();
    let hostname = node
        .description
        .as_ref()
        .and_then(|d| d.hostname.clone())
        .or(spec.name)
        .unwrap_or_default();
    let role = match spec.role {
        Some(NodeSpecRoleEnum::MANAGER) => NodeRole::Manager,
        Some(NodeSpecRoleEnum::WORKER) => NodeRole::Worker,
        // Unset: a manager still reports its manager status.
        _ if node.manager_status.is_some() => NodeRole::Manager,
        _ => NodeRole::Worker,
    };
    let availability = match spec.availability {
        Some(NodeSpecAvailabilityEnum::PAUSE) => Availability::Pause,
        Some(NodeSpecAvailabilityEnum::DRAIN) => Availability::Drain,
        // Docker's default when unset is active.
        _ => Availability::Active,
    };
    let status = node.status.unwrap_or_default();
    let state = match status.state {
        Some(DockerNodeState::READY) => NodeState::Ready,
        Some(DockerNodeState::DOWN) => NodeState::Down,
        Some(DockerNodeState::DISCONNECTED) => NodeState::Disconnected,
        _ => NodeState::Unknown,
    };
    Ok(NodeInfo {
        id,
        hostname,
        role,
        leader: node
            .manager_status
            .as_ref()
            .and_then(|m| m.leader)
            .unwrap_or(false),
        availability,
        state,
        addr: status.addr.filter(|a| !a.is_empty()),
        // A label with another value is shown raw in `labels`; it places
        // no BASE job, exactly like no label.
        workload: workload_from_labels(&labels).ok().flatten(),
        gpus: gpu_count(node.description.as_ref()),
        engine_version: node
            .description
            .and_then(|d| d.engine)
            .and_then(|e| e.engine_version),
        labels,
    })
}

/// `spec` with `base.workload` set to `workload`, every other field and
/// label kept.
fn spec_with_workload(mut spec: NodeSpec, workload: Workload) -> NodeSpec {
    spec.labels
        .get_or_insert_with(HashMap::new)
        .insert(WORKLOAD_LABEL.to_string(), workload.as_str().to_string());
    spec
}

/// `spec` with the given availability, everything else kept.
fn spec_with_availability(mut spec: NodeSpec, availability: Availability) -> NodeSpec {
    spec.availability = Some(match availability {
        Availability::Active => NodeSpecAvailabilityEnum::ACTIVE,
        Availability::Pause => NodeSpecAvailabilityEnum::PAUSE,
        Availability::Drain => NodeSpecAvailabilityEnum::DRAIN,
    });
    spec
}

/// The address workers should join, from `docker info`: this node's
/// manager address when it is a manager, otherwise a remote manager's,
/// otherwise this node's own address.
fn manager_addr_from_info(info: &SystemInfo, local_manager_addr: Option<String>) -> Option<String> {
    let swarm = info.swarm.as_ref()?;
    let non_empty = |a: &Option<String>| a.clone().filter(|a| !a.trim().is_empty());
    local_manager_addr
        .filter(|a| !a.trim().is_empty())
        .or_else(|| {
            let managers = swarm.remote_managers.as_deref().unwrap_or_default();
            managers
                .iter()
                .find(|m| m.node_id.is_some() && m.node_id == swarm.node_id)
                .or_else(|| managers.first())
                .and_then(|m| non_empty(&m.addr))
        })
        .or_else(|| non_empty(&swarm.node_addr))
        .map(|a| with_management_port(&a))
}

/// Whether a bollard error means the engine was never reached.
fn is_unreachable(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::SocketNotFoundError(_)
            | E::IOError { .. }
            | E::HyperLegacyError { .. }
            | E::RequestTimeoutError
            | E::UnsupportedURISchemeError { .. }
    )
}

/// Whether the engine's message says it cannot manage the swarm.
fn says_not_manager(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not a swarm manager") || m.contains("not part of a swarm")
}

/// Classifies a bollard error. `node` names the node asked about, so that a
/// 404 becomes [`NodeError::NodeNotFound`].
fn classify(action: &'static str, node: Option<&str>, e: bollard::errors::Error) -> NodeError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            if says_not_manager(&message) {
                NodeError::NotManager { detail: message }
            } else if let (404, Some(node)) = (status_code, node) {
                NodeError::NodeNotFound(node.to_string())
            } else {
                NodeError::Refused {
                    action,
                    status: status_code,
                    message,
                }
            }
        }
        e if is_unreachable(&e) => NodeError::Unreachable {
            source: Box::new(e),
        },
        e => NodeError::Engine {
            action,
            source: Box::new(e),
        },
    }
}

/// Whether an update failed only because the node changed since we read it.
fn is_out_of_sequence(e: &NodeError) -> bool {
    matches!(e, NodeError::Refused { message, .. } if message.contains("out of sequence"))
}

/// The swarm nodes of the local Docker engine, which must be a manager.
pub struct Nodes {
    docker: Docker,
}

impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nodes(local Docker engine)")
    }
}

impl Nodes {
    /// Connects to the engine the usual way (`DOCKER_HOST`, else the local
    /// socket) and agrees on an API version, which is also the check that
    /// the engine answers.
    pub async fn connect() -> Result<Self, NodeError> {
        let docker = Docker::connect_with_defaults().map_err(|e| NodeError::Unreachable {
            source: Box::new(e),
        })?;
        let docker = docker.negotiate_version().await.map_err(|e| match e {
            e if is_unreachable(&e) => NodeError::Unreachable {
                source: Box::new(e),
            },
            e => classify("agree on an API version", None, e),
        })?;
        Ok(Self { docker })
    }

    /// Every node of the swarm, sorted managers first, then by hostname.
    pub async fn list(&self) -> Result<Vec<NodeInfo>, NodeError> {
        let nodes = self
            .docker
            .list_nodes(None)
            .await
            .map_err(|e| classify("list the swarm nodes", None, e))?;
        let mut infos = nodes
            .into_iter()
            .map(node_info)
            .collect::<Result<Vec<_>, _>>()?;
        infos.sort_by(|a, b| {
            (a.role != NodeRole::Manager, &a.hostname, &a.id).cmp(&(
                b.role != NodeRole::Manager,
                &b.hostname,
                &b.id,
            ))
        });
        Ok(infos)
    }

    /// One node, by id, unambiguous id prefix or hostname.
    pub async fn inspect(&self, node: &str) -> Result<NodeInfo, NodeError> {
        node_info(self.raw_node(node).await?)
    }

    /// Sets the `base.workload` label, keeping every other label.
    pub async fn set_workload(
        &self,
        node: &str,
        workload: Workload,
    ) -> Result<NodeInfo, NodeError> {
        self.update(node, |spec| spec_with_workload(spec, workload))
            .await
    }

    /// Sets whether new tasks may be placed on the node (`Drain` also moves
    /// its running tasks elsewhere).
    pub async fn set_availability(
        &self,
        node: &str,
        availability: Availability,
    ) -> Result<NodeInfo, NodeError> {
        self.update(node, |spec| spec_with_availability(spec, availability))
            .await
    }

    /// Removes a node from the swarm. Docker refuses a node that is still
    /// up unless `force`; a manager must be demoted first.
    pub async fn remove(&self, node: &str, force: bool) -> Result<(), NodeError> {
        let options = DeleteNodeOptionsBuilder::new().force(force).build();
        self.docker
            .delete_node(node, Some(options))
            .await
            .map_err(|e| classify("remove the node", Some(node), e))
    }

    /// The token and manager address a new machine joins with: the worker
    /// token when `worker`, else the manager token. With `rotate`, the
    /// token is replaced first, so the old one admits nobody any more
    /// (machines that already joined are not affected).
    pub async fn join_info(&self, worker: bool, rotate: bool) -> Result<JoinInfo, NodeError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| classify("read the engine's swarm state", None, e))?;
        let swarm = info.swarm.as_ref();
        if !swarm.and_then(|s| s.control_available).unwrap_or(false) {
            let state = swarm
                .and_then(|s| s.local_node_state.as_ref())
                .map_or_else(|| "unknown".to_string(), |s| s.to_string());
            let detail = match state.as_str() {
                "" | "inactive" => "swarm mode is inactive".to_string(),
                "active" => "this node is a worker".to_string(),
                other => format!("swarm state: {other}"),
            };
            return Err(NodeError::NotManager { detail });
        }
        if rotate {
            let current = self
                .docker
                .inspect_swarm()
                .await
                .map_err(|e| classify("read the swarm", None, e))?;
            let version = current
                .version
                .and_then(|v| v.index)
                .and_then(|i| i64::try_from(i).ok())
                .ok_or(NodeError::Incomplete("swarm version"))?;
            let spec = current.spec.ok_or(NodeError::Incomplete("swarm spec"))?;
            let options = UpdateSwarmOptionsBuilder::new()
                .version(version)
                .rotate_worker_token(worker)
                .rotate_manager_token(!worker)
                .build();
            self.docker
                .update_swarm(spec, options)
                .await
                .map_err(|e| classify("rotate the join token", None, e))?;
            tracing::info!(
                token = if worker { "worker" } else { "manager" },
                "rotated the swarm join token"
            );
        }
        let swarm_now = self
            .docker
            .inspect_swarm()
            .await
            .map_err(|e| classify("read the swarm's join tokens", None, e))?;
        let tokens = swarm_now
            .join_tokens
            .ok_or(NodeError::Incomplete("join tokens"))?;
        let token = if worker {
            tokens.worker
        } else {
            tokens.manager
        }
        .filter(|t| !t.is_empty())
        .ok_or(NodeError::Incomplete("join token"))?;
        let local_manager_addr = match swarm.and_then(|s| s.node_id.as_deref()) {
            Some(id) if !id.is_empty() => self
                .raw_node(id)
                .await
                .ok()
                .and_then(|n| n.manager_status)
                .and_then(|m| m.addr),
            _ => None,
        };
        let manager_addr =
            manager_addr_from_info(&info, local_manager_addr).ok_or(NodeError::NoManagerAddr)?;
        Ok(JoinInfo {
            token: SecretString::from(token),
            manager_addr,
        })
    }

    async fn raw_node(&self, node: &str) -> Result<Node, NodeError> {
        self.docker
            .inspect_node(node)
            .await
            .map_err(|e| classify("inspect the node", Some(node), e))
    }

    /// Read-modify-write of a node's spec at the version read, retried
    /// when another client updated the node in between.
    async fn update(
        &self,
        node: &str,
        change: impl Fn(NodeSpec) -> NodeSpec,
    ) -> Result<NodeInfo, NodeError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.raw_node(node).await?;
            let id = current.id.clone().ok_or(NodeError::Incomplete("node id"))?;
            let version = current
                .version
                .as_ref()
                .and_then(|v| v.index)
                .and_then(|i| i64::try_from(i).ok())
                .ok_or(NodeError::Incomplete("node version"))?;
            let spec = change(current.spec.unwrap_or_default());
            let options = UpdateNodeOptionsBuilder::new().version(version).build();
            match self
                .docker
                .update_node(&id, spec, options)
                .await
                .map_err(|e| classify("update the node", Some(node), e))
            {
                Ok(()) => return self.inspect(&id).await,
                Err(e) if is_out_of_sequence(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(NodeError::Conflict(node.to_string()))
    }
}

// Tests may panic on anything unexpected: that is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A node as `GET /nodes/{id}` returns it (trimmed), with the GPU
    /// resources a daemon.json like ours produces.
    const GPU_NODE: &str = r#"{
        "ID": "abc123",
        "Version": {"Index": 42},
        "Spec": {
            "Labels": {"base.workload": "gpu", "zone": "eu"},
            "Role": "worker",
            "Availability": "drain"
        },
        "Description": {
            "Hostname": "gpu-1",
            "Resources": {
                "NanoCPUs": 8000000000,
                "MemoryBytes": 1000,
                "GenericResources": [
                    {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-aaa"}},
                    {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-bbb"}},
                    {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}},
                    {"DiscreteResourceSpec": {"Kind": "SSD", "Value": 5}},
                    {"NamedResourceSpec": {"Kind": "FPGA", "Value": "f0"}}
                ]
            },
            "Engine": {"EngineVersion": "27.3.1"}
        },
        "Status": {"State": "ready", "Addr": "10.0.0.7"}
    }"#;

    const MANAGER_NODE: &str = r#"{
        "ID": "mgr1",
        "Version": {"Index": 9},
        "Spec": {"Role": "manager", "Availability": "active"},
        "Description": {"Hostname": "master"},
        "Status": {"State": "ready", "Addr": "0.0.0.0"},
        "ManagerStatus": {"Leader": true, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}
    }"#;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_docker_node_becomes_node_info() {
        let info = node_info(node(GPU_NODE)).unwrap();
        assert_eq!(info.id, "abc123");
        assert_eq!(info.hostname, "gpu-1");
        assert_eq!(info.role, NodeRole::Worker);
        assert!(!info.leader);
        assert_eq!(info.availability, Availability::Drain);
        assert_eq!(info.state, NodeState::Ready);
        assert_eq!(info.addr.as_deref(), Some("10.0.0.7"));
        assert_eq!(info.workload, Some(Workload::Gpu));
        assert_eq!(
            info.gpus, 4,
            "two named + a discrete 2; SSD and FPGA ignored"
        );
        assert_eq!(info.engine_version.as_deref(), Some("27.3.1"));
        assert_eq!(info.labels.get("zone").map(String::as_str), Some("eu"));

        let mgr = node_info(node(MANAGER_NODE)).unwrap();
        assert_eq!(mgr.role, NodeRole::Manager);
        assert!(mgr.leader);
        assert_eq!(mgr.workload, None);
        assert_eq!(mgr.gpus, 0);
        assert!(mgr.labels.is_empty());
    }

    #[test]
    fn a_node_without_an_id_is_incomplete() {
        let e = node_info(node(r#"{"Spec": {}}"#)).unwrap_err();
        assert!(matches!(e, NodeError::Incomplete("node id")), "{e}");
    }

    #[test]
    fn sparse_nodes_get_docker_defaults() {
        let info = node_info(node(r#"{"ID": "x", "Spec": {"Name": "n1"}}"#)).unwrap();
        assert_eq!(info.hostname, "n1");
        assert_eq!(info.role, NodeRole::Worker);
        assert_eq!(info.availability, Availability::Active);
        assert_eq!(info.state, NodeState::Unknown);
        assert_eq!(info.addr, None);
        assert_eq!(info.gpus, 0);
    }

    #[test]
    fn gpu_counting_ignores_bad_values() {
        let mut n = node(GPU_NODE);
        let res = n
            .description
            .as_mut()
            .and_then(|d| d.resources.as_mut())
            .and_then(|r| r.generic_resources.as_mut())
            .unwrap();
        res.clear();
        res.push(
            serde_json::from_str(
                r#"{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": -3}}"#,
            )
            .unwrap(),
        );
        res.push(
            serde_json::from_str(r#"{"DiscreteResourceSpec": {"Kind": "nvidia-gpu", "Value": 3}}"#)
                .unwrap(),
        );
        assert_eq!(gpu_count(n.description.as_ref()), 0);
        assert_eq!(gpu_count(None), 0);
    }

    #[test]
    fn a_foreign_workload_label_places_nothing_but_stays_visible() {
        let mut n = node(GPU_NODE);
        n.spec
            .as_mut()
            .and_then(|s| s.labels.as_mut())
            .unwrap()
            .insert(WORKLOAD_LABEL.into(), "tpu".into());
        let info = node_info(n).unwrap();
        assert_eq!(info.workload, None);
        assert_eq!(info.labels[WORKLOAD_LABEL], "tpu");
        assert_eq!(
            workload_from_labels(&info.labels),
            Err(InvalidWorkload("tpu".into()))
        );
    }

    #[test]
    fn workloads_parse_loosely_and_print_strictly() {
        assert_eq!("cpu".parse::<Workload>().unwrap(), Workload::Cpu);
        assert_eq!(" GPU ".parse::<Workload>().unwrap(), Workload::Gpu);
        assert!("".parse::<Workload>().is_err());
        assert!("cpus".parse::<Workload>().is_err());
        assert_eq!(Workload::Gpu.to_string(), "gpu");
        assert_eq!(serde_json::to_string(&Workload::Cpu).unwrap(), "\"cpu\"");
        assert_eq!(workload_from_labels(&BTreeMap::new()), Ok(None));
    }

    #[test]
    fn relabelling_keeps_other_labels_and_fields() {
        let spec = node(GPU_NODE).spec.unwrap();
        let out = spec_with_workload(spec, Workload::Cpu);
        let labels = out.labels.as_ref().unwrap();
        assert_eq!(labels[WORKLOAD_LABEL], "cpu");
        assert_eq!(labels["zone"], "eu");
        assert_eq!(out.availability, Some(NodeSpecAvailabilityEnum::DRAIN));
        assert_eq!(out.role, Some(NodeSpecRoleEnum::WORKER));

        let bare = spec_with_workload(NodeSpec::default(), Workload::Gpu);
        assert_eq!(bare.labels.unwrap()[WORKLOAD_LABEL], "gpu");

        let active = spec_with_availability(out, Availability::Active);
        assert_eq!(active.availability, Some(NodeSpecAvailabilityEnum::ACTIVE));
        assert_eq!(active.labels.unwrap()["zone"], "eu");
    }

    #[test]
    fn join_commands_name_the_management_port() {
        assert_eq!(
            join_command("SWMTKN-1-abc", "10.0.0.1:2377"),
            "docker swarm join --token SWMTKN-1-abc 10.0.0.1:2377"
        );
        assert_eq!(with_management_port("10.0.0.1"), "10.0.0.1:2377");
        assert_eq!(with_management_port("host:4000"), "host:4000");
        assert_eq!(with_management_port("fd00::1"), "[fd00::1]:2377");
        assert_eq!(with_management_port("[fd00::1]"), "[fd00::1]:2377");
        assert_eq!(with_management_port("[fd00::1]:2377"), "[fd00::1]:2377");
    }

    #[test]
    fn join_info_keeps_the_token_out_of_debug() {
        let j = JoinInfo {
            token: SecretString::from("SWMTKN-1-very-secret"),
            manager_addr: "10.0.0.1:2377".into(),
        };
        assert!(!format!("{j:?}").contains("very-secret"));
        assert_eq!(
            j.join_command().expose_secret(),
            "docker swarm join --token SWMTKN-1-very-secret 10.0.0.1:2377"
        );
    }

    fn info(json: &str) -> SystemInfo {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_manager_address_prefers_the_local_manager_status() {
        let i = info(
            r#"{"Swarm": {"NodeID": "me", "NodeAddr": "192.168.1.5",
                "RemoteManagers": [{"NodeID": "other", "Addr": "10.0.0.2:2377"},
                                   {"NodeID": "me", "Addr": "10.0.0.1:2377"}]}}"#,
        );
        assert_eq!(
            manager_addr_from_info(&i, Some("10.9.9.9:2377".into())).as_deref(),
            Some("10.9.9.9:2377")
        );
        assert_eq!(
            manager_addr_from_info(&i, None).as_deref(),
            Some("10.0.0.1:2377"),
            "this node's own entry among the managers"
        );
        let i = info(r#"{"Swarm": {"NodeID": "me", "NodeAddr": "192.168.1.5"}}"#);
        assert_eq!(
            manager_addr_from_info(&i, Some(String::new())).as_deref(),
            Some("192.168.1.5:2377")
        );
        assert_eq!(manager_addr_from_info(&info("{}"), None), None);
    }

    #[test]
    fn engine_errors_are_classified() {
        let not_manager = bollard::errors::Error::DockerResponseServerError {
            status_code: 503,
            message: "This node is not a swarm manager. Use \"docker swarm init\" …".into(),
        };
        let e = classify("list the swarm nodes", None, not_manager);
        assert!(matches!(e, NodeError::NotManager { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("this engine is not a swarm manager"),
            "{e}"
        );

        let missing = bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: "node nope not found".into(),
        };
        let e = classify("inspect the node", Some("nope"), missing);
        assert!(
            matches!(e, NodeError::NodeNotFound(ref n) if n == "nope"),
            "{e}"
        );

        let busy = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "rpc error: code = Unknown desc = update out of sequence".into(),
        };
        let e = classify("update the node", Some("n"), busy);
        assert!(is_out_of_sequence(&e), "{e}");

        let gone = bollard::errors::Error::SocketNotFoundError("/var/run/docker.sock".into());
        let e = classify("list the swarm nodes", None, gone);
        assert!(matches!(e, NodeError::Unreachable { .. }), "{e}");
        assert!(
            e.to_string().contains("cannot reach the Docker engine"),
            "{e}"
        );
    }

    fn daemon_json(text: &str) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(text).unwrap() {
            serde_json::Value::Object(m) => m,
            other => panic!("daemon.json is not an object: {other}"),
        }
    }

    #[test]
    fn the_shipped_daemon_json_files_are_valid() {
        let cpu = daemon_json(include_str!(
            "../../../../deploy/swarm/daemon.cpu-worker.json"
        ));
        let gpu = daemon_json(include_str!(
            "../../../../deploy/swarm/daemon.gpu-worker.json"
        ));
        for d in [&cpu, &gpu] {
            assert_eq!(d["live-restore"], false, "swarm mode refuses live-restore");
            assert_eq!(d["log-driver"], "json-file");
            assert_eq!(d["log-opts"]["max-size"], "50m");
            assert_eq!(d["log-opts"]["max-file"], "3");
        }
        assert!(!cpu.contains_key("node-generic-resources"));
        assert_eq!(gpu["default-runtime"], "nvidia");
        assert_eq!(
            gpu["runtimes"]["nvidia"]["path"],
            "nvidia-container-runtime"
        );
        let resources = gpu["node-generic-resources"].as_array().unwrap();
        assert!(!resources.is_empty());
        for r in resources {
            let r = r.as_str().unwrap();
            assert!(r.starts_with("NVIDIA-GPU=GPU-"), "{r}");
        }
    }

    /// `GPU_NODE` with its state, availability and workload label replaced
    /// (`None` leaves the field unset, as sparse engine answers do).
    fn gpu_node_with(
        state: Option<DockerNodeState>,
        availability: Option<NodeSpecAvailabilityEnum>,
        workload: Option<&str>,
    ) -> Node {
        let mut n = node(GPU_NODE);
        n.status.as_mut().unwrap().state = state;
        let spec = n.spec.as_mut().unwrap();
        spec.availability = availability;
        let labels = spec.labels.as_mut().unwrap();
        match workload {
            Some(w) => labels.insert(WORKLOAD_LABEL.into(), w.into()),
            None => labels.remove(WORKLOAD_LABEL),
        };
        n
    }

    #[test]
    fn gpu_capacity_counts_only_nodes_a_gpu_job_can_land_on() {
        use DockerNodeState as S;
        use NodeSpecAvailabilityEnum as A;
        let ready_gpu = || gpu_node_with(Some(S::READY), Some(A::ACTIVE), Some("gpu"));
        // GPU_NODE advertises 4 (two named, a discrete 2).
        assert_eq!(gpu_capacity(&[ready_gpu()]), 4);
        assert_eq!(gpu_capacity(&[ready_gpu(), ready_gpu()]), 8);
        assert_eq!(gpu_capacity(&[]), 0);
        // Unset or empty availability is Docker's default, active; the
        // label matches case-insensitively, like Swarm's constraints.
        for n in [
            gpu_node_with(Some(S::READY), None, Some("gpu")),
            gpu_node_with(Some(S::READY), Some(A::EMPTY), Some("gpu")),
            gpu_node_with(Some(S::READY), Some(A::ACTIVE), Some("GPU")),
        ] {
            assert_eq!(gpu_capacity(&[n]), 4);
        }
        // Drained, paused, down, disconnected, unknown, CPU, unlabelled,
        // foreign label: none of their GPUs can be leased.
        for n in [
            node(GPU_NODE),
            gpu_node_with(Some(S::READY), Some(A::DRAIN), Some("gpu")),
            gpu_node_with(Some(S::READY), Some(A::PAUSE), Some("gpu")),
            gpu_node_with(Some(S::DOWN), Some(A::ACTIVE), Some("gpu")),
            gpu_node_with(Some(S::DISCONNECTED), Some(A::ACTIVE), Some("gpu")),
            gpu_node_with(None, Some(A::ACTIVE), Some("gpu")),
            gpu_node_with(Some(S::READY), Some(A::ACTIVE), Some("cpu")),
            gpu_node_with(Some(S::READY), Some(A::ACTIVE), None),
            gpu_node_with(Some(S::READY), Some(A::ACTIVE), Some(" gpu")),
        ] {
            assert_eq!(gpu_capacity(&[n.clone(), ready_gpu()]), 4, "{n:?}");
        }
        // A ready GPU node that advertises nothing offers nothing.
        let mut bare = ready_gpu();
        bare.description = None;
        assert_eq!(gpu_capacity(&[bare]), 0);
        assert_eq!(gpu_capacity(&[node(MANAGER_NODE)]), 0);
    }

    mod props {
        use super::*;
        use bollard::models::{
            GenericResourcesInnerDiscreteResourceSpec, GenericResourcesInnerNamedResourceSpec,
            NodeStatus, ResourceObject,
        };
        use proptest::prelude::*;

        /// A node with arbitrary state, availability, label and resources,
        /// and the GPUs it advertises, counted independently of the code
        /// under test.
        fn arb_node() -> impl Strategy<Value = (Node, u32, bool)> {
            let state = prop_oneof![
                Just(None),
                Just(Some(DockerNodeState::READY)),
                Just(Some(DockerNodeState::DOWN)),
                Just(Some(DockerNodeState::DISCONNECTED)),
                Just(Some(DockerNodeState::UNKNOWN)),
            ];
            let availability = prop_oneof![
                Just(None),
                Just(Some(NodeSpecAvailabilityEnum::ACTIVE)),
                Just(Some(NodeSpecAvailabilityEnum::EMPTY)),
                Just(Some(NodeSpecAvailabilityEnum::PAUSE)),
                Just(Some(NodeSpecAvailabilityEnum::DRAIN)),
            ];
            let label = prop_oneof![
                Just(None),
                Just(Some("gpu")),
                Just(Some("Gpu")),
                Just(Some("cpu")),
                Just(Some("tpu")),
            ];
            // (kind is NVIDIA-GPU, discrete value or named)
            let resource = (
                any::<bool>(),
                prop_oneof![(-5i64..20).prop_map(Some), Just(None)],
            );
            (
                state,
                availability,
                label,
                proptest::collection::vec(resource, 0..6),
            )
                .prop_map(|(state, availability, label, resources)| {
                    let mut gpus = 0u32;
                    let generic = resources
                        .into_iter()
                        .map(|(is_gpu, discrete)| {
                            let kind = Some(if is_gpu { "NVIDIA-GPU" } else { "SSD" }.to_string());
                            match discrete {
                                Some(v) => {
                                    if is_gpu {
                                        gpus += u32::try_from(v.max(0)).unwrap();
                                    }
                                    GenericResourcesInner {
                                        discrete_resource_spec: Some(
                                            GenericResourcesInnerDiscreteResourceSpec {
                                                kind,
                                                value: Some(v),
                                            },
                                        ),
                                        ..Default::default()
                                    }
                                }
                                None => {
                                    if is_gpu {
                                        gpus += 1;
                                    }
                                    GenericResourcesInner {
                                        named_resource_spec: Some(
                                            GenericResourcesInnerNamedResourceSpec {
                                                kind,
                                                value: Some("GPU-x".into()),
                                            },
                                        ),
                                        ..Default::default()
                                    }
                                }
                            }
                        })
                        .collect();
                    let eligible = state == Some(DockerNodeState::READY)
                        && matches!(
                            availability,
                            None | Some(
                                NodeSpecAvailabilityEnum::ACTIVE | NodeSpecAvailabilityEnum::EMPTY
                            )
                        )
                        && matches!(label, Some("gpu" | "Gpu"));
                    let node = Node {
                        id: Some("n".into()),
                        spec: Some(NodeSpec {
                            availability,
                            labels: label.map(|l| {
                                HashMap::from([(WORKLOAD_LABEL.to_string(), l.to_string())])
                            }),
                            ..Default::default()
                        }),
                        description: Some(NodeDescription {
                            resources: Some(ResourceObject {
                                generic_resources: Some(generic),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        status: Some(NodeStatus {
                            state,
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    (node, gpus, eligible)
                })
        }

        proptest! {
            #[test]
            fn capacity_is_the_sum_over_eligible_nodes(
                nodes in proptest::collection::vec(arb_node(), 0..8)
            ) {
                let expected: u32 = nodes
                    .iter()
                    .filter(|(_, _, eligible)| *eligible)
                    .map(|(_, gpus, _)| *gpus)
                    .sum();
                let plain: Vec<Node> = nodes.iter().map(|(n, _, _)| n.clone()).collect();
                prop_assert_eq!(gpu_capacity(&plain), expected);
            }

            #[test]
            fn drained_down_and_cpu_nodes_never_add_capacity(
                nodes in proptest::collection::vec(arb_node(), 0..6),
                extra in arb_node(),
            ) {
                let (extra, _, _) = extra;
                let mut plain: Vec<Node> = nodes.into_iter().map(|(n, _, _)| n).collect();
                let before = gpu_capacity(&plain);
                let mut spoiled = [extra.clone(), extra.clone(), extra];
                spoiled[0].spec.as_mut().unwrap().availability =
                    Some(NodeSpecAvailabilityEnum::DRAIN);
                spoiled[1].status.as_mut().unwrap().state = Some(DockerNodeState::DOWN);
                spoiled[2]
                    .spec
                    .as_mut()
                    .unwrap()
                    .labels
                    .get_or_insert_with(HashMap::new)
                    .insert(WORKLOAD_LABEL.into(), "cpu".into());
                plain.extend(spoiled);
                prop_assert_eq!(gpu_capacity(&plain), before);
            }
        }
    }
}
