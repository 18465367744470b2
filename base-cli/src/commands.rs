//! What each command does: resolve the token if the command needs one, make
//! one call, and render the answer as a table or as the server's JSON.

use std::io::Write;

use crate::Error;
use crate::args::{
    ChallengeCommand, Cli, Command, DbCommand, GlobalArgs, MasterCommand, WeightsCommand,
    WorkerCommand,
};
use crate::client::{Fetched, MasterClient};
use crate::output::{self, OutputError};
use crate::token::{self, TokenFlags};
use base_sdk::orchestrator::swarm::nodes::{Availability, Nodes};
use secrecy::ExposeSecret;

/// Runs one command, writing its normal output to `out` (errors are
/// returned, not printed, so the caller owns standard error and the exit
/// code).
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    let Cli { global, command } = cli;
    let json = global.json;
    let text = match command {
        Command::Registry => {
            let f = public_client(&global)?.registry().await?;
            render(json, &f, output::registry)?
        }
        Command::Audit { slug, limit } => {
            let f = admin_client(&global)?.audit(slug.as_deref(), limit).await?;
            render(json, &f, |v| output::audit(&v.entries))?
        }
        Command::Challenge(c) => challenge(admin_client(&global)?, c, json).await?,
        Command::Weights(WeightsCommand::Latest) => {
            let client = public_client(&global)?;
            if json {
                output::verbatim(&client.weights_latest_raw().await?)
            } else {
                let f = client.weights_latest().await?;
                output::weights_latest(&f.body, chrono::Utc::now())
            }
        }
        Command::Weights(WeightsCommand::Submit {
            dry_run: _,
            netuid,
            max_age_seconds,
        }) => {
            use base_sdk::chain::submitter::{
                HttpWeightsFeed, TickOutcome, WeightsFeed, prepare, render,
            };
            let mut feed = HttpWeightsFeed::new(
                global.master.as_str(),
                std::time::Duration::from_secs(10),
                2,
            )?;
            // The same check as a validator's submitter: with the master's
            // public key, an unsigned or altered vector is refused.
            if let Ok(key) = std::env::var("BASE_MASTER_PUBKEY")
                && !key.trim().is_empty()
            {
                let key = key.parse().map_err(|e| {
                    base_sdk::config::ConfigError::Invalid(format!("BASE_MASTER_PUBKEY: {e}"))
                })?;
                feed = feed.with_master_key(key);
            }
            let snapshot = feed.latest().await?;
            let prepared = prepare(
                &snapshot,
                netuid,
                chrono::Utc::now(),
                std::time::Duration::from_secs(max_age_seconds),
            )?;
            if json {
                output::json(&serde_json::to_value(&prepared).map_err(OutputError::from)?)?
            } else {
                render(&TickOutcome::DryRun {
                    prepared,
                    action: None,
                })
            }
        }
        Command::Weights(WeightsCommand::Pubkey { config }) => {
            let settings = base_sdk::config::Settings::load(config.as_deref())?;
            let public = settings.weights_key()?.public();
            if json {
                output::json(&serde_json::json!({
                    "public_key": public.to_string(),
                    "ss58": public.ss58(),
                }))?
            } else {
                format!("{public}\nss58: {}\n", public.ss58())
            }
        }
        Command::Db(DbCommand::Migrate { config }) => {
            let m = crate::db::migrate(config.as_deref()).await?;
            if json {
                output::json(&serde_json::json!({
                    "migrated": true,
                    "database": m.database,
                    "backend": m.backend,
                }))?
            } else {
                format!(
                    "migrated the control-plane database {} ({})\n",
                    m.database, m.backend
                )
            }
        }
        Command::Master(MasterCommand::Worker(w)) => worker(w, json).await?,
        Command::Master(MasterCommand::Install(a)) => crate::install::install(&a).await?,
        Command::Master(MasterCommand::Status { deployment }) => {
            crate::install::status(&deployment, json).await?
        }
        Command::Master(MasterCommand::Upgrade { deployment, image }) => {
            crate::install::upgrade(&deployment, &image).await?
        }
        Command::Master(MasterCommand::Uninstall(a)) => {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            crate::install::uninstall(&a, &mut lock, &mut std::io::stderr()).await?
        }
        Command::Miner(crate::miner::MinerCommand::Sign(args)) => {
            let key = crate::miner::load_key(args.key_file.as_deref(), |k| std::env::var(k).ok())?;
            let h = crate::miner::sign(&args, &key, chrono::Utc::now().timestamp())?;
            if json {
                output::json(&serde_json::to_value(&h).map_err(OutputError::from)?)?
            } else {
                crate::miner::header_lines(&h)
            }
        }
    };
    emit(out, &text)
}

/// `base master worker …`: one call to the local Docker engine (a swarm
/// manager), not to the master's API, so no token or `--master` is used.
async fn worker(cmd: WorkerCommand, json: bool) -> Result<String, Error> {
    let nodes = Nodes::connect().await?;
    let node_json = |n: &base_sdk::orchestrator::swarm::nodes::NodeInfo| {
        serde_json::to_value(n).map_err(OutputError::from)
    };
    Ok(match cmd {
        WorkerCommand::Token { gpu, rotate, .. } => {
            let workload = WorkerCommand::token_workload(gpu);
            let join = nodes.join_info(true, rotate).await?;
            // Printing the token is what this command is for (see its
            // --help); it is exposed here and nowhere else.
            let join_command = join.join_command();
            let label_command = output::label_command(workload);
            if json {
                output::json(&serde_json::json!({
                    "join_command": join_command.expose_secret(),
                    "label_command": label_command,
                }))?
            } else {
                output::join_instructions(
                    join_command.expose_secret(),
                    &join.manager_addr,
                    workload,
                    rotate,
                )
            }
        }
        WorkerCommand::Label { node, workload } => {
            let n = nodes.set_workload(&node, workload.into()).await?;
            if json {
                output::json(&node_json(&n)?)?
            } else {
                output::workload_set(&n)
            }
        }
        WorkerCommand::List => {
            let list = nodes.list().await?;
            if json {
                let list = list.iter().map(node_json).collect::<Result<Vec<_>, _>>()?;
                output::json(&serde_json::json!({ "nodes": list }))?
            } else {
                output::worker_list(&list)
            }
        }
        WorkerCommand::Drain { node, active } => {
            let target = if active {
                Availability::Active
            } else {
                Availability::Drain
            };
            let n = nodes.set_availability(&node, target).await?;
            if json {
                output::json(&node_json(&n)?)?
            } else {
                output::availability_set(&n)
            }
        }
        WorkerCommand::Rm { node, force } => {
            nodes.remove(&node, force).await?;
            if json {
                output::json(&serde_json::json!({ "removed": node, "force": force }))?
            } else {
                format!("removed node '{node}' from the swarm\n")
            }
        }
        WorkerCommand::Inspect { node } => {
            let n = nodes.inspect(&node).await?;
            if json {
                output::json(&node_json(&n)?)?
            } else {
                output::worker_detail(&n)
            }
        }
    })
}

async fn challenge(
    client: MasterClient,
    cmd: ChallengeCommand,
    json: bool,
) -> Result<String, Error> {
    Ok(match cmd {
        ChallengeCommand::Register(args) => {
            let req = args.to_request()?;
            let f = client.create_challenge(&req).await?;
            render(json, &f, |v| {
                format!(
                    "registered challenge '{}'\n{}{}",
                    v.challenge.slug,
                    output::challenge_detail(&v.challenge, &[]),
                    output::issued_tokens(v.challenge.slug.as_str(), &v.tokens)
                )
            })?
        }
        ChallengeCommand::List => {
            let f = client.list_challenges().await?;
            render(json, &f, |v| output::challenge_list(&v.challenges))?
        }
        ChallengeCommand::Show { slug } => {
            let f = client.challenge(&slug).await?;
            render(json, &f, |v| {
                output::challenge_detail(&v.challenge, &v.tokens)
            })?
        }
        ChallengeCommand::Activate { slug } => {
            let f = client.activate(&slug).await?;
            render(json, &f, output::status_changed)?
        }
        ChallengeCommand::Deactivate { slug } => {
            let f = client.deactivate(&slug).await?;
            render(json, &f, output::status_changed)?
        }
        ChallengeCommand::Status { slug } => {
            let f = client.runtime_status(&slug).await?;
            render(json, &f, output::runtime_status)?
        }
        ChallengeCommand::RotateToken { slug, kind } => {
            let f = client.rotate_tokens(&slug, kind.token_kind()).await?;
            render(json, &f, |v| {
                format!(
                    "rotated the tokens of '{slug}'; the old ones no longer work\n{}",
                    output::issued_tokens(&slug, v)
                )
            })?
        }
        ChallengeCommand::Update(args) => {
            let patch = args.to_patch()?;
            let f = client.update_challenge(&args.slug, &patch).await?;
            render(json, &f, output::updated)?
        }
        ChallengeCommand::Delete {
            slug,
            purge_volumes,
        } => {
            let f = client.delete_challenge(&slug, purge_volumes).await?;
            render(json, &f, output::deleted)?
        }
    })
}

/// A client for routes that need no token. The token is not even read, so
/// a broken `BASE_ADMIN_TOKEN_FILE` does not stop `base registry` or
/// `base weights latest`.
fn public_client(global: &GlobalArgs) -> Result<MasterClient, Error> {
    Ok(MasterClient::new(global.master.clone(), None)?)
}

/// A client carrying the admin token, if one was given (a missing token is
/// reported by the client when a call needs it).
fn admin_client(global: &GlobalArgs) -> Result<MasterClient, Error> {
    let flags = TokenFlags {
        token: global.admin_token.clone(),
        file: global.admin_token_file.clone(),
    };
    let token = token::resolve(flags, |name| std::env::var(name).ok())?;
    Ok(MasterClient::new(global.master.clone(), token)?)
}

/// The server's JSON as it came (`--json`), or the table rendering.
fn render<T>(
    json: bool,
    f: &Fetched<T>,
    table: impl FnOnce(&T) -> String,
) -> Result<String, Error> {
    if json {
        Ok(output::json(&f.raw)?)
    } else {
        Ok(table(&f.body))
    }
}

/// Writes the output; a closed pipe (`base challenge list | head -1`) is
/// not an error worth reporting.
fn emit(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(OutputError::Write(e).into()),
    }
}
