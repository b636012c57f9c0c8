//! A worker of the `nats` runtime (docs/runtimes.md): takes runs from the
//! `DAARION_AGENT_RUNS` work queue with a durable pull consumer shared by every worker, and
//! answers each with two `delta` chunks and a `final` one: "<agent> heard: <THE TEXT>".
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example nats_worker
//! ```
//!
//! Settings (environment): `NATS_URL`, `NATS_WORKER_NAME`, `NATS_WORKER_ACK_WAIT` (seconds a
//! run stays with a worker without an ack or progress before it is redelivered, default 30),
//! `NATS_WORKER_PAUSE_MS` (a pause before each chunk, standing in for a model's work).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = env("NATS_URL", "nats://127.0.0.1:4222");
    let name = env(
        "NATS_WORKER_NAME",
        &format!("worker-{}", std::process::id()),
    );
    let ack_wait = Duration::from_secs(env("NATS_WORKER_ACK_WAIT", "30").parse()?);
    let pause = Duration::from_millis(env("NATS_WORKER_PAUSE_MS", "100").parse()?);
    let js = jetstream::new(async_nats::connect(&url).await?);
    // The bridge creates the stream at start-up.
    let stream = loop {
        match js.get_stream("DAARION_AGENT_RUNS").await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let consumer = stream
        .get_or_create_consumer(
            "daarion-workers",
            pull::Config {
                durable_name: Some("daarion-workers".into()),
                filter_subject: "daarion.agent.run.requested.>".into(),
                ack_wait,
                ..Default::default()
            },
        )
        .await?;
    let mut runs = consumer.messages().await?;
    println!("{name}: ready");
    while let Some(message) = runs.next().await {
        let message = match message {
            Ok(m) => m,
            Err(error) => {
                eprintln!("{name}: {error}");
                continue;
            }
        };
        // The delivery count: a redelivered run (its worker died) has a higher attempt, and its
        // chunks supersede the dead worker's.
        let attempt = message.info()?.delivered;
        let run: Value = serde_json::from_slice(&message.payload)?;
        let (run_id, reply_to) = (&run["run_id"], run["reply_to"].as_str().unwrap_or_default());
        if run["deadline_ms"].as_i64() < Some(chrono::Utc::now().timestamp_millis()) {
            // Too late: the bridge has timed the run out. Never redelivered.
            println!("{name}: run {run_id} is past its deadline: dropped");
            message.ack_with(AckKind::Term).await?;
            continue;
        }
        println!("{name}: run {run_id} attempt {attempt}");
        let heard = run["trigger_texts"]
            .as_array()
            .and_then(|t| t.last())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_uppercase();
        let answer = format!(
            "{} heard: {heard}",
            run["agent"]["name"].as_str().unwrap_or("?")
        );
        let half = answer
            .char_indices()
            .nth(answer.chars().count() / 2)
            .map_or(0, |(i, _)| i);
        let chunks = [
            json!({"type": "delta", "text": &answer[..half]}),
            json!({"type": "delta", "text": &answer[half..]}),
            json!({"type": "final", "text": answer}),
        ];
        for mut chunk in chunks {
            tokio::time::sleep(pause).await;
            // Still working: the ack wait starts again.
            message.ack_with(AckKind::Progress).await?;
            chunk["attempt"] = attempt.into();
            chunk["worker"] = name.clone().into();
            js.publish(reply_to.to_owned(), chunk.to_string().into())
                .await?
                .await?;
            println!("{name}: run {run_id} sent {}", chunk["type"]);
        }
        // Acknowledged after the final reply is stored: a worker dying before this gets the run
        // redelivered, and the bridge ignores the second answer.
        message.double_ack().await?;
    }
    Ok(())
}
