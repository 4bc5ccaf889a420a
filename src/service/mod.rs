//! The faces of modeld: the gRPC inference API with health and reflection, and admin HTTP.
//! Only this layer knows the wire types; it converts at the edge and maps errors through
//! [`status`].

pub mod admin;
pub mod health;
pub mod inference;
pub mod layers;
pub mod pb;
pub mod status;
