//! The live objects kept beside matrix-sdk-crypto's `MemoryStore`, which keeps inbound group
//! sessions pickled and user identities as JSON and rebuilds one on every read: inbound
//! sessions (one independent copy per decryption lane) and user identities. Saved versions
//! always replace what is kept here, so a live object is never older than the stored one.

use std::{collections::HashMap, sync::RwLock};

use matrix_sdk_crypto::{UserIdentityData, olm::InboundGroupSession};
use ruma::{OwnedRoomId, OwnedUserId, UserId};

/// A session's key: (room, session id).
pub(super) type SessionKey = (OwnedRoomId, String);

/// Live sessions and identities of one agent's store.
#[derive(Default)]
pub(super) struct Live {
    /// Unpickling a session re-advanced the Megolm ratchet from its stored index on every
    /// decryption (hundreds of HMACs per event in a busy room); a live session advances once.
    ///
    /// Each session has up to [`super::super::DECRYPT_LANES`] independent copies, one per lane
    /// (see [`super::super::LANE`]). A copy decrypts under its own lock, so a transaction's
    /// events of one session have their signatures checked on two cores at once. Copies hold
    /// the same key; only saved versions are persisted.
    inbound: RwLock<Inbound>,
    /// Parsing an identity decompresses its ed25519 keys: every decryption from a sender whose
    /// trust can still improve re-read the agent's own identity and the sender's.
    identities: RwLock<HashMap<OwnedUserId, UserIdentityData>>,
}

/// The copies of each session, and a generation every save bumps: a copy unpickled before a
/// save must not join the saved version's copies.
#[derive(Default)]
struct Inbound {
    copies: HashMap<SessionKey, Vec<InboundGroupSession>>,
    generation: u64,
}

/// What a miss returns: the generation to hand back to [`Live::keep_session`].
pub(super) struct Miss(u64);

impl Live {
    /// The lane's copy of the session, or the generation to keep an unpickled one under.
    pub(super) fn session(
        &self,
        key: &SessionKey,
        lane: usize,
    ) -> Result<InboundGroupSession, Miss> {
        let live = self.inbound.read().unwrap_or_else(|p| p.into_inner());
        match live.copies.get(key).and_then(|c| c.get(lane)) {
            Some(copy) => Ok(copy.clone()),
            None => Err(Miss(live.generation)),
        }
    }

    /// Keeps a freshly unpickled session (a session of its own, with its own lock) as the
    /// lane's copy, unless a save came since the miss (it would be older than the saved
    /// version) or the slot is not the lane's next one.
    pub(super) fn keep_session(
        &self,
        key: SessionKey,
        lane: usize,
        miss: Miss,
        session: &InboundGroupSession,
    ) {
        let mut live = self.inbound.write().unwrap_or_else(|p| p.into_inner());
        if live.generation != miss.0 {
            return;
        }
        let copies = live.copies.entry(key).or_default();
        if copies.len() == lane {
            copies.push(session.clone());
        }
    }

    /// The saved sessions are the newest versions: they replace every copy (the other lanes'
    /// copies are unpickled again from the saved version when next read). Call it after the
    /// memory store has them.
    pub(super) fn sessions_saved(&self, sessions: &[InboundGroupSession]) {
        if sessions.is_empty() {
            return;
        }
        let mut live = self.inbound.write().unwrap_or_else(|p| p.into_inner());
        live.generation += 1;
        for s in sessions {
            live.copies.insert(
                (s.room_id().to_owned(), s.session_id().to_owned()),
                vec![s.clone()],
            );
        }
    }

    /// The live identity of `user`, if kept.
    pub(super) fn identity(&self, user: &UserId) -> Option<UserIdentityData> {
        self.identities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
    }

    /// Keeps an identity read from the memory store, unless a save put a newer one here since.
    pub(super) fn keep_identity(&self, identity: &UserIdentityData) {
        self.identities
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(identity.user_id().to_owned())
            .or_insert_with(|| identity.clone());
    }

    /// Saved identities replace the kept ones.
    pub(super) fn identities_saved<'a>(&self, saved: impl Iterator<Item = &'a UserIdentityData>) {
        let mut live = self.identities.write().unwrap_or_else(|p| p.into_inner());
        for i in saved {
            live.insert(i.user_id().to_owned(), i.clone());
        }
    }
}
