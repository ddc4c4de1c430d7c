//! dataloom: an MQTT-compatible state broker (library crate; the binary is `src/main.rs`).
//!
//! Data flows one way: bytes → [`codec`] → [`session`] → [`broker`] (→ [`store`]) → sessions →
//! codec → bytes. [`server`] wires it together; [`config`] is the typed configuration.

pub mod auth;
pub mod broker;
pub use dataloom_codec as codec;
pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod net;
pub mod schema;
pub mod server;
pub mod session;
pub mod store;
pub mod sys;
