//! The one table from domain errors to gRPC statuses (ARCHITECTURE.md §5).
//!
//! | error                                   | code               |
//! |-----------------------------------------|--------------------|
//! | bad request field, bad row              | INVALID_ARGUMENT   |
//! | unknown task or version                 | NOT_FOUND          |
//! | too many queued runs or open streams,   | RESOURCE_EXHAUSTED |
//! | a stream chunk over the size limit      |                    |
//! | task not loaded yet, shutting down      | UNAVAILABLE        |
//! | engine failure                          | INTERNAL           |
//!
//! Deadlines are enforced by the transport (DEADLINE_EXCEEDED / CANCELLED) before a handler
//! could map them.

use tonic::{Code, Status};

use crate::{preprocess::RowError, registry::RegistryError, runner::RunError};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A request field that is wrong regardless of the model.
    #[error("{field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// A request within the wire limits but over a configured size limit.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Row(#[from] RowError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl ServeError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> ServeError {
        ServeError::InvalidField { field, reason: reason.into() }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            ServeError::InvalidField { .. } | ServeError::Row(_) => Code::InvalidArgument,
            ServeError::Registry(RegistryError::UnknownTask(_) | RegistryError::UnknownVersion { .. }) => {
                Code::NotFound
            }
            ServeError::Registry(RegistryError::NotReady { .. }) => Code::Unavailable,
            ServeError::Run(RunError::Overloaded) | ServeError::TooLarge(_) => Code::ResourceExhausted,
            ServeError::Run(RunError::Engine(_) | RunError::Aborted(_)) => Code::Internal,
        }
    }
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Status {
        if e.code() == Code::Internal {
            tracing::error!(error = %e, "model run failed");
        }
        Status::new(e.code(), e.to_string())
    }
}
