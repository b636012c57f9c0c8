//! The bridge's exclusive user namespace: its bot (`@{bot_localpart}:{server}`) and its puppets
//! (`@{agent_prefix}{name}:{server}`). Everything that decides whether a Matrix user is the
//! bridge's own goes through [`Namespace`].

use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};

/// Who belongs to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    server_name: OwnedServerName,
    bot: OwnedUserId,
    agent_prefix: String,
}

impl Namespace {
    /// The namespace; `None` when the bot localpart or the prefix do not make valid user ids.
    pub fn new(
        server_name: OwnedServerName,
        bot_localpart: &str,
        agent_prefix: &str,
    ) -> Option<Self> {
        // Strict ids only: historical ids (spaces, upper case) are valid for old users but not
        // for users the bridge creates.
        let strict = |s: String| {
            UserId::parse(s)
                .ok()
                .filter(|u| u.validate_strict().is_ok())
        };
        let bot = strict(format!("@{bot_localpart}:{server_name}"))?;
        strict(format!("@{agent_prefix}x:{server_name}"))?;
        Some(Self {
            server_name,
            bot,
            agent_prefix: agent_prefix.to_owned(),
        })
    }

    /// The bridge bot (the registration's `sender_localpart`).
    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    /// The homeserver's name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// The puppets' localpart prefix.
    pub fn agent_prefix(&self) -> &str {
        &self.agent_prefix
    }

    /// Whether `user` is in the puppet namespace.
    pub fn is_puppet(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name && user.localpart().starts_with(&self.agent_prefix)
    }

    /// Whether `user` is the bot or a puppet (the bridge's own users never become `users` rows).
    pub fn is_bridge_user(&self, user: &UserId) -> bool {
        user == self.bot || self.is_puppet(user)
    }

    /// The puppet for an agent name: `@{agent_prefix}{name, lower-cased}:{server}`.
    pub fn puppet(&self, name: &str) -> Option<OwnedUserId> {
        UserId::parse(format!(
            "@{}{}:{}",
            self.agent_prefix,
            name.to_ascii_lowercase(),
            self.server_name
        ))
        .ok()
    }

    /// The puppet of an agent declared with `external_id` (and perhaps an explicit
    /// `localpart`): that localpart, else the external id after `agent:`.
    pub fn agent_user_id(&self, external_id: &str, localpart: Option<&str>) -> Option<OwnedUserId> {
        let name = localpart.or_else(|| external_id.strip_prefix("agent:"))?;
        self.puppet(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puppets_and_bot() {
        let ns = Namespace::new("example.org".try_into().unwrap(), "daarion", "agent_").unwrap();
        assert_eq!(ns.bot().as_str(), "@daarion:example.org");
        assert_eq!(
            ns.puppet("Sofia").unwrap().as_str(),
            "@agent_sofia:example.org"
        );
        assert!(ns.is_puppet(&ns.puppet("x").unwrap()));
        assert!(ns.is_bridge_user(ns.bot()));
        assert!(!ns.is_puppet(&UserId::parse("@agent_x:other.org").unwrap()));
        assert!(Namespace::new("example.org".try_into().unwrap(), "bad id", "agent_").is_none());
    }
}
