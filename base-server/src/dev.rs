//! `base-server dev`: the whole flow on embedded defaults, from a fresh
//! clone, in one command.
//!
//! SQLite in the data dir, the `process` orchestrator running the example
//! quiz challenge (this same binary, re-executed with the hidden
//! `example-challenge` subcommand), a file metagraph of made-up dev miners,
//! a simulator that has those miners answer the quiz with different skill,
//! and a short epoch — so a non-trivial vector appears at
//! `/v1/weights/latest` within one epoch. Everything it creates lives under
//! the data dir and is reused on the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base_sdk::auth::AdminAuth;
use base_sdk::config::{ConfigError, Settings};
use base_sdk::metagraph::FileMetagraph;
use base_sdk::model::{ChallengeStatus, EmissionPercent};
use base_sdk::orchestrator::Orchestrator;
use base_sdk::orchestrator::process::{ProcessOrchestrator, ProgramTable};
use base_sdk::registry::{NewChallenge, Registry, RegistryError};
use base_sdk::weights::{EpochConfig, EpochRunner, HttpWeightSource};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

use crate::state::AppState;

/// The image name the dev program table maps to the example challenge.
pub const EXAMPLE_IMAGE: &str = "base.local/quiz-challenge:0.1.0";

/// The version registered for the example; the process orchestrator hands
/// it to the challenge as `CHALLENGE_VERSION`.
pub const EXAMPLE_VERSION: &str = "0.1.0";

/// The hidden subcommand that runs the example challenge.
pub const EXAMPLE_SUBCOMMAND: &str = "example-challenge";

/// Why dev mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store.
    #[error("opening the dev database: {0}")]
    Store(#[from] base_sdk::store::StoreError),
    /// Seeding the registry.
    #[error("registering the example challenges: {0}")]
    Registry(#[from] RegistryError),
    /// The orchestrator.
    #[error(transparent)]
    Orchestrator(#[from] base_sdk::orchestrator::OrchestratorError),
    /// Files in the data dir, binding the port.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The weight client.
    #[error(transparent)]
    Weights(#[from] base_sdk::weights::WeightsError),
    /// Starting the broker.
    #[error("starting the broker: {0}")]
    Broker(#[from] crate::master::MasterError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevError {
    let context = context.into();
    move |source| DevError::Io { context, source }
}

/// One example challenge dev mode registers.
struct Example {
    slug: &'static str,
    emission: f64,
    env: &'static [(&'static str, &'static str)],
}

const EXAMPLES: &[Example] = &[
    Example {
        slug: "quiz",
        emission: 60.0,
        env: &[("QUIZ_SEED", "1"), ("QUIZ_TASKS", "10")],
    },
    Example {
        slug: "quiz-hard",
        emission: 40.0,
        env: &[("QUIZ_SEED", "2"), ("QUIZ_TASKS", "20")],
    },
];

/// Dev miners: hotkey and the fraction of questions each answers right.
/// Uid 0 is the subnet owner's burn hotkey, never weighted.
const MINERS: &[(&str, f64)] = &[
    ("5DevOwnerBurnHotkey0000000000000000000000000000", 0.0),
    ("5DevMinerAlice00000000000000000000000000000000", 0.9),
    ("5DevMinerBob0000000000000000000000000000000000", 0.6),
    ("5DevMinerCarol000000000000000000000000000000000", 0.3),
    ("5DevMinerDave00000000000000000000000000000000000", 0.0),
];

/// Settings for dev mode: the usual layers with dev defaults underneath
/// (loopback listen address, `process` orchestrator, a 15 s epoch).
pub fn settings(config: Option<&Path>, listen: Option<String>) -> Result<Settings, ConfigError> {
    use figment::providers::Serialized;
    let dev_defaults = Serialized::defaults(serde_json::json!({
        "listen": "127.0.0.1:18080",
        "epoch_seconds": 15,
        "orchestrator": "process",
        "broker_listen": "127.0.0.1:18082",
        "broker_allowed_images": "base.local/",
    }));
    let mut fig = Settings::figment_with(config, dev_defaults);
    if let Some(l) = listen {
        fig = fig.merge(Serialized::default("listen", l));
    }
    Settings::from_figment(fig)
}

/// Runs dev mode until `shutdown` resolves. `exe` is the binary that runs
/// the example challenge with [`EXAMPLE_SUBCOMMAND`].
pub async fn run(
    settings: Settings,
    exe: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DevError> {
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let db = settings.effective_database_url()?;
    let store = base_sdk::store::connect(db.expose()).await?;
    // dev, and only dev, makes up its keys (in its data dir, mode 0600).
    let vault = Arc::new(settings.dev_vault()?);
    let weights_key = Arc::new(settings.dev_weights_key()?);
    let weights_pubkey = weights_key.public();
    let registry = Registry::new(store, settings.environment).with_vault(vault);
    registry.check_sealing().await?;
    let admin_token = admin_token(&settings, &data_dir)?;

    let programs = ProgramTable::new().with(
        EXAMPLE_IMAGE,
        [exe.display().to_string(), EXAMPLE_SUBCOMMAND.to_string()],
    )?;
    // The quiz scores through broker jobs of its own image: here that
    // image's job runs this binary's `example-challenge <command…>`
    // (`example-challenge evaluate`), as its ENTRYPOINT would on Swarm.
    let job_entrypoints = programs.clone();
    let orchestrator = Arc::new(
        ProcessOrchestrator::new(settings.environment, data_dir.clone(), programs)?
            .with_job_entrypoints(job_entrypoints),
    );
    seed_examples(&registry).await?;
    let metagraph_path = settings
        .metagraph_file
        .clone()
        .unwrap_or_else(|| data_dir.join("metagraph.json"));
    write_dev_metagraph(&metagraph_path)?;

    let state = AppState::new(
        registry.clone(),
        AdminAuth::new(Some(admin_token.clone())),
        settings.netuid,
    )
    .with_orchestrator(orchestrator.clone())
    .with_admin_limits(settings.admin_limits());
    state.weights().set_key(weights_key);
    // A restart serves the last stored vector from the first request on,
    // not only once the first epoch has run.
    match registry.store().latest_snapshot().await {
        Ok(Some(s)) => state.weights().publish(&s),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not load the last weights snapshot"),
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(io(format!("binding {}", settings.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(io("reading the bound address"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Challenges are told where to submit jobs: dev's own broker on
    // loopback (its challenges are local processes), unless configured.
    let broker_url = settings.challenge_broker_url(
        settings
            .broker_enabled
            .then(|| local_url(settings.broker_listen)),
    )?;
    let reconciler = tokio::spawn(base_sdk::supervisor::run_reconciler(
        registry.clone(),
        orchestrator.clone(),
        broker_url,
        Duration::from_secs(settings.reconcile_seconds),
        state.reconcile_wake(),
        stopped(stop_rx.clone()),
    ));
    let runner = EpochRunner::new(
        registry.clone(),
        Some(orchestrator.clone()),
        Arc::new(HttpWeightSource::new(Duration::from_secs(5), 2)?),
        Arc::new(FileMetagraph::new(&metagraph_path)),
        EpochConfig {
            netuid: settings.netuid,
            chain_endpoint: settings.chain_endpoint.clone(),
            ..Default::default()
        },
    );
    let epoch_interval = Duration::from_secs(settings.epoch_seconds);
    // Let the miners answer every challenge once before the first epoch
    // (waiting 3 s at least, 30 s at most, so a challenge that never comes
    // up does not hold the weights back), so the first vector is already
    // non-trivial.
    let (answered_tx, mut answered_rx) = watch::channel(false);
    let epochs = tokio::spawn({
        let publish = state.weights().publisher();
        let mut stop = stop_rx.clone();
        async move {
            let first_round = async {
                let at_least = tokio::time::sleep(Duration::from_secs(3));
                let _ = tokio::time::timeout(Duration::from_secs(30), answered_rx.wait_for(|a| *a))
                    .await;
                at_least.await;
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = first_round => {}
            }
            runner.run(epoch_interval, publish, stopped(stop)).await;
        }
    });
    let miners = tokio::spawn(simulate_miners(
        registry.clone(),
        orchestrator.clone(),
        answered_tx,
        stopped(stop_rx.clone()),
    ));

    let broker = if settings.broker_enabled {
        // So the submit_job example (and curl) can call the dev broker as
        // the quiz challenge: its broker token, readable by this user only.
        let token_file = data_dir.join("quiz.broker-token");
        let slug = base_sdk::model::Slug::parse("quiz").map_err(|e| DevError::Io {
            context: "naming the quiz challenge".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let secrets = registry.reveal(&slug).await?;
        base_sdk::vault::write_private(
            &token_file,
            secrecy::ExposeSecret::expose_secret(&secrets.broker_token),
        )
        .map_err(io(format!("writing {}", token_file.display())))?;
        let broker = base_sdk::broker::Broker::new(
            registry.store().clone(),
            orchestrator.clone(),
            crate::master::broker_config(&settings),
        );
        Some(crate::master::start_broker(&settings, broker, stopped(stop_rx.clone())).await?)
    } else {
        None
    };

    println!("BASE dev is running (data in {}):", data_dir.display());
    println!("  registry        http://{addr}/v1/registry");
    println!(
        "  weights         http://{addr}/v1/weights/latest   (every {}s)",
        settings.epoch_seconds
    );
    println!(
        "  admin token     {}",
        admin_token_hint(&settings, &data_dir)
    );
    println!("  CLI             base --master http://{addr} weights latest");
    println!("  weights pubkey  {weights_pubkey}   (BASE_MASTER_PUBKEY for a submitter)");
    if broker.is_some() {
        println!(
            "  broker          http://{}/v1/jobs   (jobs run as local processes; images base.local/*)",
            settings.broker_listen
        );
        println!(
            "  broker token    {} (challenge quiz)",
            data_dir.join("quiz.broker-token").display()
        );
    }
    println!("Stop with Ctrl-C.");

    let served = crate::serve(listener, state, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(reconciler, epochs, miners);
    if let Some(b) = broker {
        let _ = b.await;
    }
    orchestrator.shutdown().await;
    served.map_err(io("serving the API"))
}

fn admin_token(settings: &Settings, data_dir: &Path) -> Result<SecretString, DevError> {
    if let Some(t) = &settings.admin_token {
        return Ok(t.clone());
    }
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(SecretString::from(t.trim().to_string())),
        _ => {
            let token = base_sdk::vault::Vault::generate_key();
            let text: String = token
                .expose_secret()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            base_sdk::vault::write_private(&path, &text)
                .map_err(io(format!("writing {}", path.display())))?;
            Ok(SecretString::from(text))
        }
    }
}

fn admin_token_hint(settings: &Settings, data_dir: &Path) -> String {
    if settings.admin_token.is_some() {
        "from BASE_ADMIN_TOKEN".to_string()
    } else {
        format!(
            "in {} (export BASE_ADMIN_TOKEN_FILE=that path)",
            data_dir.join("admin.token").display()
        )
    }
}

async fn seed_examples(registry: &Registry) -> Result<(), DevError> {
    for Example {
        slug,
        emission,
        env,
    } in EXAMPLES
    {
        match registry.get(slug).await {
            Ok(_) => continue,
            Err(RegistryError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let req = NewChallenge {
            slug: (*slug).to_string(),
            name: format!("Example quiz ({slug})"),
            image: EXAMPLE_IMAGE.to_string(),
            version: EXAMPLE_VERSION.to_string(),
            description: Some("Arithmetic quiz: the example challenge of base-server dev".into()),
            emission_percent: Some(EmissionPercent(*emission)),
            status: Some(ChallengeStatus::Active),
            env: Some(
                env.iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        registry.create(req, "dev").await?;
    }
    Ok(())
}

fn write_dev_metagraph(path: &Path) -> Result<(), DevError> {
    if path.exists() {
        return Ok(());
    }
    let hotkeys: Vec<&str> = MINERS.iter().map(|(h, _)| *h).collect();
    let body = serde_json::json!({ "hotkeys": hotkeys }).to_string();
    std::fs::write(path, body).map_err(io(format!("writing {}", path.display())))
}

/// Dev miners answer every active quiz each few seconds; whether a miner
/// gets a question right is a fixed function of its skill and the
/// question, so the vector is stable from epoch to epoch. Until a round has
/// reached every active challenge they retry quickly (the challenges are
/// still starting), then `answered` becomes true.
async fn simulate_miners(
    registry: Registry,
    orchestrator: Arc<ProcessOrchestrator>,
    answered: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "dev miners disabled: cannot build an HTTP client");
            return;
        }
    };
    tokio::pin!(shutdown);
    loop {
        // Whether this round reached every active challenge.
        let mut all = false;
        if let Ok(challenges) = registry.list().await {
            all = true;
            for c in challenges
                .iter()
                .filter(|c| c.status == ChallengeStatus::Active)
            {
                let endpoint = orchestrator
                    .challenge_status(&c.slug)
                    .await
                    .ok()
                    .and_then(|s| s.endpoint);
                let Some(base) = endpoint else {
                    all = false;
                    continue;
                };
                if let Err(e) = answer_quiz(&client, &base).await {
                    all = false;
                    tracing::debug!(slug = %c.slug, error = %e, "dev miners could not answer (yet)");
                }
            }
        }
        if all {
            answered.send_replace(true);
        }
        let pause = if *answered.borrow() {
            Duration::from_secs(4)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn answer_quiz(client: &reqwest::Client, base: &str) -> Result<(), reqwest::Error> {
    let tasks: quiz_challenge::TasksResponse = client
        .get(format!("{base}/tasks"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let truth =
        quiz_challenge::generate_tasks(tasks.seed, u32::try_from(tasks.tasks.len()).unwrap_or(0));
    for (hotkey, skill) in MINERS.iter().skip(1) {
        for task in &truth {
            let right = pseudo_unit(hotkey, task.id) < *skill;
            let answer = if right {
                task.answer()
            } else {
                task.answer().wrapping_add(1)
            };
            client
                .post(format!("{base}/submissions"))
                .json(&serde_json::json!({"hotkey": hotkey, "task_id": task.id, "answer": answer}))
                .send()
                .await?;
        }
    }
    Ok(())
}

/// A number in [0, 1) fixed by the miner and the question.
fn pseudo_unit(hotkey: &str, task: u32) -> f64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{hotkey}/{task}").as_bytes());
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    f64::from(n) / (f64::from(u32::MAX) + 1.0)
}

/// `http://` + `addr` as a local client reaches it: an unspecified listen
/// address (`0.0.0.0`, `::`) is reached on loopback.
fn local_url(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_broker_url_is_reached_on_loopback() {
        let url = |a: &str| local_url(a.parse().unwrap());
        assert_eq!(url("0.0.0.0:18082"), "http://127.0.0.1:18082");
        assert_eq!(url("[::]:18082"), "http://[::1]:18082");
        assert_eq!(url("127.0.0.2:9"), "http://127.0.0.2:9");
    }

    #[test]
    fn skills_shape_the_answers() {
        let right = |skill: f64| (0..1000).filter(|t| pseudo_unit("k", *t) < skill).count();
        assert_eq!(right(0.0), 0);
        assert!((850..950).contains(&right(0.9)), "{}", right(0.9));
    }
}
