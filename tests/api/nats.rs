//! A real NATS server with JetStream per test: its own process on a free port with its own
//! store directory, so a test can stop and restart it (the shared server on 4222 is never
//! touched). The binary comes from `DAARION_NATS_SERVER`, the PATH, or /usr/sbin
//! (`scripts/ensure-nats.sh` installs it).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use async_nats::jetstream;

use crate::support::TempDir;

pub struct Nats {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    /// The server's `max_payload` (none: its default, 1 MiB).
    max_payload: Option<usize>,
}

fn binary() -> String {
    if let Ok(bin) = std::env::var("DAARION_NATS_SERVER") {
        return bin;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = format!("{dir}/nats-server");
        if std::path::Path::new(&candidate).exists() {
            return candidate;
        }
    }
    "/usr/sbin/nats-server".into()
}

impl Nats {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server that refuses messages larger than `max_payload` bytes (when set).
    pub async fn start_with(max_payload: Option<usize>) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir =
            std::env::temp_dir().join(format!("daarion-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats = Nats {
            port,
            child: None,
            dir: TempDir(dir),
            max_payload,
        };
        nats.resume().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Changes `max_payload` for the next [`Nats::resume`].
    pub fn set_max_payload(&mut self, max_payload: Option<usize>) {
        self.max_payload = max_payload;
    }

    /// Starts the server again (same port, same store: what JetStream stored survives).
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new(binary());
        // `max_payload` has no command-line flag: only a config file sets it.
        if let Some(max) = self.max_payload {
            let conf = self.dir.0.join("nats.conf");
            std::fs::write(&conf, format!("max_payload: {max}\n")).unwrap();
            command.arg("-c").arg(conf);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "nats-server starts ({}): {e}; run scripts/ensure-nats.sh",
                    binary()
                )
            });
        self.child = Some(child);
        // A server recovering a large stream may take a while to listen.
        for _ in 0..600 {
            if async_nats::connect(self.url()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not answer on {}", self.url());
    }

    /// Stops the server (SIGKILL: the harshest way for a broker to go away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message of `stream` through a durable pull consumer (as another DAARION service
    /// would read them): (subject, Nats-Msg-Id, payload), in stream order.
    pub async fn read_all(
        &self,
        stream: &str,
        expect: usize,
    ) -> Vec<(String, String, serde_json::Value)> {
        use jetstream::consumer::{PullConsumer, pull};
        let client = async_nats::connect(self.url()).await.unwrap();
        let js = jetstream::new(client);
        let stream = js.get_stream(stream).await.unwrap();
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                "test-reader",
                pull::Config {
                    durable_name: Some("test-reader".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while out.len() < expect && std::time::Instant::now() < deadline {
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .unwrap();
            use futures_util::StreamExt;
            while let Some(msg) = batch.next().await {
                let msg = msg.unwrap();
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                out.push((
                    msg.subject.to_string(),
                    id,
                    serde_json::from_slice(&msg.payload).unwrap(),
                ));
                msg.ack().await.unwrap();
            }
        }
        out
    }

    /// How many messages the stream holds (JetStream's own count).
    pub async fn stored(&self, stream: &str) -> u64 {
        let client = async_nats::connect(self.url()).await.unwrap();
        let js = jetstream::new(client);
        let mut stream = js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
