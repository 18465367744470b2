//! `base master install|status|upgrade|uninstall`: flags → `base_sdk::install`
//! options, then the plan printed (dry-run) or applied through the local
//! Docker engine. The rules live in the SDK; this file parses and prints.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use base_sdk::install::engine::{self, Engine};
use base_sdk::install::{self, Database, InstallError, InstallOptions};
use clap::Args;
use secrecy::ExposeSecret;

/// How long `upgrade` waits for each service's rolling update to settle.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(300);

/// `base master install` flags.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Perform the steps (default: print them and change nothing).
    #[arg(long)]
    pub apply: bool,
    /// Deployment id: prefixes every object and labels it base.deployment.
    #[arg(long, default_value = "base")]
    pub deployment: String,
    /// Control-plane image (ID or tag; scripts/build-control-plane-image.sh).
    #[arg(long)]
    pub image: String,
    /// A file holding the operator's PostgreSQL URL.
    #[arg(
        long,
        conflicts_with = "postgres_image",
        required_unless_present = "postgres_image"
    )]
    pub database_url_file: Option<PathBuf>,
    /// Deploy PostgreSQL as a service from this image (data on a named volume).
    #[arg(long)]
    pub postgres_image: Option<String>,
    /// BASE_ENVIRONMENT of the services.
    #[arg(long, default_value = "production")]
    pub environment: String,
    /// Host port of the master API.
    #[arg(long, default_value_t = install::MASTER_PORT)]
    pub port: u16,
    /// Publish the broker on this host port (not published by default).
    #[arg(long)]
    pub broker_port: Option<u16>,
    /// Address to advertise when the engine is not yet in a Swarm.
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// File holding the admin token (generated when absent).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// File holding BASE_SECRET_KEY (generated when absent).
    #[arg(long)]
    pub secret_key_file: Option<PathBuf>,
    /// File holding BASE_WEIGHTS_KEY (generated when absent).
    #[arg(long)]
    pub weights_key_file: Option<PathBuf>,
    /// Write generated secrets to this new file (mode 0600) instead of
    /// showing them once on standard output.
    #[arg(long)]
    pub secrets_out: Option<PathBuf>,
    /// Extra KEY=VALUE setting for master and broker (repeatable; no secrets).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
}

impl InstallArgs {
    /// The SDK's options.
    pub fn options(&self) -> Result<InstallOptions, InstallError> {
        let database = match (&self.database_url_file, &self.postgres_image) {
            (Some(f), _) => Database::External {
                url_file: f.clone(),
            },
            (None, Some(i)) => Database::Service { image: i.clone() },
            (None, None) => {
                return Err(InstallError::Option(
                    "give --database-url-file or --postgres-image".into(),
                ));
            }
        };
        let mut o = InstallOptions::new(&self.deployment, &self.image, database);
        o.environment = self.environment.clone();
        o.master_port = self.port;
        o.broker_port = self.broker_port;
        o.advertise_addr = self.advertise_addr.clone();
        o.admin_token_file = self.admin_token_file.clone();
        o.secret_key_file = self.secret_key_file.clone();
        o.weights_key_file = self.weights_key_file.clone();
        o.env = parse_env(&self.env)?;
        o.validate()?;
        Ok(o)
    }
}

/// `KEY=VALUE` pairs.
fn parse_env(raw: &[String]) -> Result<BTreeMap<String, String>, InstallError> {
    raw.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| InstallError::Option(format!("--env '{kv}': expected KEY=VALUE")))
        })
        .collect()
}

/// `base master uninstall` flags.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The deployment to remove.
    #[arg(long, default_value = "base")]
    pub deployment: String,
    /// Also remove the deployment's secrets (asks unless --yes).
    #[arg(long)]
    pub remove_secrets: bool,
    /// Also remove the database volume and the control overlay (asks unless --yes).
    #[arg(long)]
    pub purge_data: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

/// Runs `install` and returns what to print.
pub async fn install(args: &InstallArgs) -> Result<String, InstallError> {
    let opts = args.options()?;
    let engine = Engine::connect().await?;
    let observed = engine.observe().await?;
    let steps = install::plan(&opts, &observed)?;
    let mut out = String::new();
    if steps.is_empty() {
        out.push_str(&format!(
            "deployment {}: nothing to change\n",
            opts.deployment
        ));
        return Ok(out);
    }
    if !args.apply {
        out.push_str(&format!(
            "deployment {}: {} step(s) planned (dry run; nothing changed, run with --apply):\n",
            opts.deployment,
            steps.len()
        ));
        for s in &steps {
            out.push_str(&format!("  {s}\n"));
        }
        return Ok(out);
    }
    let generated = engine.apply(&opts, &steps).await?;
    for s in &steps {
        out.push_str(&format!("done: {s}\n"));
    }
    if !generated.is_empty() {
        match &args.secrets_out {
            Some(path) => {
                engine::write_generated(path, &generated)?;
                out.push_str(&format!(
                    "generated secrets written to {} (mode 0600)\n",
                    path.display()
                ));
            }
            None => {
                // Shown once: Docker never gives a secret's value back.
                out.push_str("generated secrets (shown once; store them now):\n");
                for g in &generated {
                    out.push_str(&format!("  {}={}\n", g.setting, g.value.expose_secret()));
                }
            }
        }
    }
    Ok(out)
}

/// `status`: the deployment's services and their drift.
pub async fn status(deployment: &str, json: bool) -> Result<String, InstallError> {
    let engine = Engine::connect().await?;
    let opts = engine.recorded_options(deployment).await?;
    let st = engine.status(&opts).await?;
    if json {
        return serde_json::to_string_pretty(&serde_json::json!({
            "deployment": deployment,
            "image": opts.image,
            "services": st,
        }))
        .map(|s| s + "\n")
        .map_err(|e| InstallError::State(e.to_string()));
    }
    let mut out = format!("deployment {deployment} (image {})\n", opts.image);
    out.push_str(&format!(
        "{:<28} {:<8} {:<8} {:<20} {}\n",
        "SERVICE", "PRESENT", "RUNNING", "UPDATE", "DRIFT"
    ));
    for s in st {
        out.push_str(&format!(
            "{:<28} {:<8} {:<8} {:<20} {}\n",
            s.name,
            if s.present { "yes" } else { "no" },
            s.running,
            s.update_state.as_deref().unwrap_or("-"),
            if s.drifted { "drifted" } else { "-" },
        ));
    }
    Ok(out)
}

/// `upgrade --image`: the recorded options with a new image, applied as a
/// rolling update that the engine rolls back by itself when the new task
/// fails; waits for the outcome.
pub async fn upgrade(deployment: &str, image: &str) -> Result<String, InstallError> {
    let engine = Engine::connect().await?;
    let mut opts = engine.recorded_options(deployment).await?;
    opts.image = image.to_string();
    let observed = engine.observe().await?;
    let steps = install::plan(&opts, &observed)?;
    if steps.is_empty() {
        return Ok(format!("deployment {deployment}: already on {image}\n"));
    }
    engine.apply(&opts, &steps).await?;
    let mut out = String::new();
    for s in &steps {
        engine.wait_rollout(s.object(), ROLLOUT_LIMIT).await?;
        out.push_str(&format!("done: {s}\n"));
    }
    Ok(out)
}

/// `uninstall`: removes the services; secrets and data only with their
/// flags, each confirmed on `confirm` unless `--yes`.
pub async fn uninstall(
    args: &UninstallArgs,
    confirm: &mut dyn BufRead,
    prompt: &mut dyn Write,
) -> Result<String, InstallError> {
    install::validate_deployment(&args.deployment)?;
    let engine = Engine::connect().await?;
    let opts = engine.recorded_options(&args.deployment).await?;
    let ask = |what: &str, confirm: &mut dyn BufRead, prompt: &mut dyn Write| {
        if args.yes {
            return Ok(true);
        }
        let _ = write!(prompt, "{what} Type 'yes' to confirm: ");
        let _ = prompt.flush();
        let mut line = String::new();
        confirm
            .read_line(&mut line)
            .map_err(|source| InstallError::File {
                what: "reading",
                path: "standard input".into(),
                source,
            })?;
        Ok::<bool, InstallError>(line.trim() == "yes")
    };
    let remove_secrets = args.remove_secrets
        && ask(
            &format!(
                "Remove the secrets of {} (admin token, keys, database URL)? Their values cannot be recovered.",
                args.deployment
            ),
            confirm,
            prompt,
        )?;
    let purge_data = args.purge_data
        && ask(
            &format!(
                "Delete the control-plane data of {} (database volume)?",
                args.deployment
            ),
            confirm,
            prompt,
        )?;
    if (args.remove_secrets && !remove_secrets) || (args.purge_data && !purge_data) {
        return Err(InstallError::State(
            "not confirmed: nothing was removed".into(),
        ));
    }
    let observed = engine.observe().await?;
    let r = install::removal(&opts, &observed, remove_secrets, purge_data)?;
    engine.remove(&r).await?;
    let mut out = String::new();
    for s in &r.services {
        out.push_str(&format!("removed service {s}\n"));
    }
    for s in &r.secrets {
        out.push_str(&format!("removed secret {s}\n"));
    }
    for v in &r.volumes {
        out.push_str(&format!("removed volume {v}\n"));
    }
    for n in &r.networks {
        out.push_str(&format!("removed network {n}\n"));
    }
    if !remove_secrets {
        out.push_str("kept the secrets (--remove-secrets removes them)\n");
    }
    if !purge_data {
        out.push_str("kept the volumes and data (--purge-data removes them)\n");
    }
    Ok(out)
}
