//! `base-server`: flag parsing, logging and start-up; the work is in the library.

use std::path::PathBuf;

use anyhow::Context;
use base_sdk::auth::AdminAuth;
use base_sdk::config::Settings;
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
    }
}

async fn master(settings: Settings) -> anyhow::Result<()> {
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
