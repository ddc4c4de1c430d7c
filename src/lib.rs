//! dataloom: an MQTT-compatible state broker (library crate; the binary is `src/main.rs`).
//!
//! Data flows one way: bytes → [`codec`] → [`session`] → [`broker`] (→ [`store`]) → sessions →
//! codec → bytes. [`server`] wires it together; [`config`] is the typed configuration.
//!
//! The modules are layers that import only downward (docs/architecture.md, checked by
//! `scripts/check-layers.py` in `make lint`). The public surface is what the binary, the tests
//! and the tools use: [`server::start`] and [`config::Config`] to run a broker, the [`store`]
//! trait and records, [`broker::Broker`], API keys ([`auth`]), listeners' TLS helpers
//! ([`net`]), [`metrics::get`], the HTTP endpoint ([`http`]) and schema checks
//! ([`schema::check_files`]). Everything else inside the modules is crate-private.

#![warn(missing_docs)]

pub use dataloom_codec as codec;

pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod net;
pub mod notify;
pub mod schema;
pub mod server;
pub mod session;
pub mod store;
pub mod sys;
