//! The conversation of one run with its runtime: call it; when it asks for tools, run them
//! (`tools::RunTools`), give it the results and call it again, up to the blueprint's
//! `max_tool_rounds` and `tools.run_budget`. When either is used up, the runtime is asked to
//! answer with what it has (`answer_now`), and the answer says that it stopped. What the
//! runtime says in any round streams into the one answer; while tools run, the answer shows a
//! short status, and at the end a line naming the tools used (per `show_tools`).

use std::time::Instant;

use ruma::RoomId;
use tokio::sync::mpsc;

use super::{
    Runner,
    runtime::{Delta, RunOutput, RunRequest, Runtime, RuntimeError, ToolRound},
    tools::RunTools,
};
use crate::{
    model::{
        StepStatus,
        tools::{ShowTools, ToolCallNote},
    },
    puppet::PuppetIntent,
};

/// What the conversation sends the answer's stream.
pub(super) enum Piece {
    /// More of the answer's text.
    Text(String),
    /// Take back the last this many bytes of the text (the runtime started its answer again).
    Unsay(usize),
    /// What is going on now (tools running), shown under the text until replaced; `None`
    /// clears it.
    Status(Option<String>),
    /// The end: what goes under the text, and the calls the final content carries.
    End {
        /// Shown under the answer (may be empty).
        footer: String,
        /// Every call of the run.
        notes: Vec<ToolCallNote>,
    },
}

/// Why a run stopped calling tools before the model was done with them.
enum Stopped {
    Rounds(u32),
    Time,
}

impl Runner {
    /// Talks with `runtime` until it answers without asking for tools (or may ask no more),
    /// running its tool calls between. The returned output holds the whole text said.
    pub(super) async fn converse(
        &self,
        runtime: &dyn Runtime,
        request: &mut RunRequest,
        tools: &mut RunTools<'_>,
        pieces: mpsc::Sender<Piece>,
        intent: &PuppetIntent,
        room: &RoomId,
    ) -> Result<RunOutput, RuntimeError> {
        let set = intent.agent().behaviour.tools.clone();
        let budget = self.settings.tools.run_budget;
        let started = Instant::now();
        let mut total = RunOutput::default();
        let mut stopped = None;
        loop {
            let (tx, mut rx) = mpsc::channel::<Delta>(256);
            let separate = !total.text.trim().is_empty();
            let forward = async {
                let mut first = true;
                // What this call streamed so far, in bytes (what a restart takes back).
                let mut streamed = 0;
                while let Some(delta) = rx.recv().await {
                    match delta {
                        Delta::Text(piece) => {
                            let piece = if first && separate {
                                format!("\n\n{piece}")
                            } else {
                                piece
                            };
                            first = false;
                            streamed += piece.len();
                            let _ = pieces.send(Piece::Text(piece)).await;
                        }
                        Delta::Restart => {
                            if streamed > 0 {
                                let _ = pieces.send(Piece::Unsay(streamed)).await;
                            }
                            streamed = 0;
                            first = true;
                        }
                    }
                }
            };
            let (out, ()) = tokio::join!(runtime.call(request, tx), forward);
            let out = out?;
            if !out.text.trim().is_empty() {
                if separate {
                    total.text.push_str("\n\n");
                }
                total.text.push_str(&out.text);
            }
            total.prompt_tokens = sum(total.prompt_tokens, out.prompt_tokens);
            total.completion_tokens = sum(total.completion_tokens, out.completion_tokens);
            total.files.extend(out.files);
            total.deferred = out.deferred;
            if out.tool_calls.is_empty() || out.deferred || request.answer_now {
                break;
            }
            let done = request.tool_rounds.len() as u32;
            if done >= set.max_rounds || started.elapsed() >= budget {
                // The calls it asked for now are not run: it answers with what it has.
                stopped = Some(if done >= set.max_rounds {
                    Stopped::Rounds(done)
                } else {
                    Stopped::Time
                });
                request.answer_now = true;
                continue;
            }
            if set.show != ShowTools::None {
                let status = status_line(set.show, &out.tool_calls);
                let _ = pieces.send(Piece::Status(Some(status))).await;
            }
            // Typing while tools run; it lapses on its own if a tool takes longer.
            let _ = intent
                .typing(room, Some(std::time::Duration::from_secs(30)))
                .await;
            let results = tools
                .execute(done as i32, &out.tool_calls)
                .await
                .map_err(|e| RuntimeError::Config(format!("cannot record tool calls: {e}")))?;
            let _ = pieces.send(Piece::Status(None)).await;
            request.tool_rounds.push(ToolRound {
                text: out.text,
                calls: out.tool_calls,
                results,
            });
        }
        if total.text.trim().is_empty() && !request.tool_rounds.is_empty() && !total.deferred {
            // Never silent after tools: say what went wrong, or that there is nothing to add.
            let fallback = fallback(&request.tool_rounds);
            let _ = pieces.send(Piece::Text(fallback.clone())).await;
            total.text = fallback;
        }
        let mut footer = footer(set.show, &tools.notes);
        match stopped {
            Some(Stopped::Rounds(n)) => {
                footer.push_str(&format!("\n\n_(I stopped using tools after {n} rounds.)_"))
            }
            Some(Stopped::Time) => {
                footer.push_str("\n\n_(I stopped using tools: the time for them ran out.)_")
            }
            None => {}
        }
        let _ = pieces
            .send(Piece::End {
                footer,
                notes: tools.notes.clone(),
            })
            .await;
        Ok(total)
    }
}

fn sum(a: Option<i32>, b: Option<i32>) -> Option<i32> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

/// "_Using weather…_" (summary), with the arguments (full).
fn status_line(show: ShowTools, calls: &[super::runtime::ToolCall]) -> String {
    let names: Vec<String> = calls
        .iter()
        .map(|c| {
            let name = c.name.replace("__", ".");
            if show == ShowTools::Full {
                let args: String = c.arguments.chars().take(80).collect();
                format!("{name} {args}")
            } else {
                name
            }
        })
        .collect();
    format!("_Using {}…_", names.join(", "))
}

fn mark(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Ok => "✓",
        StepStatus::Failed => "✗ failed",
        StepStatus::Denied => "✗ not allowed",
        StepStatus::Interrupted => "✗ interrupted",
        StepStatus::Running => "…",
    }
}

/// The line (summary) or list (full) of tools used, under the answer.
fn footer(show: ShowTools, notes: &[ToolCallNote]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    match show {
        ShowTools::None => String::new(),
        ShowTools::Summary => {
            let used: Vec<String> = notes
                .iter()
                .map(|n| format!("{} {}", n.name, mark(n.status)))
                .collect();
            format!("\n\n_Tools: {}_", used.join(", "))
        }
        ShowTools::Full => {
            let mut s = String::from("\n\n_Tools:_");
            for n in notes {
                s.push_str(&format!(
                    "\n- `{}` `{}` {}",
                    n.name,
                    n.arguments.replace('`', "'"),
                    mark(n.status)
                ));
            }
            s
        }
    }
}

/// What the agent says when the runtime gave no text after its tools.
fn fallback(rounds: &[ToolRound]) -> String {
    let failed: Vec<String> = rounds
        .iter()
        .flat_map(|r| r.calls.iter().zip(&r.results))
        .filter(|(_, r)| r.status != StepStatus::Ok)
        .map(|(c, r)| {
            let why = serde_json::from_str::<serde_json::Value>(&r.content)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| r.status.to_string());
            format!("{} ({why})", c.name.replace("__", "."))
        })
        .collect();
    if failed.is_empty() {
        "I used my tools but have no answer to give.".into()
    } else {
        format!("I could not finish: {}.", failed.join("; "))
    }
}
