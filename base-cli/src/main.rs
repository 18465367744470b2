//! `base`: parses the command line, runs the command, and turns any error
//! into a message on standard error and exit code 1. The work is in the
//! library (`base_cli`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = base_cli::Cli::parse();
    // One call per invocation: a single-threaded runtime is all it needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(base_cli::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
