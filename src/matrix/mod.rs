//! The Matrix edge shared by every layer: the bridge's user namespace (bot and puppets), the
//! client-server API client the bridge acts through, and the Matrix error type every HTTP
//! response of the bridge uses.

pub mod client;
pub mod error;
pub mod namespace;

pub use self::{
    client::{Homeserver, HsError},
    error::MatrixError,
    namespace::Namespace,
};
