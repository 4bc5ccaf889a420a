//! `modeld label`: streams a CSV or JSONL file of rows through BatchPredict and writes one
//! output record per input row, in input order.
//!
//! Input: CSV with a header of feature names (an optional `row_id` column), or JSONL with one
//! object per line (`{"row_id": .., "features": {..}}` or a flat object of features). CSV cells
//! are typed by the live schema that GetVersion describes: a categorical cell is sent as text even
//! when it looks like a number, a numeric cell as a number. Columns the schema does not know are
//! sent as integers or numbers when they parse as such, else as text. Empty cells are missing
//! values. A line that cannot be read is reported with its line number and the job goes on.
//! Output (by extension): JSONL records, or CSV with one probability column per class (one value
//! column per target for a regressor).
//!
//! Three tasks run at once: the reader (file -> chunks), the gRPC stream, and the writer, with
//! bounded channels between them so memory does not grow with the file.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use super::connect;
use crate::pb::{self, inference_client::InferenceClient, row_result::Outcome, value::Kind};
use tokio::sync::mpsc;

/// What `modeld label` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct LabelArgs {
    /// Server address, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "MODELD_LABEL_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Task to score with.
    #[arg(long)]
    pub task: String,
    /// Version to pin (default: the live version when the stream opens).
    #[arg(long)]
    pub version: Option<String>,
    /// Input file: .csv or .jsonl.
    #[arg(long)]
    pub input: PathBuf,
    /// Output file: .jsonl or .csv.
    #[arg(long)]
    pub output: PathBuf,
    /// Scorecards: reason codes per row (the fields that cost the most points), 0 for none.
    #[arg(long, default_value_t = 0)]
    pub reason_codes: u32,
    /// Rows per chunk sent to the server.
    #[arg(long, default_value_t = 512)]
    pub chunk_rows: usize,
    #[command(flatten)]
    pub auth: connect::ClientAuth,
}

/// Why a labelling job failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: unsupported file type (use .csv or .jsonl)")]
    Format(PathBuf),
    #[error("{path}: cannot read the CSV header: {source}")]
    Header {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("server address or TLS settings: {0}")]
    Address(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("stream ended after {answered} of {sent} chunks")]
    Incomplete { answered: u64, sent: u64 },
}

/// What a finished job reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rows: u64,
    pub row_errors: u64,
    pub bad_lines: u64,
    pub version: String,
    pub seconds: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Csv,
    Jsonl,
}

fn format_of(path: &Path) -> Result<Format, LabelError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
        _ => Err(LabelError::Format(path.to_owned())),
    }
}

/// One input line's fate, in input order: a row sent to the server, or a line that was bad.
enum Entry {
    Row,
    Bad { line: u64, error: String },
}

/// Runs a labelling job to the end.
pub async fn run(args: &LabelArgs) -> Result<Summary, LabelError> {
    let started = Instant::now();
    let (in_format, out_format) = (format_of(&args.input)?, format_of(&args.output)?);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LabelError::Io { path, source }
    };
    let total_lines = count_lines(&args.input).map_err(io(&args.input))?;
    let authorization = args.auth.authorization().map_err(LabelError::Address)?;
    let channel = args
        .auth
        .endpoint(&args.addr)
        .map_err(LabelError::Address)?
        .connect()
        .await
        .map_err(|source| LabelError::Connect { addr: args.addr.clone(), source })?;
    let mut client = InferenceClient::new(channel).max_decoding_message_size(256 << 20);
    // The live schema types CSV cells. A task that is not serving fails here, before any work.
    let live = client
        .get_version(connect::request(pb::GetVersionRequest { task: args.task.clone() }, &authorization))
        .await?
        .into_inner();
    let types: HashMap<String, String> = live.fields.into_iter().map(|f| (f.name, f.r#type)).collect();

    // Reader thread: file -> chunks (to the stream) and entries (to the writer), both bounded.
    let (chunk_tx, chunk_rx) = mpsc::channel::<pb::BatchPredictRequest>(4);
    let (entries_tx, mut entries_rx) = mpsc::channel::<Vec<Entry>>(8);
    let reader = {
        let (args, path) = (args.clone(), args.input.clone());
        std::thread::spawn(move || read_chunks(&args, in_format, &types, chunk_tx, entries_tx).map_err(io(&path)))
    };

    let chunks = connect::request(tokio_stream::wrappers::ReceiverStream::new(chunk_rx), &authorization);
    let mut responses = client.batch_predict(chunks).await?.into_inner();
    let mut out = Output::create(&args.output, out_format).map_err(io(&args.output))?;
    let mut summary = Summary::default();
    let progress = Progress::new(total_lines);
    let mut answered = 0u64;
    loop {
        let response = responses.message().await?;
        let Some(response) = response else { break };
        if summary.version.is_empty() {
            summary.version.clone_from(&response.version);
            let first = response.results.iter().find_map(|r| match &r.outcome {
                Some(Outcome::Prediction(p)) => Some(p),
                _ => None,
            });
            let targets = first.map_or(1, |p| p.values.len());
            // Scorecards answer with a score: their files add it and the reason columns.
            let reasons = first.filter(|p| p.score.is_some()).map(|_| args.reason_codes as usize);
            out.header(&response.class_names, targets, reasons).map_err(io(&args.output))?;
        }
        let entries = entries_rx.recv().await.unwrap_or_default();
        let mut results = response.results.into_iter();
        for entry in entries {
            match entry {
                Entry::Row => {
                    let Some(result) = results.next() else { break };
                    match result.outcome {
                        Some(Outcome::Prediction(p)) => out.prediction(&p, &response.version),
                        Some(Outcome::Error(e)) => {
                            summary.row_errors += 1;
                            out.row_error(&e.row_id, &e.field, &e.reason)
                        }
                        None => out.row_error("", "", "no outcome"),
                    }
                    .map_err(io(&args.output))?;
                    summary.rows += 1;
                }
                Entry::Bad { line, error } => {
                    summary.bad_lines += 1;
                    eprintln!("{}:{line}: {error}", args.input.display());
                    out.bad_line(line, &error).map_err(io(&args.output))?;
                }
            }
        }
        answered += 1;
        progress.update(summary.rows + summary.bad_lines, started);
    }
    // Bad lines after the last chunk travel alone.
    while let Some(entries) = entries_rx.recv().await {
        for entry in entries {
            if let Entry::Bad { line, error } = entry {
                summary.bad_lines += 1;
                eprintln!("{}:{line}: {error}", args.input.display());
                out.bad_line(line, &error).map_err(io(&args.output))?;
            }
        }
    }
    progress.finish();
    let sent = reader.join().expect("the reader thread does not panic")?;
    out.finish().map_err(io(&args.output))?;
    if answered != sent {
        return Err(LabelError::Incomplete { answered, sent });
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn count_lines(path: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for line in BufReader::new(File::open(path)?).lines() {
        line?;
        n += 1;
    }
    Ok(n)
}

/// Reads the input, sends chunks and the per-line entries; returns the number of chunks sent.
fn read_chunks(
    args: &LabelArgs,
    format: Format,
    types: &HashMap<String, String>,
    chunk_tx: mpsc::Sender<pb::BatchPredictRequest>,
    entries_tx: mpsc::Sender<Vec<Entry>>,
) -> std::io::Result<u64> {
    let mut sent = 0u64;
    // CSV rows travel positionally: the header's names go once, in the first chunk.
    let mut columns: Vec<String> = Vec::new();
    let mut csv_reader = match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(false).from_path(&args.input)?;
            columns = reader.headers()?.iter().map(str::to_owned).collect();
            Some(reader)
        }
        Format::Jsonl => None,
    };
    let header = columns.clone();
    let header_types: Vec<Option<&str>> = header.iter().map(|c| types.get(c).map(String::as_str)).collect();
    columns.retain(|c| c != "row_id");
    let mut rows = Vec::with_capacity(args.chunk_rows);
    let mut entries = Vec::with_capacity(args.chunk_rows);
    // Entries without rows (bad lines after the last row) only occur at the end of the file.
    let mut flush = |rows: &mut Vec<pb::Row>, entries: &mut Vec<Entry>| -> bool {
        if !rows.is_empty() {
            let first = sent == 0;
            let chunk = pb::BatchPredictRequest {
                task: if first { args.task.clone() } else { String::new() },
                version: args.version.clone().unwrap_or_default(),
                rows: std::mem::take(rows),
                columns: if first { columns.clone() } else { Vec::new() },
                reason_codes: args.reason_codes,
            };
            if chunk_tx.blocking_send(chunk).is_err() {
                return false;
            }
            sent += 1;
        }
        entries.is_empty() || entries_tx.blocking_send(std::mem::take(entries)).is_ok()
    };
    let mut each = |line: u64, row: Result<pb::Row, String>| -> bool {
        match row {
            Ok(mut row) => {
                if row.row_id.is_empty() {
                    row.row_id = format!("line-{line}");
                }
                rows.push(row);
                entries.push(Entry::Row);
            }
            Err(error) => entries.push(Entry::Bad { line, error }),
        }
        rows.len() < args.chunk_rows || flush(&mut rows, &mut entries)
    };
    match format {
        Format::Jsonl => {
            for (i, line) in BufReader::new(File::open(&args.input)?).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                if !each(i as u64 + 1, json_row(&line)) {
                    break;
                }
            }
        }
        Format::Csv => {
            let reader = csv_reader.as_mut().expect("opened above for CSV");
            for record in reader.records() {
                let (line, row) = match record {
                    Ok(r) => (r.position().map_or(0, |p| p.line()), Ok(csv_row(&header, &header_types, &r))),
                    Err(e) => (e.position().map_or(0, |p| p.line()), Err(e.to_string())),
                };
                if !each(line, row) {
                    break;
                }
            }
        }
    }
    flush(&mut rows, &mut entries);
    Ok(sent)
}

/// A CSV record as a positional row (values in header order, `row_id` taken out), each cell
/// typed by its column's schema type when the schema knows the column.
fn csv_row(header: &[String], types: &[Option<&str>], record: &csv::StringRecord) -> pb::Row {
    let mut row = pb::Row { values: Vec::with_capacity(header.len()), ..Default::default() };
    for ((name, ty), cell) in header.iter().zip(types).zip(record.iter()) {
        if name == "row_id" {
            row.row_id = cell.to_owned();
            continue;
        }
        let text = || Some(Kind::Text(cell.to_owned()));
        let guess = || {
            if let Ok(i) = cell.parse::<i64>() {
                Some(Kind::Integer(i))
            } else if let Ok(x) = cell.parse::<f64>() {
                Some(Kind::Number(x))
            } else {
                text()
            }
        };
        let kind = match *ty {
            _ if cell.is_empty() => None,
            Some("categorical") => text(),
            Some("boolean") => match cell.to_ascii_lowercase().as_str() {
                "true" | "1" => Some(Kind::Flag(true)),
                "false" | "0" => Some(Kind::Flag(false)),
                _ => text(),
            },
            // Numbers, and columns the schema does not know; the server reports what it rejects.
            _ => guess(),
        };
        row.values.push(pb::Value { kind });
    }
    row
}

fn json_row(line: &str) -> Result<pb::Row, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("expected a JSON object".into());
    };
    let row_id = match object.remove("row_id") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let features = match object.remove("features") {
        Some(serde_json::Value::Object(f)) => f,
        Some(_) => return Err("`features` must be an object".into()),
        None => object,
    };
    let mut row = pb::Row { row_id, ..Default::default() };
    for (name, value) in features {
        let kind = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(b) => Kind::Flag(b),
            serde_json::Value::Number(n) => {
                n.as_i64().map_or_else(|| Kind::Number(n.as_f64().unwrap_or(f64::NAN)), Kind::Integer)
            }
            serde_json::Value::String(s) => Kind::Text(s),
            other => return Err(format!("feature `{name}`: unsupported value {other}")),
        };
        row.features.insert(name, pb::Value { kind: Some(kind) });
    }
    Ok(row)
}

/// The output file in either format.
struct Output {
    format: Format,
    file: BufWriter<File>,
    /// Output columns after `label` (classifiers) or after the first value (regressors).
    classes: usize,
    regressor: bool,
    /// Scorecards: the number of reason columns after `score`.
    reasons: Option<usize>,
}

impl Output {
    fn create(path: &Path, format: Format) -> std::io::Result<Output> {
        Ok(Output { format, file: BufWriter::new(File::create(path)?), classes: 0, regressor: false, reasons: None })
    }

    /// Classifiers: `row_id,label,p_<class>..,version,error`; regressors (no classes):
    /// `row_id,value,version,error`, or `value_0..` for several targets. Scorecards add
    /// `score` and `reason_1..` (field names, worst first) after the probabilities.
    fn header(&mut self, classes: &[String], targets: usize, reasons: Option<usize>) -> std::io::Result<()> {
        self.reasons = reasons;
        let mut columns: Vec<String> = if classes.is_empty() {
            self.regressor = true;
            match targets {
                1 => vec!["value".to_owned()],
                k => (0..k).map(|i| format!("value_{i}")).collect(),
            }
        } else {
            std::iter::once("label".to_owned()).chain(classes.iter().map(|c| format!("p_{c}"))).collect()
        };
        if let Some(n) = reasons {
            columns.push("score".to_owned());
            columns.extend((1..=n).map(|i| format!("reason_{i}")));
        }
        // Row errors leave every output column empty.
        self.classes = columns.len() - 1;
        if self.format == Format::Csv {
            writeln!(
                self.file,
                "row_id,{},version,error",
                columns.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",")
            )?;
        }
        Ok(())
    }

    fn prediction(&mut self, p: &pb::Prediction, version: &str) -> std::io::Result<()> {
        match self.format {
            Format::Jsonl => {
                let mut record = if self.regressor {
                    serde_json::json!({"row_id": p.row_id, "values": p.values, "version": version})
                } else {
                    serde_json::json!({"row_id": p.row_id, "label": p.label, "probabilities": p.probabilities, "version": version})
                };
                if let Some(score) = p.score {
                    record["score"] = score.into();
                    record["reasons"] = p
                        .reasons
                        .iter()
                        .map(|r| {
                            serde_json::json!({"field": r.field, "bin": r.bin, "points": r.points, "best_points": r.best_points})
                        })
                        .collect();
                }
                writeln!(self.file, "{record}")
            }
            Format::Csv if self.regressor => {
                let values: Vec<String> = p.values.iter().map(f64::to_string).collect();
                writeln!(self.file, "{},{},{},", csv_cell(&p.row_id), values.join(","), csv_cell(version))
            }
            Format::Csv => {
                let mut probs: Vec<String> = p.probabilities.iter().map(f32::to_string).collect();
                if let Some(n) = self.reasons {
                    probs.push(p.score.map(|s| s.to_string()).unwrap_or_default());
                    probs.extend((0..n).map(|i| p.reasons.get(i).map(|r| csv_cell(&r.field)).unwrap_or_default()));
                }
                writeln!(
                    self.file,
                    "{},{},{},{},",
                    csv_cell(&p.row_id),
                    csv_cell(&p.label),
                    probs.join(","),
                    csv_cell(version)
                )
            }
        }
    }

    fn row_error(&mut self, row_id: &str, field: &str, reason: &str) -> std::io::Result<()> {
        match self.format {
            Format::Jsonl => {
                writeln!(
                    self.file,
                    "{}",
                    serde_json::json!({"row_id": row_id, "error": {"field": field, "reason": reason}})
                )
            }
            Format::Csv => {
                let empty = ",".repeat(self.classes);
                writeln!(self.file, "{},{empty},,{}", csv_cell(row_id), csv_cell(&format!("field `{field}`: {reason}")))
            }
        }
    }

    fn bad_line(&mut self, line: u64, error: &str) -> std::io::Result<()> {
        match self.format {
            Format::Jsonl => writeln!(self.file, "{}", serde_json::json!({"line": line, "error": {"reason": error}})),
            Format::Csv => {
                let empty = ",".repeat(self.classes);
                writeln!(self.file, "line-{line},{empty},,{}", csv_cell(&format!("bad input line {line}: {error}")))
            }
        }
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// Rows/s and ETA on a terminal; silent when stderr is a file or pipe.
struct Progress {
    total: u64,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress { total, tty: std::io::stderr().is_terminal() }
    }

    fn update(&self, done: u64, started: Instant) {
        if !self.tty {
            return;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let eta = self.total.saturating_sub(done) as f64 / rate.max(1e-9);
        eprint!("\r{done}/{} rows  {rate:.0} rows/s  ETA {eta:.0} s   ", self.total);
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
