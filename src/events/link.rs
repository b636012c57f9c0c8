//! The NATS client the bridge keeps: one connection per user (the events publisher, the `nats`
//! runtime), connecting in the background, reconnecting within [`PROBE_EVERY`] of the server
//! coming back however long it was away, and counting the connections it lost (its epoch), so
//! that a request sent on a dropped connection is given up at once instead of waiting out its
//! timeout.

use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

/// How long a publish may wait for its acknowledgement (from a JetStream that just answered a
/// probe; a dropped connection cuts the wait short).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often JetStream is probed, and the client reconnects, while it is away: bounds how long
/// publishing waits after JetStream is ready again.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a probe waits for its answer. A JetStream that is still recovering its streams
/// either has no responder yet (the probe fails at once) or answers when it is done.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The one NATS client, and the count of connections it lost (its epoch).
pub struct Link {
    /// The client (its connection state tells whether it is connected now).
    pub client: async_nats::Client,
    /// For publishes: waits [`ACK_TIMEOUT`] for an acknowledgement.
    pub js: jetstream::Context,
    /// For probes: waits [`PROBE_TIMEOUT`].
    pub probe: jetstream::Context,
    /// Bumped on every disconnection: a publish sent on an earlier epoch's connection will
    /// never be acknowledged (its reply died with the connection), so its wait is cut short.
    pub drops: watch::Receiver<u64>,
}

impl Link {
    /// A client that connects in the background and reconnects within [`PROBE_EVERY`] of
    /// the server coming back, however long it was away (the default backoff grows to 4 s).
    pub async fn connect(url: &str) -> Result<Self, String> {
        let (tx, drops) = watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                (Duration::from_millis(10) * attempts.min(25) as u32).min(PROBE_EVERY)
            })
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    tx.send_modify(|n| *n += 1);
                }
                async {}
            })
            .connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ACK_TIMEOUT);
        let mut probe = js.clone();
        probe.set_timeout(PROBE_TIMEOUT);
        Ok(Self {
            client,
            js,
            probe,
            drops,
        })
    }

    /// The current connection's epoch.
    pub fn epoch(&self) -> u64 {
        *self.drops.borrow()
    }
}
