//! `modeld audit`: reads an audit log (the file and its rotated predecessors, oldest first),
//! keeps the records that pass every filter, and prints them as JSON lines (each record as
//! written) or as a table, so the log answers "what was decided" without jq.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
};

use serde_json::Value;

use crate::telemetry::audit::{log_files, parse_time};

/// Output format of `modeld audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// One record per line, exactly as written.
    Json,
    /// One line per record: time, request, task, method, version, outcome, latency, rows.
    Table,
}

/// What `modeld audit` reads and keeps.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The audit log: the file modeld writes (`audit_path`); `<path>.1`, `<path>.2`, ... beside
    /// it are read first.
    #[arg(env = "MODELD_AUDIT_PATH")]
    pub path: PathBuf,
    /// Only this request id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Only this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only records where this version answered, was compared, or scored in the shadow.
    #[arg(long)]
    pub version: Option<String>,
    /// Only records at or after this time (RFC 3339, e.g. 2026-11-30T09:00:00Z, or a date).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this time (RFC 3339, or a date).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this outcome: a status code name (OK, INVALID_ARGUMENT, ...), or `error` for any
    /// failure.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = AuditFormat::Json)]
    pub format: AuditFormat,
}

/// Why the log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditReadError {
    #[error("--{flag}: `{value}` is not a time (use RFC 3339, e.g. 2026-11-30T09:00:00Z, or a date)")]
    Time { flag: &'static str, value: String },
    #[error("{0}: no audit log there (nor rotated files beside it)")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a run read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AuditSummary {
    /// Records printed.
    pub matched: u64,
    /// Records read.
    pub records: u64,
    /// Lines that were not records (a line cut short by a crash, or another program's output).
    pub unreadable: u64,
}

struct Filter {
    request_id: Option<String>,
    task: Option<String>,
    version: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    outcome: Option<String>,
}

impl Filter {
    fn from_args(args: &AuditArgs) -> Result<Filter, AuditReadError> {
        let time = |flag, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| parse_time(v.trim()).ok_or_else(|| AuditReadError::Time { flag, value: v.to_owned() }))
                .transpose()
        };
        Ok(Filter {
            request_id: args.request_id.clone(),
            task: args.task.clone(),
            version: args.version.clone(),
            since: time("since", &args.since)?,
            until: time("until", &args.until)?,
            outcome: args.outcome.as_deref().map(str::to_ascii_uppercase),
        })
    }

    fn keeps(&self, r: &Value) -> bool {
        let text = |key: &str| r.get(key).and_then(Value::as_str).unwrap_or("");
        if self.request_id.as_deref().is_some_and(|id| text("request_id") != id)
            || self.task.as_deref().is_some_and(|t| text("task") != t)
        {
            return false;
        }
        if let Some(v) = &self.version {
            let compared = r.get("compare").and_then(Value::as_array).is_some_and(|c| {
                c.iter().any(|entry| entry.get("version").and_then(Value::as_str) == Some(v.as_str()))
            });
            let shadow = r.pointer("/shadow/version").and_then(Value::as_str) == Some(v.as_str());
            if text("version") != v && !compared && !shadow {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = parse_time(text("time")) else { return false };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at >= u) {
                return false;
            }
        }
        if let Some(wanted) = &self.outcome {
            let code = r.pointer("/outcome/code").and_then(Value::as_str).unwrap_or("");
            let kept = if wanted == "ERROR" { code != "OK" } else { code == wanted };
            if !kept {
                return false;
            }
        }
        true
    }
}

/// Prints the records of `args.path` that pass the filters to `out`.
pub fn run(args: &AuditArgs, out: &mut impl Write) -> Result<AuditSummary, AuditReadError> {
    let filter = Filter::from_args(args)?;
    let files = log_files(&args.path);
    if files.is_empty() {
        return Err(AuditReadError::Missing(args.path.clone()));
    }
    let mut summary = AuditSummary::default();
    if args.format == AuditFormat::Table {
        let _ = writeln!(
            out,
            "{:<27} {:<24} {:<16} {:<14} {:<10} {:<18} {:>10} {:>5}",
            "time", "request", "task", "method", "version", "outcome", "ms", "rows"
        );
    }
    for path in files {
        let read_error = |source| AuditReadError::Read { path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(read_error)?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(read_error)?;
            if line.trim().is_empty() {
                continue;
            }
            let Ok(record) = serde_json::from_str::<Value>(&line) else {
                summary.unreadable += 1;
                continue;
            };
            summary.records += 1;
            if !filter.keeps(&record) {
                continue;
            }
            summary.matched += 1;
            // A closed pipe (`| head`) ends the output; nothing else to report.
            let written = match args.format {
                AuditFormat::Json => writeln!(out, "{line}"),
                AuditFormat::Table => writeln!(out, "{}", table_row(&record)),
            };
            if written.is_err() {
                return Ok(summary);
            }
        }
    }
    Ok(summary)
}

fn table_row(r: &Value) -> String {
    let text = |key: &str| r.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let request = match (r.get("stream").and_then(Value::as_u64), r.get("chunk").and_then(Value::as_u64)) {
        (Some(stream), Some(chunk)) => format!("stream {stream} chunk {chunk}"),
        _ => text("request_id"),
    };
    let outcome = r.pointer("/outcome/code").and_then(Value::as_str).unwrap_or("?");
    let latency = r.get("latency_ms").and_then(Value::as_f64).unwrap_or(f64::NAN);
    let rows = r.get("rows").and_then(Value::as_array).map_or(0, Vec::len);
    // A shadow job's record shows as such, with the shadow version: the call's own record (same
    // request) shows the version that answered.
    let shadow = r.pointer("/shadow/version").and_then(Value::as_str);
    let method = if shadow.is_some() { "shadow".to_owned() } else { text("method") };
    // HTTP routes are long; the table shows their verb and first segments.
    let method = if method.len() > 14 { format!("{}…", &method[..13]) } else { method };
    let version = shadow.map_or_else(|| text("version"), str::to_owned);
    format!(
        "{:<27} {:<24} {:<16} {:<14} {:<10} {:<18} {:>10.3} {:>5}",
        text("time"),
        request,
        text("task"),
        method,
        version,
        outcome,
        latency,
        rows
    )
}
