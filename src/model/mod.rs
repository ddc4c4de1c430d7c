//! The vocabulary every layer above shares (issue 12): the routed [`Message`] (and the [`Stamp`]
//! of the state change it made), one subscriber's
//! [`Delivery`] of it, the granted [`SubOptions`] of a subscription, the [`SessionId`], the
//! [`SessionOwner`] that made a session, the [`Kill`] switch that ends a connection from
//! outside its task, [`ReadAccess`], what a connection may read, and the memory [`Budget`] with
//! the [`Charge`] each holder of bytes carries. Plain data and no policy: the store encodes these types, the broker routes
//! them, the session layer sends them.

mod access;
mod kill;
mod memory;
mod message;
mod owner;

pub use access::ReadAccess;
pub use kill::{Kill, KillReason};
pub use memory::{Budget, Charge, Pressure};
pub use message::{Delivery, Message, SessionId, Stamp, SubOptions};
pub use owner::SessionOwner;
