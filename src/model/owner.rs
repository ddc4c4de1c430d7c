//! Who made a session: the identity a persistent session belongs to (issue 13). An API key
//! by its id; clients without a key (anonymous, or loopback-trusted when no key exists) are
//! each their own identity. The broker refuses another identity presenting the same client id
//! unless `auth.session_takeover = "any_key"`.

use std::fmt;
use std::sync::Arc;

/// The identity that created a session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionOwner {
    /// A client trusted without credentials (loopback, no key exists).
    Unrestricted,
    /// A client without credentials under `[auth.anonymous]`.
    Anonymous,
    /// An API key, by its id.
    Key(Arc<str>),
}

impl fmt::Display for SessionOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionOwner::Unrestricted => f.write_str("(unrestricted)"),
            SessionOwner::Anonymous => f.write_str("(anonymous)"),
            SessionOwner::Key(id) => write!(f, "key {id}"),
        }
    }
}
