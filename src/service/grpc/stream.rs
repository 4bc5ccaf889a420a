//! The BatchPredict transport loop: chunks in, answers out, in order, with back-pressure and
//! shutdown. Scoring, checks and metrics are the core's [`StreamSession`]; this file only moves
//! wire chunks to it and its answers back.
//!
//! States: *open* (no chunk yet) -> *bound* (the first chunk fixed task and version) -> ended,
//! by the caller closing its side (OK), a chunk-level error (its status), the caller going away
//! (CANCELLED), or shutdown (the chunk in hand is answered, then UNAVAILABLE).

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Status, Streaming};

use super::convert::{to_pb, value_of};
use crate::{
    pb::{self, row_result::Outcome},
    predict::{ChunkAnswer, ErrorKind, PredictError, StreamSession},
    preprocess::RowView,
    schema::Value,
    service::{health::Readiness, status},
    telemetry::GaugeGuard,
};

/// Chunks answered but not yet taken by the transport, per stream. With the one chunk being
/// worked on, a stream holds at most `STREAM_BUFFER + 1` chunks: a slow reader stalls its own
/// stream here, the server stops reading its chunks, and HTTP/2 flow control stalls its writer.
pub const STREAM_BUFFER: usize = 2;

/// An answer on its way out, holding its chunk's in-flight mark until the transport takes it.
type Outgoing = (GaugeGuard, Result<pb::BatchPredictResponse, Status>);

/// Runs the stream on `bulk` and returns the response stream for the transport.
pub fn spawn(
    session: StreamSession,
    inbound: Streaming<pb::BatchPredictRequest>,
    readiness: Readiness,
    bulk: &tokio::runtime::Handle,
) -> impl Stream<Item = Result<pb::BatchPredictResponse, Status>> + Send + 'static {
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(STREAM_BUFFER);
    bulk.spawn(async move {
        let mut session = session;
        let mut inbound = inbound;
        let outcome = run(&mut session, &mut inbound, &out_tx, &readiness).await;
        session.finish(outcome);
    });
    ReceiverStream::new(out_rx).map(|(_in_flight, response)| response)
}

/// Answers chunks in order until the client closes its side, the client goes away, or
/// shutdown begins. Returns how the stream ended.
async fn run(
    session: &mut StreamSession,
    inbound: &mut Streaming<pb::BatchPredictRequest>,
    out_tx: &mpsc::Sender<Outgoing>,
    readiness: &Readiness,
) -> Result<(), ErrorKind> {
    let mut columns: Vec<String> = Vec::new();
    let mut chunk_index = 0u64;
    loop {
        let next = tokio::select! {
            // Shutdown: the chunk in hand was answered; stop taking new ones.
            _ = readiness.drained() => {
                let _ = out_tx.send((session.chunk_received(), Err(PredictError::ShuttingDown.into()))).await;
                return Err(ErrorKind::Unavailable);
            }
            // The client stopping its reads also ends up here: no read until the answer is queued.
            next = inbound.message() => next,
            // The client went away: stop working for it.
            _ = out_tx.closed() => return Err(ErrorKind::Cancelled),
        };
        let chunk = match next {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            // A chunk that does not decode (or a broken transport): the caller gets the status,
            // not a clean end of stream. Sending fails harmlessly if the caller is gone.
            Err(status) => {
                let status = status::transport(&status).unwrap_or(status);
                let kind = status::kind_of(status.code());
                let _ = out_tx.send((session.chunk_received(), Err(status))).await;
                return Err(kind);
            }
        };
        let in_flight = session.chunk_received();
        let result = answer(session, &mut columns, chunk, chunk_index).await;
        let failed = result.as_ref().err().map(PredictError::kind);
        let sent = out_tx.send((in_flight, result.map_err(Status::from))).await;
        if let Some(kind) = failed {
            return Err(kind);
        }
        if sent.is_err() {
            return Err(ErrorKind::Cancelled);
        }
        chunk_index += 1;
    }
}

/// One chunk: bind it to the stream, name its positional values, score it, and put the
/// answers in wire form.
async fn answer(
    session: &mut StreamSession,
    columns: &mut Vec<String>,
    chunk: pb::BatchPredictRequest,
    chunk_index: u64,
) -> Result<pb::BatchPredictResponse, PredictError> {
    let pb::BatchPredictRequest { task, version, rows, columns: new_columns, reason_codes } = chunk;
    session.bind(&task, &version, reason_codes)?;
    if !new_columns.is_empty() {
        *columns = new_columns;
    }
    let views: Vec<_> = rows.iter().map(|row| Positional { columns, row }).collect();
    if let Some((row, r)) =
        rows.iter().enumerate().find(|(_, r)| !r.values.is_empty() && r.values.len() != columns.len())
    {
        let e = PredictError::ValueCount { row, values: r.values.len(), columns: columns.len() };
        return Err(session.reject(&views, e));
    }
    let ChunkAnswer { bundle, outcomes } = session.score_chunk(&views).await?;
    drop(views);
    let classes = bundle.class_labels();
    let results = outcomes
        .into_iter()
        .zip(rows)
        .map(|(outcome, row)| {
            let outcome = match outcome {
                Ok(p) => Outcome::Prediction(to_pb(p, row.row_id, classes)),
                Err(e) => Outcome::Error(pb::RowError {
                    row_id: e.row_id,
                    row_index: e.row_index as u32,
                    field: e.field,
                    reason: e.reason.to_string(),
                }),
            };
            pb::RowResult { outcome: Some(outcome) }
        })
        .collect();
    Ok(pb::BatchPredictResponse {
        task: session.task().to_owned(),
        version: bundle.version.clone(),
        chunk_index,
        class_names: classes.to_vec(),
        results,
    })
}

/// A stream row read through its stream's column names.
struct Positional<'a> {
    columns: &'a [String],
    row: &'a pb::Row,
}

impl RowView for Positional<'_> {
    fn row_id(&self) -> &str {
        &self.row.row_id
    }

    fn features(&self) -> impl Iterator<Item = (&str, Option<Value<'_>>)> {
        let positional =
            self.columns.iter().zip(&self.row.values).map(|(name, value)| (name.as_str(), value_of(value)));
        self.row.features().chain(positional)
    }
}
