//! `base-server`: flag parsing, logging and start-up; the work is in the library.

use std::path::PathBuf;

use anyhow::Context;
use base_sdk::config::Settings;
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
        /// Where challenges run: swarm (default) or none (overrides BASE_ORCHESTRATOR).
        #[arg(long, value_parser = ["swarm", "none", "process"])]
        orchestrator: Option<String>,
    },
    /// Run the broker alone (challenges' evaluation jobs on :18082).
    Broker {
        /// Listen address (overrides BASE_BROKER_LISTEN).
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
    /// Put the master's weight vector on-chain every interval (validator
    /// side): fetch /v1/weights/latest, check it, then set_weights or
    /// commit/reveal with the wallet hotkey. See docs/chain.md.
    Submitter {
        /// Master URL (overrides BASE_SUBMITTER_MASTER; default http://127.0.0.1:18080).
        #[arg(long)]
        master: Option<String>,
        /// Print what would be submitted (uids, floats, u16 values); submit nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run, also read the subnet's policy with the hotkey to show the decision.
        #[arg(long, requires = "dry_run")]
        check_chain: bool,
        /// One round, then exit.
        #[arg(long)]
        once: bool,
        /// Seconds between rounds (overrides BASE_SUBMITTER_INTERVAL_SECONDS).
        #[arg(long)]
        interval: Option<u64>,
    },
    /// Print the public key of the master's weights signing key
    /// (BASE_WEIGHTS_KEY / BASE_WEIGHTS_KEY_FILE): what validators set as
    /// BASE_MASTER_PUBKEY. Prints nothing secret.
    WeightsPubkey {
        /// Print JSON (`{"public_key","ss58"}`).
        #[arg(long)]
        json: bool,
    },
    /// GET the /health of the master or broker in this container; exit 0
    /// when it answers 2xx, 1 otherwise (a Docker HEALTHCHECK for an image
    /// with no shell).
    Healthcheck {
        /// What to check (also BASE_HEALTHCHECK_URL; the broker's is
        /// http://127.0.0.1:18082/health).
        #[arg(long, env = "BASE_HEALTHCHECK_URL", default_value = base_server::healthcheck::DEFAULT_URL)]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Run the example quiz challenge (what `dev` starts for each challenge),
    /// or with `evaluate` its evaluation job (what dev's broker runs for it).
    #[command(hide = true, name = "example-challenge")]
    ExampleChallenge {
        /// `evaluate`: score the batch in QUIZ_EVAL_INPUT and print the result line.
        #[arg(value_parser = ["evaluate"])]
        mode: Option<String>,
    },
}

/// mimalloc: the proxy and the API allocate many short-lived buffers per
/// request across threads, where it is measurably cheaper than glibc's
/// allocator (docs/benchmarks.md, proxy).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Master {
            listen,
            orchestrator,
        } => {
            let mut fig = Settings::figment(cli.config.as_deref());
            if let Some(l) = listen {
                fig = fig.merge(Serialized::default("listen", l));
            }
            if let Some(o) = orchestrator {
                fig = fig.merge(Serialized::default("orchestrator", o));
            }
            let settings = Settings::from_figment(fig)?;
            base_server::master::run(settings, shutdown_signal()).await?;
            Ok(())
        }
        Command::Broker { listen } => {
            let mut fig = Settings::figment(cli.config.as_deref());
            if let Some(l) = listen {
                fig = fig.merge(Serialized::default("broker_listen", l));
            }
            let settings = Settings::from_figment(fig)?;
            base_server::master::run_broker(settings, shutdown_signal()).await?;
            Ok(())
        }
        Command::Dev { listen } => {
            let settings = base_server::dev::settings(cli.config.as_deref(), listen)?;
            let exe = std::env::current_exe().context("locating the base-server binary")?;
            base_server::dev::run(settings, exe, shutdown_signal()).await?;
            Ok(())
        }
        Command::Submitter {
            master,
            dry_run,
            check_chain,
            once,
            interval,
        } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let opts = base_server::submitter::SubmitterOptions {
                master,
                dry_run,
                check_chain,
                once,
                interval,
            };
            base_server::submitter::run(settings, opts, shutdown_signal()).await?;
            Ok(())
        }
        Command::WeightsPubkey { json } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let public = settings.weights_key()?.public();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"public_key": public.to_string(), "ss58": public.ss58()})
                );
            } else {
                println!("{public}");
                println!("ss58: {}", public.ss58());
            }
            Ok(())
        }
        Command::Healthcheck { url, timeout } => {
            match base_server::healthcheck::check(&url, std::time::Duration::from_secs(timeout))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::ExampleChallenge { mode: None } => {
            quiz_challenge::run_from_env().await?;
            Ok(())
        }
        Command::ExampleChallenge { mode: Some(_) } => {
            std::process::exit(quiz_challenge::evaluate_main())
        }
    }
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
