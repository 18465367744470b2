//! `base`, the operator command line of a BASE master, as a library: the
//! binary only parses flags and maps errors to an exit code, so everything
//! here is testable without spawning a process.
//!
//! Modules: [`args`] (the command line and request bodies), [`token`]
//! (where the admin token comes from), [`client`] (a typed client of the
//! master API), [`output`] (tables and JSON), [`db`] (direct database
//! maintenance) and [`commands`] (what each command does). The swarm
//! node commands (`base master worker …`) use the SDK's
//! `orchestrator::swarm::nodes` against the local Docker engine.

pub mod args;
pub mod client;
pub mod commands;
pub mod db;
pub mod install;
pub mod miner;
pub mod output;
pub mod token;

pub use args::Cli;
pub use commands::run;

/// Anything that makes a command fail; its `Display` is the message the
/// operator sees on standard error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that do not make a valid request.
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    /// The admin token could not be read.
    #[error(transparent)]
    Token(#[from] token::TokenError),
    /// Talking to the master failed.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// Output could not be rendered or written.
    #[error(transparent)]
    Output(#[from] output::OutputError),
    /// Database maintenance failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A swarm node operation (`base master worker …`) failed.
    #[error(transparent)]
    Nodes(#[from] base_sdk::orchestrator::swarm::nodes::NodeError),
    /// `base miner sign` could not sign.
    #[error(transparent)]
    Miner(#[from] miner::MinerError),
    /// `base weights submit --dry-run` refused or could not fetch the vector.
    #[error(transparent)]
    Submit(#[from] base_sdk::chain::submitter::SubmitterError),
    /// Settings (`base weights pubkey` reads the weights key).
    #[error(transparent)]
    Config(#[from] base_sdk::config::ConfigError),
    /// `base master install|status|upgrade|uninstall` failed.
    #[error(transparent)]
    Install(#[from] base_sdk::install::InstallError),
}
