//! Sends what an agent's `OlmMachine` asks for (key uploads and queries, one-time key claims,
//! to-device messages, signatures) as that agent and its device, and hands each response back
//! with `mark_request_as_sent`. The machine does no network I/O of its own.

use matrix_sdk_crypto::{
    OlmMachine,
    types::requests::{AnyOutgoingRequest, OutgoingRequest, ToDeviceRequest},
};
use ruma::{
    DeviceId, UserId,
    api::client::{
        keys::{get_keys, upload_signing_keys},
        to_device::send_event_to_device,
    },
    serde::Raw,
};

use super::CryptoError;
use crate::matrix::Homeserver;

/// Sends one request of `machine` as `user`/`device` and marks it sent.
pub(super) async fn send(
    hs: &Homeserver,
    machine: &OlmMachine,
    user: &UserId,
    device: &DeviceId,
    request: &OutgoingRequest,
) -> Result<(), CryptoError> {
    let id = request.request_id();
    let as_user = Some(user);
    let device = Some(device);
    match request.request() {
        AnyOutgoingRequest::KeysUpload(r) => {
            let response = hs.send_as(r.clone(), as_user, device).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::KeysQuery(r) => {
            let mut query = get_keys::v3::Request::new();
            query.device_keys = r.device_keys.clone();
            let response = hs.send_as(query, as_user, device).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::KeysClaim(r) => {
            let response = hs.send_as(r.clone(), as_user, device).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::ToDeviceRequest(r) => {
            let response = to_device(hs, user, device, r).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::SignatureUpload(r) => {
            let response = hs.send_as(r.clone(), as_user, device).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::RoomMessage(_) => {
            // In-room verification: agents do not verify interactively. Marking it sent would
            // lie to the machine; leaving it is harmless (it is not retried in a loop).
            tracing::debug!(%user, "ignoring an in-room verification request");
        }
    }
    Ok(())
}

/// Sends a to-device request (room keys, Olm messages) as `user`/`device`.
pub(super) async fn to_device(
    hs: &Homeserver,
    user: &UserId,
    device: Option<&DeviceId>,
    r: &ToDeviceRequest,
) -> Result<send_event_to_device::v3::Response, CryptoError> {
    let request = send_event_to_device::v3::Request::new_raw(
        r.event_type.clone(),
        r.txn_id.clone(),
        r.messages.clone(),
    );
    Ok(hs.send_as(request, Some(user), device).await?)
}

/// Uploads the agent's cross-signing keys (master, self-signing, user-signing). Appservice users
/// of an MSC4190 registration need no interactive authentication for it.
pub(super) async fn upload_signing_keys(
    hs: &Homeserver,
    user: &UserId,
    device: &DeviceId,
    keys: matrix_sdk_crypto::types::requests::UploadSigningKeysRequest,
) -> Result<(), CryptoError> {
    let mut request = upload_signing_keys::v3::Request::new();
    let raw = |k: Option<matrix_sdk_crypto::types::CrossSigningKey>| {
        k.and_then(|k| Raw::new(&k).ok()).map(Raw::cast_unchecked)
    };
    request.master_key = raw(keys.master_key);
    request.self_signing_key = raw(keys.self_signing_key);
    request.user_signing_key = raw(keys.user_signing_key);
    hs.send_as(request, Some(user), Some(device)).await?;
    Ok(())
}
