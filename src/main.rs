//! The `modeld` binary: parse the command line, then hand off. `serve` reads as the daemon's
//! table of contents: configuration, telemetry, build, bind, run until a signal.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};
use modeld::{
    app::{App, Listeners},
    config::{self, Config},
    shutdown, telemetry,
};

// mimalloc: with glibc malloc a quarter of a bulk stream's CPU went to malloc/free (decoded
// strings allocated and freed across threads); mimalloc's thread-local heaps cut that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an unusable configuration (EX_USAGE), as init systems expect.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => {
            let check_only = args.check_config;
            let config = match config::load(*args) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("modeld: invalid configuration: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if check_only {
                println!("{config:#?}");
                return ExitCode::SUCCESS;
            }
            if let Err(e) = telemetry::init_logs(&config.log, config.log_format) {
                eprintln!("modeld: invalid log settings: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            match serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "modeld stopped");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate(args) => cli::validate(args),
        Command::Label(args) => cli::label(&args),
        Command::Verify(args) => cli::verify(&args),
        Command::Audit(args) => cli::audit(&args),
    }
}

/// Builds the application, binds its listeners, and serves until SIGTERM or SIGINT.
fn serve(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let app = App::build(config).await?;
        let listeners = Listeners::bind(config).await?;
        let stop = shutdown::signal();
        let (grpc, admin) = listeners.local_addrs()?;
        let http = listeners.http_addr()?.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%grpc, %admin, %http, "listening");
        app.run(listeners, stop).await?;
        Ok(())
    })
}
