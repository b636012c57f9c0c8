//! Short-lived signed links to the media of a run's conversation, for runtimes that fetch what
//! they need (webhooks): `/api/v1/media/{token}`. A token names the agent, the room and the
//! event, and when it expires, under an HMAC-SHA256 derived from the appservice's `as_token`
//! (so links survive restarts and need no table). It carries no file key and no Matrix token:
//! the bridge re-reads the event as the agent and fetches the file when the link is used, and
//! only with an access key of that same agent.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, Mac};
use ruma::{OwnedEventId, OwnedRoomId};
use sha2::Sha256;

use crate::model::{Ts, ids::AgentId};

/// What a link opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Only this agent's keys may use it.
    pub agent: AgentId,
    /// The room of the message.
    pub room: OwnedRoomId,
    /// The message whose attachment it serves.
    pub event: OwnedEventId,
    /// Unix seconds after which it is refused.
    pub expires: i64,
}

/// Why a token does not open anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token of ours (malformed, or a signature that does not match).
    #[error("not a valid media link")]
    Invalid,
    /// Valid, but too old.
    #[error("the media link has expired")]
    Expired,
}

/// Makes and checks links.
#[derive(Clone)]
pub struct Links {
    key: [u8; 32],
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("Links")
    }
}

impl Links {
    /// Links signed with a key derived from `as_token`.
    pub fn new(as_token: &str) -> Self {
        let mut mac = hmac(as_token.as_bytes());
        mac.update(b"daarion-bridge media links v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// The token of `link`.
    pub fn token(&self, link: &Link) -> String {
        let body = format!(
            "{}.{}.{}.{}",
            link.expires,
            link.agent.0.simple(),
            B64.encode(link.room.as_str()),
            B64.encode(link.event.as_str()),
        );
        let mut mac = hmac(&self.key);
        mac.update(body.as_bytes());
        format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// What `token` opens, if it is ours and not expired at `now`.
    pub fn open(&self, token: &str, now: Ts) -> Result<Link, LinkError> {
        let (body, sig) = token.rsplit_once('.').ok_or(LinkError::Invalid)?;
        let sig = B64.decode(sig).map_err(|_| LinkError::Invalid)?;
        let mut mac = hmac(&self.key);
        mac.update(body.as_bytes());
        // Constant-time comparison: a forged token learns nothing from timing.
        mac.verify_slice(&sig).map_err(|_| LinkError::Invalid)?;
        let mut parts = body.split('.');
        let mut next = || parts.next().ok_or(LinkError::Invalid);
        let expires: i64 = next()?.parse().map_err(|_| LinkError::Invalid)?;
        let agent = AgentId(next()?.parse().map_err(|_| LinkError::Invalid)?);
        let text = |s: &str| {
            B64.decode(s)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(LinkError::Invalid)
        };
        let room = OwnedRoomId::try_from(text(next()?)?).map_err(|_| LinkError::Invalid)?;
        let event = OwnedEventId::try_from(text(next()?)?).map_err(|_| LinkError::Invalid)?;
        if now.millis() / 1000 > expires {
            return Err(LinkError::Expired);
        }
        Ok(Link {
            agent,
            room,
            event,
            expires,
        })
    }
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            agent: AgentId(uuid::Uuid::new_v4()),
            room: "!room:example.org".try_into().unwrap(),
            event: "$event:example.org".try_into().unwrap(),
            expires: 2_000_000_000,
        }
    }

    #[test]
    fn a_link_opens_to_what_it_names_until_it_expires() {
        let links = Links::new("as_token");
        let l = link();
        let token = links.token(&l);
        assert_eq!(
            links.open(&token, Ts::from_millis(1_999_999_999_000)),
            Ok(l)
        );
        assert_eq!(
            links.open(&token, Ts::from_millis(2_000_000_001_000)),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn forged_or_foreign_tokens_open_nothing() {
        let links = Links::new("as_token");
        let token = links.token(&link());
        let now = Ts::from_millis(0);
        // Another bridge's key.
        assert_eq!(
            Links::new("other").open(&token, now),
            Err(LinkError::Invalid)
        );
        // A later expiry, signature kept.
        let forged = token.replacen("2000000000", "2100000000", 1);
        assert_eq!(links.open(&forged, now), Err(LinkError::Invalid));
        for junk in ["", ".", "a.b.c.d.e.f", "\0"] {
            assert_eq!(links.open(junk, now), Err(LinkError::Invalid));
        }
    }
}
