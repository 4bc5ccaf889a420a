//! The `modeld` command tree, and the hand-off of each subcommand other than `serve`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modeld::{
    clients::{
        audit::{self, AuditArgs},
        label::{self, LabelArgs},
        verify::{self, VerifyArgs},
    },
    config::{self, ServeArgs, ValidateArgs},
    validate,
};

/// modeld: serves tabular ONNX model bundles over gRPC and hot-swaps them when `current` moves.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configured tasks until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Run every load check on one bundle directory, print a report, exit 0 (pass) or 1 (fail).
    Validate(ValidateArgs),
    /// Stream a CSV or JSONL file through BatchPredict and write one output record per row.
    Label(LabelArgs),
    /// Check a running server: wait until it serves a bundle's version, then replay the bundle's
    /// golden rows through Predict; exit 0 (all equal) or 1.
    Verify(VerifyArgs),
    /// Read the audit log (rotated files included), filter it and print JSON lines or a table.
    Audit(AuditArgs),
}

/// `modeld validate`: exit 0 when the bundle passes every check.
pub fn validate(args: ValidateArgs) -> ExitCode {
    let library = args.ort_library.unwrap_or_else(config::default_ort_library);
    match validate::run(&args.bundle, &library, &mut std::io::stdout()) {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// `modeld label`: a summary on stderr, exit 0 when the job finished.
pub fn label(args: &LabelArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime at start-up");
    match runtime.block_on(label::run(args)) {
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

/// `modeld verify`: one PASS line per server, or the first failure; exit 0 when all pass.
pub fn verify(args: &VerifyArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime at start-up");
    match runtime.block_on(verify::run(args)) {
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

/// `modeld audit`: the matching records on stdout, a count on stderr; exit 0 when the log was
/// read, 1 when it could not be.
pub fn audit(args: &AuditArgs) -> ExitCode {
    match audit::run(args, &mut std::io::stdout().lock()) {
        Ok(s) => {
            eprintln!("{} of {} records matched", s.matched, s.records);
            if s.unreadable > 0 {
                eprintln!("{} lines were not audit records and were skipped", s.unreadable);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("modeld audit: {e}");
            ExitCode::FAILURE
        }
    }
}
