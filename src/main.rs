//! Entry point: parse the command line, run it, turn errors into a clear message and exit code.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = daarion_bridge::cli::Cli::parse();
    match daarion_bridge::cli::execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("daarion-bridge: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
