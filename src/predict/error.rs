//! The core's one error enum, and the kinds every face maps to its protocol's codes.
//!
//! Faces never build errors of their own for conditions the core knows: they map
//! [`PredictError::kind`] through one table per protocol (`service::status` for gRPC). The
//! kind's [`ErrorKind::name`] is the gRPC code name, which is also the `code` label of
//! `modeld_requests_total` for every face, so dashboards read the same whatever the protocol.

use crate::{
    access::Unauthenticated, engine::EngineError, preprocess::RowError, registry::RegistryError, runner::RunError,
    schema::Echo,
};

/// Everything a prediction can fail with. Each variant is a kind of failure with its data, so
/// a face can report the row and field, the limit, or the versions loaded, in its own shape.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// A unary request that names no task.
    #[error("task: must name a task")]
    MissingTask,
    /// A stream whose first chunk names no task.
    #[error("task: the first chunk must name a task")]
    MissingStreamTask,
    /// A later chunk names another task than the stream's.
    #[error("task: `{}` differs from the stream's task `{stream}`", Echo(chunk))]
    TaskChanged { stream: String, chunk: String },
    #[error("rows: at least one row is required")]
    NoRows,
    /// More rows than `max_rows` in one request or stream chunk. Not retryable as it is, so it is
    /// an invalid argument everywhere, never a resource condition.
    #[error("rows: {rows} rows exceed the limit of {limit} per {unit}")]
    TooManyRows { rows: usize, limit: usize, unit: &'static str },
    /// A unary row with values by position: only a stream names their columns.
    #[error(
        "values: row {row} has positional values; Predict takes named features (positional values need BatchPredict's columns)"
    )]
    PositionalValues { row: usize },
    /// A positional row whose value count does not match the stream's columns.
    #[error("values: row {row} has {values} values for {columns} columns")]
    ValueCount { row: usize, values: usize, columns: usize },
    /// The rollout policy splits by a key that this row lacks, or that differs from the first
    /// row's: one version answers a whole request, so its rows must share one key.
    #[error("row {row}: {field}: {reason}")]
    StickyKey { row: usize, field: String, reason: &'static str },
    /// A row that cannot be encoded: names the row, the field and the reason.
    #[error(transparent)]
    BadRow(#[from] RowError),
    /// A request a face could not read into rows: an Open Inference Protocol tensor with a
    /// datatype, shape or name the model does not take. The message names the input.
    #[error("{0}")]
    Tensors(String),
    /// Unknown task, unknown version, or no live version yet: the registry says which, with
    /// the versions loaded or the reason the task is not serving.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// No credentials, or none a known caller's (callers file on).
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] Unauthenticated),
    /// An authenticated caller calling a task it is not allowed.
    #[error("caller `{caller}` may not call task `{}`", Echo(task))]
    PermissionDenied { caller: String, task: String },
    /// The server is draining: a stream's remaining chunks must go elsewhere.
    #[error("server shutting down: send the remaining chunks again elsewhere")]
    ShuttingDown,
    /// The model-run queue is full.
    #[error("server overloaded: too many model runs queued, retry later")]
    Overloaded,
    #[error("too many open streams (limit {limit}), retry later")]
    TooManyStreams { limit: usize },
    /// The caller's deadline passed before the work was done.
    #[error("deadline exceeded before the model ran")]
    Deadline,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model run aborted: {0}")]
    Aborted(#[source] tokio::task::JoinError),
}

/// What kind of failure an error is: the protocol-neutral classes that each face's table maps
/// to its own codes. Named like the gRPC codes they become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    /// The caller went away or cancelled.
    Cancelled,
    Internal,
    /// A transport failure the core cannot classify.
    Unknown,
    Unauthenticated,
    PermissionDenied,
}

impl ErrorKind {
    /// Every kind, for tables and their tests.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::ResourceExhausted,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Cancelled,
        ErrorKind::Internal,
        ErrorKind::Unknown,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
    ];

    /// The gRPC code name, as grpc-status documentation spells it: the `code` metric label.
    /// The gRPC status code number (`rpc.grpc.status_code` in traces).
    pub const fn code(self) -> i64 {
        match self {
            ErrorKind::Cancelled => 1,
            ErrorKind::Unknown => 2,
            ErrorKind::InvalidArgument => 3,
            ErrorKind::DeadlineExceeded => 4,
            ErrorKind::NotFound => 5,
            ErrorKind::PermissionDenied => 7,
            ErrorKind::ResourceExhausted => 8,
            ErrorKind::Internal => 13,
            ErrorKind::Unavailable => 14,
            ErrorKind::Unauthenticated => 16,
        }
    }

    /// Whether the failure is the server's own, which the OpenTelemetry RPC conventions mark
    /// as an error on the server span; a caller's mistake is not.
    pub const fn server_fault(self) -> bool {
        matches!(self, ErrorKind::Unknown | ErrorKind::DeadlineExceeded | ErrorKind::Internal | ErrorKind::Unavailable)
    }

    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorKind::Cancelled => "CANCELLED",
            ErrorKind::Internal => "INTERNAL",
            ErrorKind::Unknown => "UNKNOWN",
            ErrorKind::Unauthenticated => "UNAUTHENTICATED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
        }
    }
}

impl PredictError {
    /// The kind of this error: the same condition is the same kind on every face and method.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PredictError::MissingTask
            | PredictError::MissingStreamTask
            | PredictError::TaskChanged { .. }
            | PredictError::NoRows
            | PredictError::TooManyRows { .. }
            | PredictError::ValueCount { .. }
            | PredictError::PositionalValues { .. }
            | PredictError::StickyKey { .. }
            | PredictError::BadRow(_)
            | PredictError::Tensors(_) => ErrorKind::InvalidArgument,
            PredictError::Registry(RegistryError::UnknownTask(_) | RegistryError::UnknownVersion { .. }) => {
                ErrorKind::NotFound
            }
            PredictError::Registry(RegistryError::NotReady { .. }) | PredictError::ShuttingDown => {
                ErrorKind::Unavailable
            }
            PredictError::Overloaded | PredictError::TooManyStreams { .. } => ErrorKind::ResourceExhausted,
            PredictError::Deadline => ErrorKind::DeadlineExceeded,
            PredictError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            PredictError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            PredictError::Engine(_) | PredictError::Aborted(_) => ErrorKind::Internal,
        }
    }
}

impl From<RunError> for PredictError {
    fn from(e: RunError) -> PredictError {
        match e {
            RunError::Overloaded => PredictError::Overloaded,
            RunError::Deadline => PredictError::Deadline,
            RunError::Engine(e) => PredictError::Engine(e),
            RunError::Aborted(e) => PredictError::Aborted(e),
        }
    }
}
