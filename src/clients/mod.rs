//! Clients of modeld's public gRPC API, for the `modeld` subcommands that talk to a running
//! server, and the reader of the audit log it writes. They stand above the server: they know
//! only the wire contract ([`crate::pb`]), the bundle files they replay and the audit log's
//! format, never the server's internals.

pub mod audit;
pub mod connect;
pub mod label;
pub mod verify;
