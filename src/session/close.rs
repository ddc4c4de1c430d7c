//! Why a connection ends ([`Close`]) and what the metrics count for it ([`ending`]): the
//! close reason, the rejection of a connection that never got a session, the protocol rule
//! broken.

use dataloom_codec::{DecodeError, reason};

use super::Violation;
use crate::metrics::reasons::{CloseReason, Ending, RejectReason};

/// Why a connection ends; decides the DISCONNECT sent (v5) and whether the will is published.
#[derive(Debug)]
pub enum Close {
    /// The client sent DISCONNECT with this reason code (0x04 asks for the will).
    ClientDisconnect(u8),
    /// The peer closed the socket or it failed.
    Io(String),
    /// A packet broke a rule of the protocol.
    Decode(DecodeError),
    /// The client broke a rule of the session (DISCONNECT with the violation's code).
    Protocol(Violation),
    /// Another connection took the client id (v5 0x8E).
    TakenOver {
        /// It continues the session (clean start 0, session expiry > 0): there is no will.
        continues: bool,
    },
    /// The server ends the connection with this v5 reason code and reason (shutdown, keep
    /// alive, store failure, policy).
    Server(u8, &'static str),
    /// The CONNECT was refused (CONNACK already sent).
    Refused(u8),
}

impl Close {
    /// True when the will message must be published.
    pub(super) fn publishes_will(&self) -> bool {
        // A revoked key's will is not published: the key lost its rights. A takeover that
        // continues the session drops the will, as Mosquitto does (with a Will Delay Interval
        // the new connection would cancel it anyway).
        !matches!(
            self,
            Close::ClientDisconnect(0x00)
                | Close::Refused(_)
                | Close::Server(dataloom_codec::reason::ADMINISTRATIVE_ACTION, _)
                | Close::TakenOver { continues: true }
        )
    }

    /// True when the will goes out now whatever its delay: the session ends with the close of
    /// this connection by a takeover (the new connection does not continue it).
    pub(super) fn ends_session_now(&self) -> bool {
        matches!(self, Close::TakenOver { continues: false })
    }

    /// The v5 DISCONNECT reason code the server sends, if any.
    pub(super) fn server_code(&self) -> Option<u8> {
        match self {
            Close::Decode(e) => Some(e.reason_code()),
            Close::Protocol(v) => Some(v.code()),
            Close::TakenOver { .. } => Some(reason::SESSION_TAKEN_OVER),
            Close::Server(code, _) => Some(*code),
            _ => None,
        }
    }

    /// The reason string of the server's DISCONNECT, if it has one.
    pub(super) fn server_reason(&self) -> Option<&'static str> {
        match self {
            Close::TakenOver { .. } => Some("session taken over"),
            Close::Server(_, why) => Some(why),
            Close::Protocol(v) => Some(v.reason()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::ClientDisconnect(code) => write!(f, "client disconnected (reason 0x{code:02X})"),
            Close::Io(e) => write!(f, "connection lost: {e}"),
            Close::Decode(e) => write!(f, "protocol violation: {e}"),
            Close::Protocol(v) => write!(f, "protocol violation (0x{:02X}): {v}", v.code()),
            Close::TakenOver { continues } => {
                let session = if *continues { "continues" } else { "ends" };
                write!(f, "session taken over (0x8E; the session {session})")
            }
            Close::Server(code, why) => write!(f, "closed by server (0x{code:02X}): {why}"),
            Close::Refused(code) => write!(f, "CONNECT refused (0x{code:02X})"),
        }
    }
}

/// What the metrics count for a connection that ended with `how`: `Ok` after a session,
/// `Err` when it ended before one (the return value of [`super::serve_connection`]).
pub fn ending(how: &Result<Close, Close>) -> Ending {
    match how {
        Ok(close) => classify(close, true),
        Err(close) => classify(close, false),
    }
}

/// Classifies how a connection ended; `established` is false when it ended before a session.
fn classify(close: &Close, established: bool) -> Ending {
    let protocol_error = match close {
        Close::Decode(e) => Some(e.kind()),
        Close::Protocol(v) => Some(v.kind()),
        _ => None,
    };
    if !established {
        let rejected = match close {
            Close::Refused(code) => Some(reject_for_code(*code)),
            Close::Decode(e) => Some(match e {
                DecodeError::InvalidProtocolName | DecodeError::UnsupportedProtocolLevel { .. } => {
                    RejectReason::UnsupportedProtocolVersion
                }
                DecodeError::EmptyClientIdWithoutCleanSession => RejectReason::ClientIdInvalid,
                _ => RejectReason::MalformedConnect,
            }),
            Close::Protocol(v) => Some(reject_for_code(v.code())),
            Close::Server(reason::MAXIMUM_CONNECT_TIME, _) => Some(RejectReason::ConnectTimeout),
            Close::Server(code, _) => Some(reject_for_code(*code)),
            Close::TakenOver { .. } => Some(reject_for_code(reason::SESSION_TAKEN_OVER)),
            Close::Io(_) | Close::ClientDisconnect(_) => None,
        };
        let close = if rejected.is_some() { CloseReason::Rejected } else { CloseReason::ConnectionLost };
        return Ending { close, rejected, protocol_error };
    }
    let close = match close {
        Close::ClientDisconnect(_) => CloseReason::ClientDisconnect,
        Close::Io(_) => CloseReason::ConnectionLost,
        Close::Decode(_) => CloseReason::ProtocolError,
        Close::Refused(_) => CloseReason::Rejected,
        Close::Protocol(_) => CloseReason::ProtocolError,
        Close::TakenOver { .. } => CloseReason::TakenOver,
        Close::Server(code, _) => match *code {
            reason::KEEP_ALIVE_TIMEOUT => CloseReason::KeepAliveTimeout,
            reason::SERVER_SHUTTING_DOWN => CloseReason::Shutdown,
            reason::NOT_AUTHORIZED | reason::ADMINISTRATIVE_ACTION => CloseReason::NotAuthorized,
            reason::PAYLOAD_FORMAT_INVALID => CloseReason::SchemaInvalid,
            _ => CloseReason::ServerError,
        },
    };
    Ending { close, rejected: None, protocol_error }
}

fn reject_for_code(code: u8) -> RejectReason {
    match code {
        reason::BAD_USER_NAME_OR_PASSWORD => RejectReason::BadCredentials,
        reason::NOT_AUTHORIZED | reason::BANNED => RejectReason::NotAuthorized,
        reason::CLIENT_IDENTIFIER_NOT_VALID => RejectReason::ClientIdInvalid,
        reason::UNSUPPORTED_PROTOCOL_VERSION => RejectReason::UnsupportedProtocolVersion,
        reason::BAD_AUTHENTICATION_METHOD => RejectReason::BadAuthenticationMethod,
        reason::MALFORMED_PACKET | reason::PROTOCOL_ERROR | reason::PACKET_TOO_LARGE => {
            RejectReason::MalformedConnect
        }
        reason::SERVER_UNAVAILABLE | reason::SERVER_BUSY | reason::QUOTA_EXCEEDED => {
            RejectReason::ServerUnavailable
        }
        _ => RejectReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connect_is_a_rejection() {
        let e = classify(&Close::Refused(reason::NOT_AUTHORIZED), false);
        assert_eq!(e.close, CloseReason::Rejected);
        assert_eq!(e.rejected, Some(RejectReason::NotAuthorized));
        let e = classify(&Close::Io("gone".into()), false);
        assert_eq!((e.close, e.rejected), (CloseReason::ConnectionLost, None));
        let e = classify(&Close::Decode(DecodeError::Truncated), false);
        assert_eq!(e.rejected, Some(RejectReason::MalformedConnect));
        assert_eq!(e.protocol_error, Some("truncated"));
    }

    #[test]
    fn session_closes() {
        let e = classify(&Close::Server(reason::KEEP_ALIVE_TIMEOUT, "x"), true);
        assert_eq!(e.close, CloseReason::KeepAliveTimeout);
        let e = classify(&Close::Protocol(Violation::TopicAliasOutOfRange), true);
        assert_eq!((e.close, e.protocol_error), (CloseReason::ProtocolError, Some("topic_alias_invalid")));
        let e = classify(&Close::ClientDisconnect(0), true);
        assert_eq!((e.close, e.protocol_error), (CloseReason::ClientDisconnect, None));
    }
}
