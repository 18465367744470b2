//! `base-server`: flag parsing, logging and start-up; the work is in the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base_sdk::auth::AdminAuth;
use base_sdk::config::{OrchestratorKind, Settings};
use base_sdk::metagraph::FileMetagraph;
use base_sdk::weights::{EpochConfig, EpochRunner, HttpWeightSource};
use base_sdk::registry::{self, Policy, Registry};
use clap::{Parser, Subcommand};
use figment::providers::Serialized;

#[derive(Parser)]
#[command(name = "base-server", version, about = "BASE control plane")]
struct Cli {
    /// TOML settings file (also `BASE_CONFIG`); env vars override it.
    #[arg(long, global = true, env = "BASE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the master API (registry, admin, weights).
    Master {
        /// Listen address (overrides BASE_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run everything on embedded defaults: SQLite in ./.base, the example
    /// challenge as local processes, dev miners, a 15 s epoch.
    Dev {
        /// Listen address (overrides BASE_LISTEN; default 127.0.0.1:18080).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the example quiz challenge (what `dev` starts for each challenge).
    #[command(hide = true, name = "example-challenge")]
    ExampleChallenge,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Master { listen } => {
            let mut fig = Settings::figment(cli.config.as_deref());
            if let Some(l) = listen {
                fig = fig.merge(Serialized::default("listen", l));
            }
            let settings = Settings::from_figment(fig)?;
            master(settings).await
        }
        Command::Dev { listen } => {
            let settings = base_server::dev::settings(cli.config.as_deref(), listen)?;
            let exe = std::env::current_exe().context("locating the base-server binary")?;
            base_server::dev::run(settings, exe, shutdown_signal()).await?;
            Ok(())
        }
        Command::ExampleChallenge => {
            quiz_challenge::run_from_env().await?;
            Ok(())
        }
    }
}

async fn master(settings: Settings) -> anyhow::Result<()> {
    match settings.orchestrator.unwrap_or(OrchestratorKind::None) {
        OrchestratorKind::None => {}
        other => anyhow::bail!(
            "BASE_ORCHESTRATOR={} is not available in `master` yet: use `none` (challenges run elsewhere at their internal_base_url) or `base-server dev`",
            serde_json::to_value(other).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        ),
    }
    let db = settings.effective_database_url()?;
    let store = base_sdk::store::connect(db.expose())
        .await
        .with_context(|| format!("opening the control-plane database {}", db.redacted()))?;
    registry::check_database(&Policy {
        environment: settings.environment,
        backend: store.backend(),
    })?;
    if settings.admin_token.is_none() {
        tracing::warn!(
            "no admin token configured (BASE_ADMIN_TOKEN / BASE_ADMIN_TOKEN_FILE): admin routes will answer 401"
        );
    }
    let vault = std::sync::Arc::new(settings.vault()?);
    let registry = Registry::new(store, settings.environment).with_vault(vault);
    let state = base_server::AppState::new(
        registry,
        AdminAuth::new(settings.admin_token.clone()),
        settings.netuid,
    );
    let weights = settings
        .metagraph_file
        .clone()
        .map(|path| -> anyhow::Result<_> {
            Ok(EpochRunner {
                registry: state.registry().clone(),
                orchestrator: None,
                source: Arc::new(HttpWeightSource::new(Duration::from_secs(10), 2)?),
                metagraph: Arc::new(FileMetagraph::new(path)),
                config: EpochConfig {
                    netuid: settings.netuid,
                    chain_endpoint: settings.chain_endpoint.clone(),
                    ..Default::default()
                },
            })
        })
        .transpose()?;
    match weights {
        Some(runner) => {
            let publish = state.weights().publisher();
            tokio::spawn(runner.run(Duration::from_secs(settings.epoch_seconds), publish, std::future::pending()));
        }
        None => tracing::warn!("weights disabled: set BASE_METAGRAPH_FILE (the chain metagraph comes with the chain submitter)"),
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the master API to {}", settings.listen))?;
    tracing::info!(listen = %settings.listen, database = %db.redacted(), environment = settings.environment.as_str(), "BASE master started");
    base_server::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("BASE master stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
