//! The faces of modeld: the gRPC inference API with health and reflection, HTTP/JSON, the Open
//! Inference Protocol (KServe V2) over gRPC and REST, and admin HTTP.
//! Only this layer speaks a wire protocol: it converts at the edge, calls the core
//! ([`crate::predict`]), and maps the core's errors through [`status`].

pub mod admin;
pub mod conn;
pub mod grpc;
pub mod health;
pub mod http;
pub mod kserve;
pub mod layers;
pub mod status;
pub mod tls;
