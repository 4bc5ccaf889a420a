//! The `modeld` binary: parse the configuration, start telemetry, serve until a signal.

use std::process::ExitCode;

use clap::Parser;
use modeld::{
    config::{self, Cli, Command},
    server::{self, Listeners},
    shutdown, telemetry, validate,
};

// mimalloc: with glibc malloc a quarter of a bulk stream's CPU went to malloc/free (decoded
// strings allocated and freed across threads); mimalloc's thread-local heaps cut that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an unusable configuration (EX_USAGE), as init systems expect.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate(args) => {
            let library = args.ort_library.unwrap_or_else(config::default_ort_library);
            match validate::run(&args.bundle, &library, &mut std::io::stdout()) {
                Ok(true) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Command::Label(args) => label(&args),
        Command::Verify(args) => verify(&args),
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
    }
}

fn label(args: &modeld::label::LabelArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime at start-up");
    match runtime.block_on(modeld::label::run(args)) {
        Ok(s) => {
            eprintln!(
                "labelled {} rows ({} row errors, {} bad input lines) with version {} in {:.1} s ({:.0} rows/s)",
                s.rows,
                s.row_errors,
                s.bad_lines,
                s.version,
                s.seconds,
                s.rows as f64 / s.seconds.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("modeld label: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify(args: &modeld::verify::VerifyArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime at start-up");
    match runtime.block_on(modeld::verify::run(args)) {
        Ok(verified) => {
            for v in verified {
                println!("PASS {}: version {} live, {} golden rows equal", v.addr, v.version, v.rows);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: &config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listeners = Listeners::bind(config).await?;
        let (grpc, admin) = listeners.local_addrs()?;
        tracing::info!(%grpc, %admin, "listening");
        server::run(config, listeners, shutdown::signal()).await?;
        Ok(())
    })
}
