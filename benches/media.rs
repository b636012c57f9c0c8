//! Media for a run (issue #24): the time to fetch, decrypt and encode a 5 MiB image for a model
//! that sees, and the peak memory it takes. The bridge's own code path,
//! `puppet::media::fetch_image_uri`: the authenticated media download over loopback HTTP from a
//! fake media repository in this process (streamed, bounded), `AttachmentDecryptor` over the
//! chunks, the type sniffed, and the `data:` URI the model gets, encoded block by block. Encrypted (an `EncryptedFile`, as
//! in an encrypted room) and plaintext, interleaved.
//!
//! Peak memory: before each round the process's peak RSS is reset (`/proc/self/clear_refs`,
//! 5) and the growth is `VmHWM` after the round minus `VmRSS` before it. Allocations from
//! 128 KiB up are mapped and unmapped one by one (`mallopt(M_MMAP_THRESHOLD)`, which also stops
//! glibc raising the threshold as it sees large frees): otherwise memory freed by one round is
//! kept and reused by the next, and the growth would read as nearly nothing.
//!
//! Run: `cargo bench --bench media` (no database needed).

use std::{io::Read, time::Duration, time::Instant};

use daarion_bridge::{matrix::Homeserver, puppet::media::fetch_image_uri};
use ruma::{
    OwnedUserId,
    events::room::{EncryptedFile, MediaSource},
};

const SIZE: usize = 5 << 20;
const ROUNDS: usize = 40;
const WARMUP: usize = 5;

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    // SAFETY: called once, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    // A 5 MiB "PNG": the signature, then bytes that do not compress.
    let mut image = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    let mut x: u32 = 0x9e37_79b9;
    while image.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image.extend_from_slice(&x.to_le_bytes());
    }
    image.truncate(SIZE);
    let mut cursor = std::io::Cursor::new(image.clone());
    let mut encryptor = matrix_sdk_crypto::AttachmentEncryptor::new(&mut cursor);
    let mut cipher = Vec::new();
    encryptor.read_to_end(&mut cipher).unwrap();
    let info = encryptor.finish();
    let (plain, sealed) = (bytes::Bytes::from(image), bytes::Bytes::from(cipher));
    let repo = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let body = if req.uri().path().ends_with("/sealed") {
            sealed.clone()
        } else {
            plain.clone()
        };
        async move { body }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, repo).await.unwrap() });
    let bot: OwnedUserId = "@daarion:localhost".try_into().unwrap();
    let agent: OwnedUserId = "@agent_bench:localhost".try_into().unwrap();
    let hs = Homeserver::new(&url, "bench_as_token", bot).unwrap();
    let sources = [
        (
            "encrypted",
            MediaSource::Encrypted(Box::new(EncryptedFile::new(
                "mxc://localhost/sealed".into(),
                info.encryption_info,
                info.hashes,
            ))),
        ),
        (
            "plaintext",
            MediaSource::Plain("mxc://localhost/plain".into()),
        ),
    ];
    let mut times = [Vec::new(), Vec::new()];
    let mut growth = [0u64, 0u64];
    for round in 0..ROUNDS + WARMUP {
        for (i, (_, source)) in sources.iter().enumerate() {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let before = status("VmRSS:");
            let start = Instant::now();
            let encoded = fetch_image_uri(&hs, &agent, source, 10 << 20, Duration::from_secs(30))
                .await
                .unwrap();
            let took = start.elapsed();
            assert!(encoded.uri.starts_with("data:image/png;base64,"));
            assert_eq!(encoded.uri.len(), 22 + SIZE.div_ceil(3) * 4);
            let peak = status("VmHWM:");
            drop(encoded);
            if round >= WARMUP {
                times[i].push(took);
                growth[i] = growth[i].max(peak.saturating_sub(before));
            }
        }
    }
    println!("\n## Media: a 5 MiB image fetched, decrypted and encoded for a run\n");
    println!("| image | p50 ms | p90 | p99 | peak RSS growth |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _)) in sources.iter().enumerate() {
        let t = &mut times[i];
        t.sort();
        let at = |q: f64| t[((t.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} MiB ({:.2}× the file) |",
            at(0.5),
            at(0.9),
            at(0.99),
            growth[i] as f64 / f64::from(1 << 20),
            growth[i] as f64 / SIZE as f64
        );
    }
}
