//! The messages and services generated from `proto/modeld/v1` into OUT_DIR by build.rs.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("modeld.v1");
