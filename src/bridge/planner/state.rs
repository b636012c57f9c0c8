//! Room state the channel row reflects: name (falling back to the canonical alias, then the
//! room id, when removed), topic, visibility from join rules, power levels (member roles) and
//! room v12 creators.

use foldhash::HashSet;

use ruma::{
    RoomId,
    events::room::{
        canonical_alias::RoomCanonicalAliasEventContent,
        create::RoomCreateEventContent,
        join_rules::{JoinRule, RoomJoinRulesEventContent},
        name::RoomNameEventContent,
        power_levels::RoomPowerLevelsEventContent,
        topic::RoomTopicEventContent,
    },
};

use super::{Outcome, Planner};
use crate::{
    bridge::mirror::{cache::RoomState, event::Envelope},
    db::PowerLevels,
    model::{NameSource, Visibility},
};

impl Planner<'_> {
    pub(super) fn power_levels(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
    ) -> serde_json::Result<Outcome> {
        let content: RoomPowerLevelsEventContent = env.content()?;
        let Some(work) = self.work(room_id) else {
            return Ok(Outcome::IgnoredRoom);
        };
        let mut power = PowerLevels {
            users: content
                .users
                .iter()
                .map(|(u, l)| (u.to_string(), i64::from(*l)))
                .collect(),
            users_default: i64::from(content.users_default),
            creators: work.state.power.creators.clone(),
        };
        std::mem::swap(&mut work.state_mut().power, &mut power);
        work.dirty = true;
        let channel = work.state.channel_id;
        let (old, new) = (power, work.state.power.clone());
        let affected: HashSet<&String> = old.users.keys().chain(new.users.keys()).collect();
        let mut changed: Vec<(&String, _)> = affected
            .into_iter()
            .filter(|u| old.role(u) != new.role(u))
            .map(|u| (u, new.role(u)))
            .collect();
        changed.sort();
        for (user, role) in changed {
            if let Ok(user) = ruma::UserId::parse(user.as_str())
                && !self.namespace.is_bridge_user(&user)
            {
                self.role_change(channel, &user, role);
            }
        }
        Ok(Outcome::Mirrored)
    }

    pub(super) fn create(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
    ) -> serde_json::Result<Outcome> {
        let content: RoomCreateEventContent = env.content()?;
        let Some(work) = self.work(room_id) else {
            return Ok(Outcome::IgnoredRoom);
        };
        // Room v12 creators hold unlimited power without being listed in power levels.
        if content.room_version.as_str() == "12" {
            let mut creators = vec![env.sender.to_string()];
            creators.extend(content.additional_creators.iter().map(|u| u.to_string()));
            work.state_mut().power.creators = creators;
            work.dirty = true;
        }
        Ok(Outcome::Mirrored)
    }
}

/// Applies name/topic/alias/join-rules content to a room state; returns whether it changed.
pub(crate) fn apply_state_content(
    state: &mut RoomState,
    room_id: &RoomId,
    kind: &str,
    content: &str,
) -> bool {
    let before = (
        state.name.clone(),
        state.name_source,
        state.topic.clone(),
        state.visibility,
        state.alias.clone(),
    );
    match kind {
        "m.room.name" => match serde_json::from_str::<RoomNameEventContent>(content) {
            Ok(c) if !c.name.trim().is_empty() => {
                state.name = c.name.trim().to_owned();
                state.name_source = NameSource::Name;
            }
            // `""` or `{}`: the name was removed; fall back to the alias, then the room id.
            _ if state.name_source == NameSource::Name => match &state.alias {
                Some(alias) => {
                    state.name = alias.clone();
                    state.name_source = NameSource::Alias;
                }
                None => {
                    state.name = room_id.to_string();
                    state.name_source = NameSource::Id;
                }
            },
            _ => {}
        },
        "m.room.topic" => {
            if let Ok(c) = serde_json::from_str::<RoomTopicEventContent>(content) {
                state.topic = Some(c.topic).filter(|t| !t.is_empty());
            }
        }
        "m.room.canonical_alias" => {
            if let Ok(c) = serde_json::from_str::<RoomCanonicalAliasEventContent>(content) {
                state.alias = c.alias.map(|a| a.to_string());
                match (&state.alias, state.name_source) {
                    (Some(alias), NameSource::Id | NameSource::Alias) => {
                        state.name = alias.clone();
                        state.name_source = NameSource::Alias;
                    }
                    // The alias the name came from was removed.
                    (None, NameSource::Alias) => {
                        state.name = room_id.to_string();
                        state.name_source = NameSource::Id;
                    }
                    _ => {}
                }
            }
        }
        "m.room.join_rules" => {
            if let Ok(c) = serde_json::from_str::<RoomJoinRulesEventContent>(content)
                && !state.visibility_pinned
            {
                state.visibility = match c.join_rule {
                    JoinRule::Public => Visibility::Public,
                    JoinRule::Restricted(_) | JoinRule::KnockRestricted(_) => Visibility::Microdao,
                    _ => Visibility::Private,
                };
            }
        }
        _ => {}
    }
    before
        != (
            state.name.clone(),
            state.name_source,
            state.topic.clone(),
            state.visibility,
            state.alias.clone(),
        )
}

/// `#general:example.org` → `general`.
pub(super) fn alias_localpart(alias: &str) -> &str {
    alias
        .trim_start_matches('#')
        .split(':')
        .next()
        .unwrap_or(alias)
}

/// Lower-case ASCII letters, digits and single dashes, at most 64 characters; never empty.
pub fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 64 {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "channel".into()
    } else {
        out.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slugify("Quantum Garden / General"),
            "quantum-garden-general"
        );
        assert_eq!(slugify("!abc:example.org"), "abc-example-org");
        assert_eq!(slugify("***"), "channel");
        assert!(slugify(&"x".repeat(500)).len() <= 64);
    }
}
