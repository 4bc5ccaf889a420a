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

use crate::{preprocess::OwnedRow, schema::OwnedValue};

/// Encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modeld_descriptor");

/// Wire form of an owned row (golden files, clients, benchmarks).
impl From<&OwnedRow> for Row {
    fn from(row: &OwnedRow) -> Row {
        let features = row
            .features
            .iter()
            .map(|(name, value)| {
                let kind = match value {
                    OwnedValue::Bool(b) => value::Kind::Flag(*b),
                    OwnedValue::Integer(i) => value::Kind::Integer(*i),
                    OwnedValue::Number(x) => value::Kind::Number(*x),
                    OwnedValue::Text(s) => value::Kind::Text(s.clone()),
                };
                (name.clone(), Value { kind: Some(kind) })
            })
            .collect();
        Row { row_id: row.row_id.clone(), features, values: Vec::new() }
    }
}
