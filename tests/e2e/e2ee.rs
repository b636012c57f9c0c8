//! A person's E2EE client the bridge did not write: `tests/e2ee-client`, on the `matrix-sdk`
//! crate (the Rust SDK under Element X) with its in-memory crypto store, a child process driven
//! over stdin/stdout; and the check that an answer reached it trusted (no red shield).

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

use crate::harness::*;

/// A person's E2EE client (a child process).
pub(crate) struct E2eeClient {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl E2eeClient {
    /// Logs `person` in with a new device of the matrix-sdk client.
    pub(crate) async fn start(person: &Person) -> Self {
        let binary = std::env::var("DAARION_E2EE_CLIENT").unwrap_or_else(|_| {
            repo()
                .join("target/e2ee-client/debug/e2ee-client")
                .to_string_lossy()
                .into_owned()
        });
        let mut child = tokio::process::Command::new(&binary)
            .args([
                homeserver().as_str(),
                person.user_id.as_str(),
                "e2e-password-1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} runs (scripts/test.sh builds it): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut client = Self {
            _child: child,
            stdin,
            stdout,
        };
        let ready = client.read().await;
        assert_eq!(ready["ready"], true, "{ready}");
        client
    }

    async fn read(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .expect("the E2EE client answers within 60 s")
            .unwrap()
            .expect("the E2EE client is alive");
        serde_json::from_str(&line).unwrap()
    }

    /// Runs one command; panics with the client's error.
    pub(crate) async fn run(&mut self, command: &str) -> Value {
        let answer = self.try_run(command).await;
        assert!(answer.get("error").is_none(), "`{command}`: {answer}");
        answer
    }

    /// Runs one command; its answer, an `{"error"}` included (the soak counts those).
    pub(crate) async fn try_run(&mut self, command: &str) -> Value {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.read().await
    }
}

/// Checks a decrypted answer: encrypted on the wire, no red shield, from a device its owner's
/// cross-signing identity signed.
pub(crate) fn assert_trusted(answer: &Value) {
    assert_eq!(answer["encrypted"], true, "{answer}");
    assert_eq!(
        answer["shield"], "none",
        "no red (or grey) shield: {answer}"
    );
    let verification = answer["verification"].as_str().unwrap_or("");
    assert!(
        !verification.contains("UnsignedDevice") && !verification.contains("None("),
        "the device must be signed by its owner: {answer}"
    );
}
