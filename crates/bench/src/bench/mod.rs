//! The load generator behind `make bench` (issue 3): brokers as child processes, an MQTT 3.1.1
//! client on dataloom's codec (with its QoS 1/2 ack flows), the scenarios (with issue 14's hostile
//! group), and the report.

pub mod acks;
pub mod auth;
pub mod brokers;
pub mod burst;
pub mod client;
pub mod durable;
pub mod flow;
pub mod hostile;
pub mod report;
pub mod scenario;
pub mod schema;
pub mod stateapi;
pub mod stats;
