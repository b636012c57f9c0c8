//! Which part of the planner handles an event, by type and whether it is a state event.

use ruma::RoomId;
use serde_json::value::RawValue;

use super::{Outcome, Planner};
use crate::bridge::mirror::event::{DAARION_CHANNEL, DaarionChannelContent, Envelope};
use crate::model::{Ts, Visibility};

impl Planner<'_> {
    /// Applies one event of a mirrored room to the plan.
    pub(super) fn route(
        &mut self,
        room_id: &RoomId,
        env: &Envelope<'_>,
        raw: &RawValue,
    ) -> serde_json::Result<Outcome> {
        let at = Ts::from_millis(env.ts_millis());
        let is_state = env.state_key.is_some();
        match (&*env.kind, is_state) {
            ("m.room.message", false) => self.message_event(room_id, env, raw, at),
            ("m.sticker", false) => self.sticker(room_id, env, at),
            ("m.room.encrypted", false) => self.encrypted(room_id, env, at),
            ("m.room.redaction", false) => self.redaction(env, at),
            ("m.room.member", true) => self.member(room_id, env, at),
            ("m.room.power_levels", true) => self.power_levels(room_id, env),
            ("m.room.create", true) => self.create(room_id, env),
            (
                kind @ ("m.room.name"
                | "m.room.topic"
                | "m.room.canonical_alias"
                | "m.room.join_rules"),
                true,
            ) => {
                if let Some(work) = self.work(room_id)
                    && super::state::apply_state_content(
                        work.state_mut(),
                        room_id,
                        kind,
                        env.content.get(),
                    )
                {
                    work.dirty = true;
                }
                Ok(Outcome::Mirrored)
            }
            ("m.room.tombstone", true) => {
                self.tombstone(room_id, env, at);
                Ok(Outcome::Mirrored)
            }
            (DAARION_CHANNEL, true) => {
                let content: DaarionChannelContent = env.content()?;
                self.place_created(room_id, env, &content);
                if let Some(v) = content.visibility.as_deref().and_then(Visibility::parse)
                    && let Some(work) = self.work(room_id)
                {
                    let state = work.state_mut();
                    state.visibility = v;
                    state.visibility_pinned = true;
                    work.dirty = true;
                }
                Ok(Outcome::Mirrored)
            }
            _ => Ok(Outcome::IgnoredType),
        }
    }
}
