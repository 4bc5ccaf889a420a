//! The V2 faces' error: a kind from the one error table and a message naming the problem.

use crate::predict::{ErrorKind, PredictError};

/// A V2 call's failure: the kind (for the status code) and a message naming the problem.
#[derive(Debug)]
pub struct V2Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl V2Error {
    pub fn invalid(message: String) -> V2Error {
        V2Error { kind: ErrorKind::InvalidArgument, message }
    }
}

impl From<PredictError> for V2Error {
    fn from(e: PredictError) -> V2Error {
        V2Error { kind: e.kind(), message: e.to_string() }
    }
}

impl From<V2Error> for tonic::Status {
    fn from(e: V2Error) -> tonic::Status {
        tonic::Status::new(crate::service::status::code(e.kind), e.message)
    }
}
