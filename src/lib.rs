//! mnister's server: the transports over the core.
//!
//! `grpc` (DigitClassifier, KServe v2, Admin) and `http` (the drawing page
//! and the JSON API) are thin layers; each request goes through
//! `frontend::ServerState::call` into `mnister_core::engine`. `error` is the
//! one place where core errors become a gRPC status and an HTTP status, and
//! `auth` the one bearer-token check both protocols use. `server` wires the
//! listeners, health, reflection, `/metrics` and graceful shutdown; `conn`
//! serves each port's connections (TLS, handshake deadline, gRFC A9 age and
//! idle limits).

pub mod auth;
pub mod config;
pub mod conn;
pub mod error;
pub mod frontend;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod proto;
pub mod reload;
pub mod server;
pub mod telemetry;

pub use mnister_core as core;
