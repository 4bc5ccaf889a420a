//! The generated protobuf and gRPC code of `proto/modeld/v1`, and its descriptor set for
//! reflection. Generated into OUT_DIR by build.rs, never into the source tree.
//!
//! Only the faces (`service`) and the clients (`clients`) use these types; everything below them
//! works on domain types.

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("modeld.v1");
}

pub use generated::*;

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
}

macro_rules! direction {
    ($request:expr => $($message:ty),*) => {
        $(impl Direction for $message { const REQUEST: bool = $request; })*
    };
}
direction!(true => PredictRequest, BatchPredictRequest, GetVersionRequest, HealthRequest);
direction!(false => PredictResponse, BatchPredictResponse, GetVersionResponse, HealthResponse);

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
