//! The one table from the core's error kinds to gRPC status codes (ARCHITECTURE.md §5).
//!
//! The core says what kind of failure an error is ([`PredictError::kind`]); this table says
//! which code that kind is on the gRPC wire. The same condition therefore has the same code on
//! every RPC: "too many rows" is INVALID_ARGUMENT in Predict and in a BatchPredict chunk alike.
//!
//! | kind (examples)                                                   | code               |
//! |-------------------------------------------------------------------|--------------------|
//! | missing task, no rows, too many rows, bad row, wrong value count  | INVALID_ARGUMENT   |
//! | (and, from the codec in `pb`, a request that does not decode)     |                    |
//! | unknown task or version                                           | NOT_FOUND          |
//! | model-run queue full, too many open streams                       | RESOURCE_EXHAUSTED |
//! | task not loaded yet, shutting down                                | UNAVAILABLE        |
//! | deadline passed before the model ran                              | DEADLINE_EXCEEDED  |
//! | engine failure                                                    | INTERNAL           |

use tonic::{Code, Status};

use crate::predict::{ErrorKind, PredictError};

/// The gRPC code of a kind of failure.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::Unknown => Code::Unknown,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
    }
}

/// The kind of a failure the transport reported (a stream that broke, a message that did not
/// decode), so that it is counted like the core's own failures.
pub fn kind_of(code: Code) -> ErrorKind {
    ErrorKind::ALL.into_iter().find(|k| self::code(*k) == code).unwrap_or(match code {
        Code::OutOfRange | Code::FailedPrecondition => ErrorKind::InvalidArgument,
        Code::Aborted => ErrorKind::Unavailable,
        Code::DataLoss => ErrorKind::Internal,
        _ => ErrorKind::Unknown,
    })
}

/// The status to send instead of one tonic's transport gave a request before any codec ran, or
/// None to send it as it is:
/// - a message over `max_message_bytes` is OUT_OF_RANGE there; gRPC's convention for a message
///   too large is RESOURCE_EXHAUSTED;
/// - a request cut short (a truncated frame, a unary call without its message) is INTERNAL
///   there, which would page an operator for a caller's bug: it is INVALID_ARGUMENT, like a
///   message that does not decode. (A compressed flag without `grpc-encoding` stays INTERNAL:
///   gRPC's compression specification requires it.)
pub fn transport(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::OutOfRange if message.contains("message length too large") => {
            Some(Status::resource_exhausted(format!("request message over max_message_bytes: {message}")))
        }
        Code::Internal
            if message.starts_with("Unexpected EOF decoding stream")
                || message.starts_with("Missing request message") =>
        {
            Some(Status::invalid_argument(format!("the request is not a valid message: {message}")))
        }
        _ => None,
    }
}

impl From<PredictError> for Status {
    fn from(e: PredictError) -> Status {
        Status::new(code(e.kind()), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `code` metric label the core records must be the code this table sends.
    #[test]
    fn metric_names_match_the_codes_sent() {
        for kind in ErrorKind::ALL {
            let sent = code(kind);
            let name = format!("{sent:?}");
            let spelled: String = kind.name().split('_').map(|w| w[..1].to_owned() + &w[1..].to_lowercase()).collect();
            assert_eq!(name, spelled, "{kind:?}");
            assert_eq!(kind_of(sent), kind);
        }
    }

    #[test]
    fn an_oversize_message_is_resource_exhausted() {
        let tonic_says = Status::out_of_range(
            "Error, decoded message length too large: found 2000000 bytes, the limit is: 1048576 bytes",
        );
        let sent = transport(&tonic_says).unwrap();
        assert_eq!(sent.code(), Code::ResourceExhausted);
        assert!(sent.message().contains("found 2000000 bytes"), "{}", sent.message());
        assert!(transport(&Status::out_of_range("something else")).is_none());
    }

    #[test]
    fn a_request_cut_short_is_invalid_argument() {
        for said in ["Unexpected EOF decoding stream.", "Missing request message."] {
            let sent = transport(&Status::internal(said)).unwrap();
            assert_eq!(sent.code(), Code::InvalidArgument);
            assert!(sent.message().ends_with(said), "{}", sent.message());
        }
        let spec = "protocol error: received message with compressed-flag but no grpc-encoding was specified";
        assert!(transport(&Status::internal(spec)).is_none(), "INTERNAL as gRPC's compression spec requires");
        assert!(transport(&Status::internal("engine failed")).is_none());
    }

    #[test]
    fn too_many_rows_is_invalid_argument_for_requests_and_chunks() {
        for unit in ["request", "chunk"] {
            let status = Status::from(PredictError::TooManyRows { rows: 5, limit: 3, unit });
            assert_eq!(status.code(), Code::InvalidArgument);
            assert_eq!(status.message(), format!("rows: 5 rows exceed the limit of 3 per {unit}"));
        }
    }
}
