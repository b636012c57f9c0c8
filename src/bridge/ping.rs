//! The start-up ping: the homeserver reached both ways (which also makes it retry the
//! transactions it holds at once: how a new leader gets them), then every agent's device made
//! before anyone writes to it, and the to-device delivery probed.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{bridge::agents::AgentRegistry, crypto::Crypto, matrix::Homeserver};

/// Pings the homeserver until it answers: proves the registration and the network path both
/// ways, and makes the homeserver retry any failed transactions at once. Then idles until
/// shutdown (a supervised task must not end early).
pub async fn until_reached(
    hs: Homeserver,
    appservice_id: String,
    devices: Option<(Arc<Crypto>, Arc<AgentRegistry>)>,
    cancel: CancellationToken,
) {
    // Short at first: a new leader's first ping may reach the load balancer before its
    // readiness check has put this replica in rotation (503), and every second until the ping
    // succeeds is a second the homeserver holds its transactions.
    let mut delay = Duration::from_millis(250);
    loop {
        match hs.ping(&appservice_id).await {
            Ok(rtt) => {
                tracing::info!(
                    rtt_ms = rtt.as_millis() as u64,
                    "homeserver reached the bridge (ping ok)"
                );
                break;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "homeserver ping failed; is it up, does it load registration.yaml, and does its url reach the leader?");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
    if let Some((crypto, registry)) = devices {
        // Every agent gets its device before anyone writes to it: a client encrypts only for
        // the devices it sees when it sends.
        let mut ready = 0;
        let mut probe = None;
        // The bot too: people write commands to it in encrypted rooms (an Element DM is).
        let bot = crypto.bot().to_owned();
        match crypto.machine(&bot).await {
            Ok(machine) => probe = Some(machine),
            Err(error) => {
                tracing::error!(user = %bot, %error, "{}", crate::crypto::explain(&error));
            }
        }
        for agent in registry.all() {
            match crypto.machine(&agent.user_id).await {
                Ok(machine) => {
                    ready += 1;
                    probe.get_or_insert(machine);
                }
                Err(error) => {
                    tracing::error!(user = %agent.user_id, %error, "{}", crate::crypto::explain(&error));
                }
            }
        }
        tracing::info!(
            agents = ready,
            "agent devices ready for end-to-end encryption"
        );
        if let Some(machine) = probe {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = crypto.probe(&machine, Duration::from_secs(30)) => {}
            }
        }
    }
    cancel.cancelled().await;
}
