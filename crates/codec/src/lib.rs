//! MQTT wire format, no I/O: strict decoding and encoding of MQTT 3.1, 3.1.1 and 5.0 packets.
//!
//! `decode` takes bytes from the front of a `BytesMut` and returns `Ok(None)` when it needs more
//! (that is a value, not an error); every violation of a normative rule is its own
//! [`DecodeError`] variant that knows its MQTT 5 reason code. Payloads are zero-copy `Bytes`
//! slices of the read buffer.

mod decode;
mod encode;
pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod topic;

#[cfg(test)]
mod fuzz_smoke;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_errors;

pub use decode::{Limits, decode, decode_from_server};
pub use encode::{OutgoingPublish, encode, encode_outgoing_publish, encode_publish};
pub use error::DecodeError;
pub use packet::*;
pub use properties::Properties;
