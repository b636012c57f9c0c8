//! The start-up probe of to-device delivery (MSC4203): an agent sends a to-device event to its
//! own device and waits for it to come back in a transaction; readiness and a clear error say
//! what was found.

use ruma::{api::client::to_device::send_event_to_device, serde::Raw};

use super::{AgentMachine, Crypto, random_suffix};

/// Whether the homeserver delivers to-device events to the bridge (MSC4203), as the start-up
/// probe (a to-device message an agent sends to its own device) found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not probed yet (no agent device yet, or the homeserver not reached yet).
    Unknown,
    /// The probe was sent; waiting for it to come back in a transaction.
    Probing,
    /// The probe came back: room keys will reach the agents.
    Delivered,
    /// The probe never came back: encrypted rooms will not work.
    Missing,
}

impl Delivery {
    /// The state's name (readiness detail).
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Unknown => "unknown",
            Delivery::Probing => "probing",
            Delivery::Delivered => "delivered",
            Delivery::Missing => "missing",
        }
    }
}

/// Event type of the start-up probe.
pub(crate) const PROBE_TYPE: &str = "io.daarion.bridge.probe";

/// How long a probe may take to come back before another is sent.
const PROBE_AGAIN: std::time::Duration = std::time::Duration::from_secs(5);

impl Crypto {
    /// Whether to-device events reach the bridge (readiness detail).
    pub fn delivery(&self) -> Delivery {
        *self.delivery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The probe came back in a transaction.
    pub(crate) fn probe_arrived(&self) {
        *self.delivery.lock().unwrap_or_else(|p| p.into_inner()) = Delivery::Delivered;
    }

    /// Checks that the homeserver delivers to-device events (MSC4203) to the bridge: `agent`
    /// sends one to its own device and waits up to `wait` for it to come back in a transaction.
    /// Says clearly what is missing when it does not.
    ///
    /// The probe is sent again every [`PROBE_AGAIN`]: Synapse drops the to-device events of the
    /// transactions it makes while it still counts the appservice as down (element-hq/synapse#14710),
    /// which a probe sent right after a restart or a take-over may fall into.
    pub async fn probe(&self, agent: &AgentMachine, wait: std::time::Duration) -> Delivery {
        *self.delivery.lock().unwrap_or_else(|p| p.into_inner()) = Delivery::Probing;
        let deadline = tokio::time::Instant::now() + wait;
        let mut sends = 0u32;
        let mut next_send = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            if self.delivery() == Delivery::Delivered {
                tracing::info!(
                    probes = sends,
                    "the homeserver delivers to-device events: agents can read encrypted rooms"
                );
                return Delivery::Delivered;
            }
            if tokio::time::Instant::now() >= next_send {
                self.send_probe(agent).await;
                sends += 1;
                next_send = tokio::time::Instant::now() + PROBE_AGAIN;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut state = self.delivery.lock().unwrap_or_else(|p| p.into_inner());
        if *state != Delivery::Delivered {
            *state = Delivery::Missing;
            tracing::error!(
                "the homeserver does not deliver to-device events to the bridge: agents cannot receive room keys and will not read encrypted rooms (plaintext rooms keep working). Synapse needs `experimental_features: {{msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true}}` and the registration keys `org.matrix.msc3202` and `de.sorunome.msc2409.push_ephemeral`; tuwunel needs 1.8.2 or later (docs/encryption.md)"
            );
        }
        *state
    }

    /// Sends one probe from `agent`'s device to itself.
    async fn send_probe(&self, agent: &AgentMachine) {
        let content: Raw<ruma::events::AnyToDeviceEventContent> =
            Raw::new(&serde_json::json!({ "nonce": random_suffix() }))
                .expect("a JSON object")
                .cast_unchecked();
        let messages = std::collections::BTreeMap::from([(
            agent.user.clone(),
            std::collections::BTreeMap::from([(
                ruma::to_device::DeviceIdOrAllDevices::DeviceId(agent.device.clone()),
                content,
            )]),
        )]);
        let request = send_event_to_device::v3::Request::new_raw(
            PROBE_TYPE.into(),
            ruma::TransactionId::new(),
            messages,
        );
        if let Err(error) = self
            .hs
            .send_as(request, Some(&agent.user), Some(&agent.device))
            .await
        {
            tracing::warn!(%error, "cannot send the to-device probe");
        }
    }
}
