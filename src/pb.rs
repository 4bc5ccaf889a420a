//! The generated protobuf and gRPC code of `proto/modeld/v1`, and its descriptor set for
//! reflection. Generated into OUT_DIR by build.rs, never into the source tree.
//!
//! Only the faces (`service`) and the clients (`clients`) use these types; everything below them
//! works on domain types.

mod generated;

pub use generated::*;
pub use row::{Features, Row};

mod row;

/// The Open Inference Protocol (KServe V2) messages and service, package `inference`.
pub mod v2 {
    #[allow(clippy::all, missing_docs)]
    mod generated {
        tonic::include_proto!("inference");
    }
    pub use generated::*;

    /// Encoded file descriptor set of the V2 protocol, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");
}

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Buf;
use tonic::{
    Code, Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, prost::Message};

use crate::{preprocess::OwnedRow, schema::OwnedValue};

/// Encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modeld_descriptor");

/// Wire form of an owned value (golden rows, schema defaults).
impl From<&OwnedValue> for Value {
    fn from(value: &OwnedValue) -> Value {
        let kind = match value {
            OwnedValue::Bool(b) => value::Kind::Flag(*b),
            OwnedValue::Integer(i) => value::Kind::Integer(*i),
            OwnedValue::Number(x) => value::Kind::Number(*x),
            OwnedValue::Text(s) => value::Kind::Text(s.clone()),
        };
        Value { kind: Some(kind) }
    }
}

/// Wire form of an owned row (golden files, clients, benchmarks).
impl From<&OwnedRow> for Row {
    fn from(row: &OwnedRow) -> Row {
        let features = row.features.iter().map(|(name, value)| (name.clone(), value.into())).collect();
        Row { row_id: row.row_id.clone(), features, values: Vec::new() }
    }
}

/// The codec of the `modeld.v1` services: prost's, except that a request the server cannot
/// decode is the caller's error, INVALID_ARGUMENT, where tonic says INTERNAL (which would page an
/// operator for a caller's bug). A response a client cannot decode stays INTERNAL: that one is
/// not the caller's fault.
#[derive(Debug, Clone, Default)]
pub struct Codec<T, U>(ProstCodec<T, U>);

/// Which way a message travels: requests are decoded by the server, responses by clients.
pub trait Direction {
    const REQUEST: bool;
    /// The field number of the message's rows and what one message is called in errors, for
    /// the requests that carry rows.
    const ROWS: Option<(u32, &'static str)> = None;
}

macro_rules! direction {
    ($request:expr => $($message:ty),*) => {
        $(impl Direction for $message { const REQUEST: bool = $request; })*
    };
}
direction!(true => GetVersionRequest, HealthRequest);
direction!(false => PredictResponse, BatchPredictResponse, GetVersionResponse, HealthResponse);
direction!(true => v2::ServerLiveRequest, v2::ServerReadyRequest, v2::ModelReadyRequest,
    v2::ServerMetadataRequest, v2::ModelMetadataRequest);
direction!(false => v2::ServerLiveResponse, v2::ServerReadyResponse, v2::ModelReadyResponse,
    v2::ServerMetadataResponse, v2::ModelMetadataResponse, v2::ModelInferResponse);

impl Direction for PredictRequest {
    const REQUEST: bool = true;
    const ROWS: Option<(u32, &'static str)> = Some((2, "request"));
}

/// A V2 request's rows are inside its tensors: the core counts them once decoded.
impl Direction for v2::ModelInferRequest {
    const REQUEST: bool = true;
}

impl Direction for BatchPredictRequest {
    const REQUEST: bool = true;
    const ROWS: Option<(u32, &'static str)> = Some((2, "chunk"));
}

/// Most rows a request or chunk may carry before it is decoded: the largest `max_rows` of the
/// servers in this process (0 until one starts: no limit). The generated services build their
/// codecs with `Default`, so the limit cannot be handed to them and lives here.
static ROW_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Sets the pre-decode row limit to `max_rows` (or keeps a larger one already set). The core
/// still checks each server's own `max_rows` exactly; this only spares decoding a request that
/// can never pass.
pub fn limit_rows(max_rows: usize) {
    ROW_LIMIT.fetch_max(max_rows, Ordering::Relaxed);
}

/// Whether the encoded message has more than `limit` entries of top-level field `number`,
/// counted without decoding them. A message too broken to walk is left to the decoder.
fn more_rows_than(message: &[u8], number: u32, limit: usize) -> bool {
    let mut rest = message;
    let mut rows = 0usize;
    while !rest.is_empty() {
        let Ok(key) = prost::encoding::decode_varint(&mut rest) else { return false };
        let skip = match key & 7 {
            0 => match prost::encoding::decode_varint(&mut rest) {
                Ok(_) => 0,
                Err(_) => return false,
            },
            1 => 8,
            2 => match prost::encoding::decode_varint(&mut rest) {
                Ok(len) => len as usize,
                Err(_) => return false,
            },
            5 => 4,
            _ => return false,
        };
        if skip > rest.len() {
            return false;
        }
        rest = &rest[skip..];
        if key >> 3 == u64::from(number) && key & 7 == 2 {
            rows += 1;
            if rows > limit {
                return true;
            }
        }
    }
    false
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Direction + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(self.0.decoder())
    }
}

/// prost's decoder with decode failures of requests reported as INVALID_ARGUMENT.
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Direction> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // A row costs far more decoded than encoded (an empty one is 2 bytes on the wire and a
        // hundred in memory): a request over the row limit is refused before it is decoded.
        if let Some((number, unit)) = U::ROWS {
            let limit = ROW_LIMIT.load(Ordering::Relaxed);
            if limit > 0 && more_rows_than(buf.chunk(), number, limit) {
                return Err(Status::invalid_argument(format!(
                    "rows: more than {limit} rows exceed the limit of {limit} per {unit}"
                )));
            }
        }
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal if U::REQUEST => {
                Status::invalid_argument(format!("the request is not a valid message: {}", status.message()))
            }
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_counted_without_decoding() {
        let row = Row { row_id: "r".into(), ..Row::default() };
        let request = PredictRequest { task: "t".into(), rows: vec![row; 5], ..PredictRequest::default() };
        let bytes = request.encode_to_vec();
        assert!(more_rows_than(&bytes, 2, 4));
        assert!(!more_rows_than(&bytes, 2, 5));
        assert!(more_rows_than(&bytes, 1, 0), "the task field, once, is more than none");
        // Broken messages are left to the decoder, which names what is wrong.
        assert!(!more_rows_than(&[0x12, 0xff, 0x7f], 2, 0));
        assert!(!more_rows_than(&[0xff; 12], 2, 0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(7),
            failure_persistence: None,
            ..Default::default()
        })]

        /// The count agrees with prost's decoding for any request; no bytes make it panic.
        #[test]
        fn the_row_count_matches_decoding(rows in 0usize..40, limit in 0usize..40, id in "\\PC{0,8}", junk in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let row = Row { row_id: id, ..Row::default() };
            let request = PredictRequest { task: "t".into(), rows: vec![row; rows], ..PredictRequest::default() };
            let bytes = request.encode_to_vec();
            proptest::prop_assert_eq!(more_rows_than(&bytes, 2, limit), rows > limit);
            let _ = more_rows_than(&junk, 2, limit);
        }
    }
}
