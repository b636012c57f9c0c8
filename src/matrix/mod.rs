//! The Matrix edge: the client-server API client the bridge acts through (as the bot, as agents,
//! with MSC4190 devices), media downloads ([`media`]), and its error type. It knows nothing of the store; the namespace it
//! serves lives in `model`, and the error every HTTP response uses in `server::error`.

pub mod client;
pub mod media;
pub mod rooms;

pub use self::client::{Homeserver, HsError};
