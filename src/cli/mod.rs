//! Command-line work that reads a stopped broker's data directory or a running broker's HTTP
//! API and spans several layers: `schema export` (typed clients from the registered schemas).
//! The `key` commands live with the keys, in `auth::cli`.

pub mod export;
