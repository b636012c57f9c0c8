//! Reading a room's history as an agent: the `m.room.encrypted` events of a `/messages` page
//! decrypted with the agent's own machine, which holds the room keys of everything sent to
//! the room since it joined (its own messages included: a machine keeps the inbound copy of
//! every outbound session it creates).

use matrix_sdk_crypto::{MegolmError, types::events::room::encrypted::EncryptedEvent};
use ruma::{RoomId, UserId, events::AnyTimelineEvent, serde::Raw};

use super::{Crypto, CryptoError};

impl Crypto {
    /// `event` decrypted by `user`'s machine, in full (a history is never a preview); `None`
    /// when the machine has no key for it or it does not decrypt (it is then left out of the
    /// history, as a client shows it as "unable to decrypt").
    pub async fn decrypt_as(
        &self,
        user: &UserId,
        room: &RoomId,
        event: &Raw<AnyTimelineEvent>,
    ) -> Result<Option<Raw<AnyTimelineEvent>>, CryptoError> {
        let agent = self.machine(user).await?;
        let encrypted: &Raw<EncryptedEvent> = event.cast_ref_unchecked();
        match agent
            .machine
            .decrypt_room_event(encrypted, room, &super::inbound::decryption_settings())
            .await
        {
            Ok(decrypted) => Ok(Some(decrypted.event.cast_unchecked())),
            Err(MegolmError::Store(e)) => Err(CryptoError::CryptoStore(e)),
            Err(error) => {
                tracing::debug!(%user, %room, %error, "a history event does not decrypt");
                Ok(None)
            }
        }
    }
}
