//! The audit log's writer: records (one JSON line each, built by the prediction core) pass
//! through a bounded queue to one writer thread, which appends them to a file rotated by size,
//! or to stdout for a log shipper.
//!
//! The request path never waits here: [`AuditWriter::submit`] is a `try_send`. A full queue
//! drops the record and counts it (`modeld_audit_dropped_total{task}`). A failed write is
//! counted (`modeld_audit_write_errors_total`), logged once per run of failures, and the file
//! is opened again for the next record. [`AuditWriter::close`] writes everything queued before
//! it returns: shutdown calls it after the last call is answered.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec};

use super::Metrics;
pub use crate::config::AuditTarget;

/// How the writer stores records.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub target: AuditTarget,
    /// Rotate the file before it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` newest to `<path>.N` oldest); 0 keeps none.
    pub keep_files: usize,
    /// Records that may wait for the writer; past it records are dropped and counted.
    pub queue: usize,
}

enum Message {
    Record(Vec<u8>),
    /// Write what is queued, flush, sync and stop.
    Close,
}

/// The queue's sending end and the writer thread. Shared by every call through the core.
pub struct AuditWriter {
    tx: SyncSender<Message>,
    dropped: IntCounterVec,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AuditWriter {
    /// Starts the writer thread. The file is opened by the writer, so a path that blocks on
    /// open (a FIFO nobody reads) stalls only the writer.
    pub fn start(options: WriterOptions, metrics: &Metrics) -> io::Result<AuditWriter> {
        let (tx, rx) = mpsc::sync_channel(options.queue.max(1));
        let sink = Sink { options, file: None, size: 0 };
        let counters = (metrics.audit_records.clone(), metrics.audit_write_errors.clone());
        let thread = std::thread::Builder::new()
            .name("modeld-audit".into())
            .spawn(move || write_loop(rx, sink, counters.0, counters.1))?;
        Ok(AuditWriter { tx, dropped: metrics.audit_dropped.clone(), thread: Mutex::new(Some(thread)) })
    }

    /// Queues a record without waiting; when the queue is full the record is dropped and
    /// counted under `task` (a bounded label value). Returns whether it was queued.
    pub fn submit(&self, task: &str, record: Vec<u8>) -> bool {
        match self.tx.try_send(Message::Record(record)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.with_label_values(&[task]).inc();
                false
            }
        }
    }

    /// Writes every queued record, syncs the file and stops the writer, waiting at most
    /// `timeout` (a writer stalled on a pipe nobody reads must not hold the process forever).
    /// Returns whether the writer finished. Blocks: call it off the async workers.
    pub fn close(&self, timeout: Duration) -> bool {
        let Some(thread) = self.thread.lock().expect("the writer handle lock is never poisoned").take() else {
            return true;
        };
        let tx = self.tx.clone();
        let (done_tx, done_rx) = mpsc::channel();
        // The Close message queues behind every record already accepted; a helper thread waits
        // for queue space and for the writer, so this wait stays bounded.
        std::thread::spawn(move || {
            let _ = tx.send(Message::Close);
            let _ = thread.join();
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

/// How long the writer lets records gather before it takes them, once it is awake. A writer
/// woken for every record costs a thread wake-up and a write per call; in batches it costs a
/// few hundred of each per second whatever the rate, and a record waits at most this long.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Receives records until closed. Idle, the writer blocks for the next record; busy, it wakes
/// every [`BATCH_WINDOW`], writes everything queued and flushes, so records reach the file within
/// milliseconds and senders never wake it.
fn write_loop(rx: Receiver<Message>, sink: Sink, written: IntCounter, errors: IntCounter) {
    let mut w = Writer { sink, written, errors, failing: 0, closing: false };
    while let Ok(first) = rx.recv() {
        w.take(first);
        loop {
            let mut taken = 0usize;
            while let Ok(message) = rx.try_recv() {
                w.take(message);
                taken += 1;
            }
            let flushed = w.sink.flush(w.closing);
            w.outcome(flushed);
            if w.closing {
                return;
            }
            if taken == 0 {
                break;
            }
            std::thread::sleep(BATCH_WINDOW);
        }
    }
    // Every sender is gone without a Close: write out what was buffered.
    let _ = w.sink.flush(true);
}

/// The writer thread's state.
struct Writer {
    sink: Sink,
    written: IntCounter,
    errors: IntCounter,
    /// Failed writes in the current run of failures: only the first is logged.
    failing: u64,
    closing: bool,
}

impl Writer {
    fn take(&mut self, message: Message) {
        match message {
            Message::Record(record) => {
                let result = self.sink.write(&record);
                if result.is_ok() {
                    self.written.inc();
                }
                self.outcome(result);
            }
            Message::Close => self.closing = true,
        }
    }

    fn outcome(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) if self.failing > 0 => {
                tracing::info!(failed_writes = self.failing, "audit log writes resumed");
                self.failing = 0;
            }
            Ok(()) => {}
            Err(e) => {
                self.errors.inc();
                if self.failing == 0 {
                    let target = self.sink.describe();
                    tracing::error!(error = %e, %target, "cannot write the audit log; records are being lost");
                }
                self.failing += 1;
                self.sink.file = None;
            }
        }
    }
}

/// The open output and its size, for rotation.
struct Sink {
    options: WriterOptions,
    file: Option<BufWriter<Box<dyn Write + Send>>>,
    size: u64,
}

impl Sink {
    fn describe(&self) -> String {
        match &self.options.target {
            AuditTarget::Stdout => "stdout".to_owned(),
            AuditTarget::File(p) => p.display().to_string(),
        }
    }

    fn write(&mut self, record: &[u8]) -> io::Result<()> {
        if let AuditTarget::File(path) = &self.options.target {
            if self.file.is_some() && self.size > 0 && self.size + record.len() as u64 > self.options.max_bytes {
                self.file = None;
                rotate(path, self.options.keep_files)?;
            }
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let (out, size): (Box<dyn Write + Send>, u64) = match &self.options.target {
                    AuditTarget::Stdout => (Box::new(io::stdout()), 0),
                    AuditTarget::File(path) => {
                        let file = OpenOptions::new().create(true).append(true).open(path)?;
                        let size = file.metadata()?.len();
                        (Box::new(file), size)
                    }
                };
                self.size = size;
                self.file.insert(BufWriter::with_capacity(64 << 10, out))
            }
        };
        file.write_all(record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    /// Hands buffered records to the OS; with `sync`, also to the disk.
    fn flush(&mut self, sync: bool) -> io::Result<()> {
        let Some(file) = &mut self.file else { return Ok(()) };
        file.flush()?;
        if sync {
            if let AuditTarget::File(path) = &self.options.target {
                File::open(path)?.sync_all()?;
            }
        }
        Ok(())
    }
}

/// `<path>` becomes `<path>.1`, `.1` becomes `.2`, and so on; the oldest beyond `keep` goes.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let numbered = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, numbered(1))
}

/// The files of an audit log, oldest first: `<path>.N` .. `<path>.1`, then `<path>`. Missing
/// ones are skipped.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = Vec::new();
    let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return vec![path.to_owned()];
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(n) = name.to_str().and_then(|n| n.strip_prefix(base)).and_then(|s| s.strip_prefix('.')) else {
                continue;
            };
            if let Ok(n) = n.parse::<usize>() {
                rotated.push((n, path.with_file_name(&name)));
            }
        }
    }
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_owned());
    }
    files
}

/// `since_epoch` as RFC 3339 in UTC with microseconds: `2026-11-30T22:04:05.123456Z`. Fixed
/// width, so records sort and compare as text too.
pub fn format_time(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_micros()
    )
}

/// Parses `YYYY-MM-DD`, optionally followed by `THH:MM[:SS[.fraction]]` and `Z` or `±HH:MM`
/// (no zone = UTC), into microseconds since the epoch.
pub fn parse_time(text: &str) -> Option<i64> {
    let num =
        |s: &str| -> Option<i64> { (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())? };
    let (date, rest) = text.split_at_checked(10)?;
    let mut parts = date.split('-');
    let (y, m, d) = (num(parts.next()?)?, num(parts.next()?)?, num(parts.next()?)?);
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut micros = days_from_civil(y, m, d) * 86_400_000_000;
    let Some(time) = rest.strip_prefix(['T', 't', ' ']) else {
        return rest.is_empty().then_some(micros);
    };
    let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => (time, ""),
    };
    let (clock, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut fields = clock.split(':');
    let (h, min) = (num(fields.next()?)?, num(fields.next()?)?);
    let sec = fields.next().map_or(Some(0), num)?;
    if fields.next().is_some() || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    micros += (h * 3600 + min * 60 + sec) * 1_000_000;
    if !fraction.is_empty() {
        num(fraction)?;
        let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(6).collect();
        micros += digits.parse::<i64>().ok()?;
    }
    match offset {
        "" | "Z" | "z" => {}
        _ => {
            let sign = if offset.starts_with('-') { 1 } else { -1 };
            let (oh, om) = offset[1..].split_once(':')?;
            micros += sign * (num(oh)? * 3600 + num(om)? * 60) * 1_000_000;
        }
    }
    Some(micros)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_format_and_parse_both_ways() {
        let t = Duration::from_micros(1_796_162_645_123_456);
        let text = format_time(t);
        assert_eq!(text, "2026-12-01T22:04:05.123456Z");
        assert_eq!(parse_time(&text), Some(t.as_micros() as i64));
        assert_eq!(parse_time("2026-12-01"), Some(1_796_083_200_000_000));
        assert_eq!(parse_time("2026-12-01T23:04:05.123456+01:00"), Some(t.as_micros() as i64));
        assert_eq!(parse_time("2026-12-01T22:04"), Some(1_796_162_640_000_000));
        assert_eq!(format_time(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_time(Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
        for bad in ["yesterday", "2026-13-01", "2026-12-01T25:00", "2026-12-01Tnoon", "2026/12/01"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    use super::*;

    fn options(path: &Path, max_bytes: u64, keep_files: usize) -> WriterOptions {
        WriterOptions { target: AuditTarget::File(path.to_owned()), max_bytes, keep_files, queue: 64 }
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let metrics = Metrics::new();
        let writer = AuditWriter::start(options(&path, 100, 2), &metrics).unwrap();
        for i in 0..20 {
            assert!(writer.submit("t", format!("{{\"n\":{i:02},\"pad\":\"{}\"}}\n", "x".repeat(20)).into_bytes()));
        }
        assert!(writer.close(Duration::from_secs(10)));
        let files = log_files(&path);
        assert_eq!(files, [dir.path().join("audit.log.2"), dir.path().join("audit.log.1"), path.clone()]);
        let lines: Vec<String> = files
            .iter()
            .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(String::from).collect::<Vec<_>>())
            .collect();
        // Two records of 38 bytes fit under 100 bytes: the newest 6 records survive, in order.
        let numbers: Vec<u32> = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap() as u32)
            .collect();
        assert_eq!(numbers, (14..20).collect::<Vec<_>>());
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 100, "{} is over the limit", f.display());
        }
        assert_eq!(metrics.audit_records.get(), 20);
    }

    #[test]
    fn a_write_error_is_counted_and_writing_resumes_when_the_file_can_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("audit.log");
        let metrics = Metrics::new();
        let writer = AuditWriter::start(options(&path, 1 << 20, 1), &metrics).unwrap();
        assert!(writer.submit("t", b"{\"n\":1}\n".to_vec()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.audit_write_errors.get() == 0 {
            assert!(std::time::Instant::now() < deadline, "the failed write was never counted");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::create_dir(dir.path().join("missing")).unwrap();
        assert!(writer.submit("t", b"{\"n\":2}\n".to_vec()));
        assert!(writer.close(Duration::from_secs(10)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
        assert_eq!(metrics.audit_write_errors.get(), 1);
    }
}
