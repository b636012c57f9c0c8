//! The fail-over soak of issue #27, run by hand (`scripts/soak-replicas.sh`), not in CI: a
//! real Synapse, two `daarion-bridge run` replicas on one PostgreSQL database behind haproxy
//! (the e2e harness, `tests/e2e/replicas_harness.rs`), three people chatting in three group
//! rooms with Sofia (the `echo` agent) and in a DM with her, and a fourth, Dana, in an encrypted
//! DM with her from a real E2EE client (`tests/e2ee-client`, matrix-sdk, as Element creates it),
//! for `--minutes` (10), while the leader is killed (`kill -9`) every `--kill-every` seconds
//! (120, the first after `--first-kill`, 60) and restarted once the other took over. It prints,
//! and writes to `target/e2e/soak-replicas.json`:
//! - fail-over times, from the kill to the other replica's `/health/ready` 200 (p50, max), and
//!   to haproxy routing there;
//! - events lost (sent, never in `messages`) and doubled (`chat.message.created` announced
//!   twice for one event: `messages.matrix_event_id` is unique);
//! - messages addressed to Sofia left unanswered, and answers doubled (a trigger taken by two
//!   runs, or more agent messages in a room than completed runs);
//! - Dana's encrypted messages: answered and decrypted by her client with no red or grey shield
//!   (or not), the answer's delay (p50, max), and Sofia's devices (one, before and after).
//!
//! Exits non-zero when anything was lost or doubled.

#[allow(dead_code)]
#[path = "../tests/e2e/e2ee.rs"]
mod e2ee;
#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/e2e/replicas_harness.rs"]
mod replicas_harness;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use e2ee::E2eeClient;
use harness::*;
use replicas_harness::*;
use serde_json::{Value, json};

const SOFIA: &str = "@agent_sofia:localhost";
const BOT: &str = "@daarion:localhost";

/// One message the driver sent.
struct Sent {
    event_id: String,
    addressed: bool,
}

/// A small deterministic generator (xorshift), so a run's traffic can be replayed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Two words and a number: what a message says, unique enough to find its answer by.
    fn phrase(&mut self) -> String {
        format!(
            "{} {} {}",
            WORDS[self.below(WORDS.len() as u64) as usize],
            WORDS[self.below(WORDS.len() as u64) as usize],
            self.below(1000)
        )
    }
}

const WORDS: &[&str] = &[
    "amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbour", "indigo", "juniper",
    "kestrel", "lagoon", "meadow", "nectar", "opal", "pepper", "quartz", "raven", "saffron",
    "tundra",
];

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// Sofia's devices as Dana's homeserver lists them (`/keys/query`).
async fn devices_of_sofia(dana: &Person) -> usize {
    let keys = dana
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { SOFIA: [] } }),
        )
        .await;
    keys["device_keys"][SOFIA]
        .as_object()
        .map_or(0, |devices| devices.len())
}

/// What Dana's encrypted conversation saw.
#[derive(Default)]
struct Encrypted {
    sent: Vec<String>,
    /// Answers her client decrypted with no shield, by delay from her send (seconds).
    trusted: Vec<f64>,
    /// Answers her client decrypted with a shield (red or grey), or did not decrypt.
    untrusted: Vec<Value>,
    /// Sends that failed, and answers that did not come within two minutes (each with the
    /// client's error).
    failures: Vec<Value>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let minutes = arg("--minutes", 10);
    let kill_every = Duration::from_secs(arg("--kill-every", 120));
    let first_kill = Duration::from_secs(arg("--first-kill", 60));
    let seed = arg("--seed", 27);
    let run_for = Duration::from_secs(minutes * 60);

    let db_url = fresh_pg().await;
    let mut set = Replicas::start(&db_url).await;
    let pool = set.store.pool().clone();
    println!("soak: {minutes} min, leader killed every {kill_every:?} from {first_kill:?}");

    // Three people, three group rooms with the bot and Sofia, and Alice's DM with her.
    let people = [
        Person::register("alice").await,
        Person::register("bob").await,
        Person::register("carol").await,
    ];
    // Dana, on a real E2EE client: an encrypted DM with Sofia, as Element creates it.
    let dana = Person::register("dana").await;
    let mut client = E2eeClient::start(&dana).await;
    let secret_dm = client.run(&format!("dm {SOFIA}")).await["room"]
        .as_str()
        .unwrap()
        .to_owned();
    client.run(&format!("joined {secret_dm} {SOFIA}")).await;
    let sofia_devices_before = devices_of_sofia(&dana).await;
    let others: Vec<&str> = people[1..].iter().map(|p| p.user_id.as_str()).collect();
    let mut rooms = Vec::new();
    for n in 1..=3 {
        let room = people[0]
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                json!({ "name": format!("Soak {n}"), "preset": "private_chat",
                        "invite": [BOT, SOFIA, others[0], others[1]] }),
            )
            .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        for p in &people[1..] {
            p.call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
                json!({}),
            )
            .await;
        }
        rooms.push(room);
    }
    let dm = people[0]
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            json!({ "is_direct": true, "preset": "trusted_private_chat", "invite": [SOFIA] }),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let all_rooms: Vec<String> = rooms.iter().chain([&dm, &secret_dm]).cloned().collect();
    let list = all_rooms
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(",");
    let q = format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM agent_sessions s JOIN channels c ON c.id = s.channel_id \
         WHERE c.matrix_room_id IN ({list}) AND s.status = 'active'"
    );
    wait_rows(&pool, &q, "Sofia in every room", |r| {
        r[0][0].as_deref() == Some("5")
    })
    .await;

    // The traffic: each person writes every 0.4–1.2 s, in a group room (a quarter of those
    // mention Sofia) or, for Alice now and then, in her DM (every DM message addresses her).
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let start = Instant::now();
    let mut senders = Vec::new();
    for (i, p) in people.iter().enumerate() {
        let p = Person {
            http: reqwest::Client::new(),
            token: p.token.clone(),
            user_id: p.user_id.clone(),
        };
        let (rooms, dm, sent) = (rooms.clone(), dm.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let mut dice = Dice(seed * 1000 + i as u64 + 1);
            while start.elapsed() < run_for {
                let words = dice.phrase();
                let (room, body, addressed) = if i == 0 && dice.below(6) == 0 {
                    (&dm, json!({ "msgtype": "m.text", "body": words }), true)
                } else {
                    let room = &rooms[dice.below(rooms.len() as u64) as usize];
                    if dice.below(4) == 0 {
                        let text = format!("Sofia, say: {words}");
                        let body = json!({ "msgtype": "m.text", "body": text,
                                           "m.mentions": { "user_ids": [SOFIA] } });
                        (room, body, true)
                    } else {
                        (room, json!({ "msgtype": "m.text", "body": words }), false)
                    }
                };
                let event_id = p.send(room, body).await;
                sent.lock().unwrap().push(Sent {
                    event_id,
                    addressed,
                });
                tokio::time::sleep(Duration::from_millis(400 + dice.below(800))).await;
            }
        }));
    }

    // Dana writes to Sofia in the encrypted DM every 2–5 s and waits for each answer (as a
    // person does): sent, then read back decrypted by her own client.
    let encrypted = tokio::spawn({
        let (room, sent) = (secret_dm.clone(), sent.clone());
        async move {
            let mut seen = Encrypted::default();
            let mut dice = Dice(seed * 1000 + 99);
            while start.elapsed() < run_for {
                let words = dice.phrase();
                let at = Instant::now();
                let out = client
                    .try_run(&format!("send {room} Sofia, say: {words}"))
                    .await;
                let Some(event_id) = out["event_id"].as_str() else {
                    seen.failures.push(json!({ "send": words, "answer": out }));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                seen.sent.push(event_id.to_owned());
                sent.lock().unwrap().push(Sent {
                    event_id: event_id.to_owned(),
                    addressed: true,
                });
                // Each `expect` looks for about 30 s; an answer may wait longer behind the
                // agent's `runs_per_minute` (30 by default: the soak's mentions exceed it).
                let mut answer = Value::Null;
                for _ in 0..4 {
                    answer = client
                        .try_run(&format!("expect {room} {SOFIA} {words}"))
                        .await;
                    if answer.get("error").is_none() {
                        break;
                    }
                }
                if answer.get("error").is_some() {
                    seen.failures
                        .push(json!({ "expect": words, "answer": answer }));
                } else if answer["encrypted"] == true && answer["shield"] == "none" {
                    seen.trusted.push(at.elapsed().as_secs_f64());
                } else {
                    seen.untrusted.push(answer);
                }
                tokio::time::sleep(Duration::from_millis(2000 + dice.below(3000))).await;
            }
            (seen, client)
        }
    });

    // The kills: the leader, `kill -9`; the other takes over; the killed one restarts.
    let mut failovers = Vec::new();
    let mut routed = Vec::new();
    let mut next_kill = first_kill;
    while next_kill < run_for {
        tokio::time::sleep(next_kill.saturating_sub(start.elapsed())).await;
        let leader = set.wait_leader(Duration::from_secs(30)).await;
        let other = 1 - leader;
        let at = Instant::now();
        set.replicas[leader].kill9();
        let took = set.wait_ready(other, Duration::from_secs(60)).await;
        let via = set.wait_routed(Duration::from_secs(60)).await + took;
        println!(
            "t={:>4}s kill -9 {} → {} ready after {:.2} s (haproxy routes after {:.2} s)",
            (at - start).as_secs(),
            set.replicas[leader].name,
            set.replicas[other].name,
            took.as_secs_f64(),
            via.as_secs_f64()
        );
        failovers.push(took.as_secs_f64());
        routed.push(via.as_secs_f64());
        set.replicas[leader].restart();
        next_kill += kill_every;
    }
    for s in senders {
        s.await.unwrap();
    }
    let (encrypted, _client) = encrypted.await.unwrap();
    let sofia_devices_after = devices_of_sofia(&dana).await;
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    println!(
        "traffic done: {} messages sent, {} addressed to Sofia; draining…",
        sent.len(),
        sent.iter().filter(|s| s.addressed).count()
    );

    // Drain: every sent event mirrored, every addressed one answered (or 3 minutes pass).
    let ids: Vec<&str> = sent.iter().map(|s| s.event_id.as_str()).collect();
    let addressed: Vec<&str> = sent
        .iter()
        .filter(|s| s.addressed)
        .map(|s| s.event_id.as_str())
        .collect();
    let in_list = |ids: &[&str]| {
        ids.iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mirrored_q = format!(
        "SELECT matrix_event_id FROM messages WHERE matrix_event_id IN ({})",
        in_list(&ids)
    );
    let answered_q = format!(
        "SELECT t.event_id, CAST(COUNT(DISTINCT r.id) AS TEXT) FROM bridge_triggers t \
         JOIN agent_runs r ON r.id = t.run_id WHERE r.status = 'completed' \
         AND t.event_id IN ({}) GROUP BY t.event_id",
        in_list(&addressed)
    );
    let drain = Instant::now();
    let (mut mirrored, mut answered);
    loop {
        mirrored = rows(&pool, &mirrored_q).await;
        answered = rows(&pool, &answered_q).await;
        if (mirrored.len() == ids.len() && answered.len() == addressed.len())
            || drain.elapsed() > Duration::from_secs(180)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("drained in {:.1} s", drain.elapsed().as_secs_f64());

    let announced_twice = rows(
        &pool,
        &format!(
            "SELECT payload->>'matrix_event_id' FROM outbox_events \
             WHERE topic = 'chat.message.created' AND payload->>'matrix_event_id' IN ({}) \
             GROUP BY 1 HAVING COUNT(*) > 1",
            in_list(&ids)
        ),
    )
    .await
    .len();
    let triggers_run_twice = answered
        .iter()
        .filter(|r| r[1].as_deref() != Some("1"))
        .count();
    let per_room = rows(
        &pool,
        &format!(
            "SELECT c.matrix_room_id, \
             (SELECT CAST(COUNT(*) AS TEXT) FROM messages m WHERE m.channel_id = c.id \
               AND m.sender_type = 'agent'), \
             (SELECT CAST(COUNT(*) AS TEXT) FROM agent_runs r WHERE r.channel_id = c.id \
               AND r.status = 'completed') \
             FROM channels c WHERE c.matrix_room_id IN ({list})"
        ),
    )
    .await;
    let extra_answers: i64 = per_room
        .iter()
        .map(|r| {
            let n = |v: &Option<String>| v.as_deref().unwrap_or("0").parse::<i64>().unwrap();
            (n(&r[1]) - n(&r[2])).max(0)
        })
        .sum();
    let runs_total = per_room
        .iter()
        .map(|r| r[2].as_deref().unwrap_or("0").parse::<i64>().unwrap())
        .sum::<i64>();

    let mut sorted = failovers.clone();
    sorted.sort_by(f64::total_cmp);
    let mut sorted_routed = routed.clone();
    sorted_routed.sort_by(f64::total_cmp);
    let mut answered_in = encrypted.trusted.clone();
    answered_in.sort_by(f64::total_cmp);
    let summary = json!({
        "minutes": minutes,
        "kill_every_s": kill_every.as_secs(),
        "lease_ttl_s": TTL.as_secs(),
        "renew_interval": RENEW,
        "kills": failovers.len(),
        "failover_s": failovers,
        "failover_p50_s": percentile(&sorted, 0.5),
        "failover_max_s": sorted.last().copied().unwrap_or(f64::NAN),
        "routed_s": routed,
        "routed_p50_s": percentile(&sorted_routed, 0.5),
        "routed_max_s": sorted_routed.last().copied().unwrap_or(f64::NAN),
        "events_sent": ids.len(),
        "events_lost": ids.len() - mirrored.len(),
        "events_doubled": announced_twice,
        "addressed": addressed.len(),
        "unanswered": addressed.len() - answered.len(),
        "answers_doubled": triggers_run_twice as i64 + extra_answers,
        "runs_completed": runs_total,
        "encrypted_sent": encrypted.sent.len(),
        "encrypted_answered_trusted": encrypted.trusted.len(),
        "encrypted_answer_p50_s": percentile(&answered_in, 0.5),
        "encrypted_answer_max_s": answered_in.last().copied().unwrap_or(f64::NAN),
        "encrypted_untrusted": encrypted.untrusted,
        "encrypted_failures": encrypted.failures,
        "sofia_devices_before": sofia_devices_before,
        "sofia_devices_after": sofia_devices_after,
        "logs": set.dir().display().to_string(),
    });
    let out = repo().join("target/e2e/soak-replicas.json");
    std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    println!("written to {}", out.display());
    let bad = [
        "events_lost",
        "events_doubled",
        "unanswered",
        "answers_doubled",
    ]
    .iter()
    .any(|k| summary[k] != 0)
        || !encrypted.untrusted.is_empty()
        || !encrypted.failures.is_empty()
        || encrypted.trusted.len() != encrypted.sent.len()
        || sofia_devices_before != 1
        || sofia_devices_after != 1;
    drop(set);
    if bad {
        std::process::exit(1);
    }
}
