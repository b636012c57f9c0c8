//! The replies of one `nats` run, judged one by one: which attempt speaks (a later attempt
//! supersedes an earlier one, whose chunks are then ignored), what is streamed (a restart when
//! the speaker changes, only what a `final` adds to what was streamed), and what ends the run
//! (the first `final`, an `error` or `deferred` of the speaking attempt).

use serde::Deserialize;

use crate::runs::runtime::{Delta, RunOutput, RuntimeError};

/// A reply chunk as a worker sends it.
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// The request's JetStream delivery count when the worker took it (1 first).
    #[serde(default)]
    attempt: Option<u64>,
    #[serde(default)]
    files: serde_json::Value,
}

/// What one reply did.
#[derive(Debug)]
pub(super) enum Step {
    /// The run goes on.
    Go,
    /// Not used, and why.
    Ignored(Ignored),
    /// The run's answer (or failure).
    End(Result<RunOutput, RuntimeError>),
}

/// Why a reply chunk was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ignored {
    /// Not a reply chunk (not JSON, or no `type`).
    Malformed,
    /// From an attempt a later one superseded (the request was redelivered).
    Superseded,
    /// A `type` the protocol does not have.
    UnknownType,
}

impl Ignored {
    /// The metric label.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Superseded => "superseded",
            Self::UnknownType => "unknown_type",
        }
    }

    /// For the log.
    pub(super) fn why(self) -> &'static str {
        match self {
            Self::Malformed => "not a reply chunk",
            Self::Superseded => "from an attempt a later one superseded",
            Self::UnknownType => "an unknown reply type",
        }
    }
}

/// The replies of one run so far: which attempt speaks, and what it said.
#[derive(Debug, Default)]
pub(super) struct Replies {
    /// The newest attempt that sent something (0: none yet).
    attempt: u64,
    /// What it streamed.
    said: String,
    /// Chunks not used (of superseded attempts, malformed).
    pub(super) ignored: u32,
}

impl Replies {
    /// Takes one reply: what to stream, and whether the run ends.
    pub(super) fn take(&mut self, payload: &[u8]) -> (Vec<Delta>, Step) {
        let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
            self.ignored += 1;
            return (vec![], Step::Ignored(Ignored::Malformed));
        };
        let attempt = chunk.attempt.unwrap_or(1).max(1);
        let mut say = Vec::new();
        match chunk.kind.as_str() {
            "delta" | "error" | "deferred" if attempt < self.attempt => {
                self.ignored += 1;
                (say, Step::Ignored(Ignored::Superseded))
            }
            "delta" => {
                if attempt > self.attempt {
                    if !self.said.is_empty() {
                        say.push(Delta::Restart);
                    }
                    self.said.clear();
                    self.attempt = attempt;
                }
                let text = chunk.text.unwrap_or_default();
                if !text.is_empty() {
                    self.said.push_str(&text);
                    say.push(Delta::Text(text));
                }
                (say, Step::Go)
            }
            "final" => {
                // The first final wins, whichever attempt sent it: it is a whole answer.
                let text = chunk.text.unwrap_or_default();
                let files = crate::runs::webhook::files_of(&chunk.files);
                if text.trim().is_empty() && files.is_empty() {
                    let error =
                        RuntimeError::Malformed("a final reply without text or files".into());
                    return (say, Step::End(Err(error)));
                }
                match text.strip_prefix(self.said.as_str()) {
                    Some(rest) if attempt == self.attempt => {
                        if !rest.is_empty() {
                            say.push(Delta::Text(rest.to_owned()));
                        }
                    }
                    _ => {
                        if !self.said.is_empty() {
                            say.push(Delta::Restart);
                        }
                        if !text.is_empty() {
                            say.push(Delta::Text(text.clone()));
                        }
                    }
                }
                self.said = text.clone();
                let out = RunOutput {
                    text,
                    files,
                    ..Default::default()
                };
                (say, Step::End(Ok(out)))
            }
            "error" => {
                let error = chunk
                    .error
                    .or(chunk.text)
                    .unwrap_or_else(|| "the worker gave no reason".into());
                (say, Step::End(Err(RuntimeError::Failed(error))))
            }
            "deferred" => {
                let out = RunOutput {
                    deferred: true,
                    ..Default::default()
                };
                (say, Step::End(Ok(out)))
            }
            _ => {
                self.ignored += 1;
                (say, Step::Ignored(Ignored::UnknownType))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(r: &mut Replies, v: serde_json::Value) -> (Vec<Delta>, Step) {
        r.take(v.to_string().as_bytes())
    }

    fn text(s: &str) -> Delta {
        Delta::Text(s.into())
    }

    #[test]
    fn deltas_then_final_stream_once() {
        let mut r = Replies::default();
        let (say, step) = take(
            &mut r,
            serde_json::json!({"type": "delta", "text": "Hel", "attempt": 1}),
        );
        assert_eq!(say, vec![text("Hel")]);
        assert!(matches!(step, Step::Go));
        let (say, step) = take(
            &mut r,
            serde_json::json!({"type": "final", "text": "Hello", "attempt": 1}),
        );
        assert_eq!(say, vec![text("lo")], "only what the deltas did not say");
        assert!(matches!(step, Step::End(Ok(ref o)) if o.text == "Hello"));
    }

    #[test]
    fn a_later_attempt_supersedes_and_an_earlier_one_is_ignored() {
        let mut r = Replies::default();
        take(
            &mut r,
            serde_json::json!({"type": "delta", "text": "dead worker's", "attempt": 1}),
        );
        let (say, _) = take(
            &mut r,
            serde_json::json!({"type": "delta", "text": "Fresh", "attempt": 2}),
        );
        assert_eq!(say, vec![Delta::Restart, text("Fresh")]);
        let (say, step) = take(
            &mut r,
            serde_json::json!({"type": "delta", "text": " late", "attempt": 1}),
        );
        assert!(say.is_empty());
        assert!(matches!(step, Step::Ignored(Ignored::Superseded)));
        let (_, step) = take(
            &mut r,
            serde_json::json!({"type": "error", "error": "x", "attempt": 1}),
        );
        assert!(
            matches!(step, Step::Ignored(Ignored::Superseded)),
            "a superseded attempt cannot fail the run"
        );
        let (say, step) = take(
            &mut r,
            serde_json::json!({"type": "final", "text": "Fresh answer", "attempt": 2}),
        );
        assert_eq!(say, vec![text(" answer")]);
        assert!(matches!(step, Step::End(Ok(_))));
        assert_eq!(r.ignored, 2);
    }

    #[test]
    fn a_final_that_does_not_continue_the_stream_replaces_it() {
        let mut r = Replies::default();
        take(
            &mut r,
            serde_json::json!({"type": "delta", "text": "draft", "attempt": 2}),
        );
        // An earlier attempt's final still wins when it comes first: it is a whole answer.
        let (say, step) = take(
            &mut r,
            serde_json::json!({"type": "final", "text": "Done.", "attempt": 1}),
        );
        assert_eq!(say, vec![Delta::Restart, text("Done.")]);
        assert!(matches!(step, Step::End(Ok(ref o)) if o.text == "Done."));
    }

    #[test]
    fn errors_deferrals_and_junk() {
        let mut r = Replies::default();
        let (_, step) = take(
            &mut r,
            serde_json::json!({"type": "error", "error": "model down"}),
        );
        assert!(matches!(step, Step::End(Err(RuntimeError::Failed(ref e))) if e == "model down"));
        let mut r = Replies::default();
        let (_, step) = take(
            &mut r,
            serde_json::json!({"type": "deferred", "attempt": 1}),
        );
        assert!(matches!(step, Step::End(Ok(ref o)) if o.deferred));
        let mut r = Replies::default();
        assert!(matches!(
            r.take(b"not json").1,
            Step::Ignored(Ignored::Malformed)
        ));
        assert!(matches!(
            take(&mut r, serde_json::json!({"type": "shout"})).1,
            Step::Ignored(Ignored::UnknownType)
        ));
        let (_, step) = take(&mut r, serde_json::json!({"type": "final", "text": "  "}));
        assert!(matches!(step, Step::End(Err(RuntimeError::Malformed(_)))));
    }
}
