//! Stopping an answer while it is generated: the runs under way in each channel, each with a
//! token the run worker watches. A `stop` command (this floor) cancels them without importing
//! the run worker (the floor above), which registers each run here while it executes. Only
//! runs of this process are known: a stop is for an answer a person sees being written now.

use std::{collections::HashMap, sync::Mutex};

use tokio_util::sync::CancellationToken;

use crate::model::ids::{ChannelId, RunId};

/// The runs under way, by channel.
#[derive(Debug, Default)]
pub struct RunStops {
    runs: Mutex<HashMap<ChannelId, Vec<(RunId, CancellationToken)>>>,
}

/// A run's registration: cancelled by [`RunStops::stop`], removed when dropped.
pub struct Registered<'a> {
    stops: &'a RunStops,
    channel: ChannelId,
    run: RunId,
    /// Cancelled when someone stops the channel's answers.
    pub token: CancellationToken,
}

impl RunStops {
    fn runs(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ChannelId, Vec<(RunId, CancellationToken)>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers run `run` of `channel` for as long as the returned value lives.
    pub fn register(&self, channel: ChannelId, run: RunId) -> Registered<'_> {
        let token = CancellationToken::new();
        self.runs()
            .entry(channel)
            .or_default()
            .push((run, token.clone()));
        Registered {
            stops: self,
            channel,
            run,
            token,
        }
    }

    /// Cancels every run under way in `channel`; returns how many there were.
    pub fn stop(&self, channel: ChannelId) -> usize {
        let runs = self.runs();
        let Some(list) = runs.get(&channel) else {
            return 0;
        };
        for (_, token) in list {
            token.cancel();
        }
        list.len()
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut runs = self.stops.runs();
        if let Some(list) = runs.get_mut(&self.channel) {
            list.retain(|(run, _)| *run != self.run);
            if list.is_empty() {
                runs.remove(&self.channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_cancels_the_channels_runs_only_while_they_run() {
        let stops = RunStops::default();
        let (a, b) = (ChannelId::new(), ChannelId::new());
        let run = stops.register(a, RunId::new());
        let other = stops.register(b, RunId::new());
        assert_eq!(stops.stop(a), 1);
        assert!(run.token.is_cancelled() && !other.token.is_cancelled());
        drop(run);
        assert_eq!(
            stops.stop(a),
            0,
            "a finished run is no longer there to stop"
        );
    }
}
