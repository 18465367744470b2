//! `quiz-challenge`: the example challenge as a container entry point.
//!
//! Deliberately thin: logging setup and a call to
//! [`quiz_challenge::run_from_env`], which reads the `CHALLENGE_*` (and
//! `QUIZ_*`) environment and serves until Ctrl-C or SIGTERM, so this binary
//! and `base-server dev` run exactly the same service.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colours only on a terminal: `docker logs` shows escape codes verbatim.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    quiz_challenge::run_from_env().await?;
    Ok(())
}
