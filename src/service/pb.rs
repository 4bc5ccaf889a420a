//! The generated protobuf and gRPC code of `proto/modeld/v1`, and its descriptor set for
//! reflection. Generated into OUT_DIR by build.rs, never into the source tree.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("modeld.v1");

/// Encoded file descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modeld_descriptor");
