//! Files a runtime answers with (a webhook's `files`, an OpenAI-compatible answer's images),
//! posted after the text through the same path as the agent API's `POST …/files`: fetched when
//! given by URL (bounded like any download), typed by their bytes, uploaded as the agent (sealed
//! in an encrypted room), and sent through the durable outbox, replying to what the run answers.
//! Each file's send is keyed by the run and its place, so a resumed run posts none twice.

use ruma::{OwnedEventId, RoomId};

use super::{
    Runner,
    runtime::{OutContent, OutFile},
};
use crate::{
    db::{outbox::Enqueued, triggers::TriggerRow},
    model::OutboxStatus,
    puppet::{
        PuppetIntent, RUN_KEY_PREFIX, Send,
        content::{self, Outgoing, OutgoingFile},
    },
};

impl Runner {
    /// Posts `files`, in order; returns the events of those that went out (a file that cannot
    /// be had or sent is logged and counted, and the others still go).
    pub(super) async fn post_files(
        &self,
        run: impl std::fmt::Display,
        intent: &PuppetIntent,
        room: &RoomId,
        last: &TriggerRow,
        files: &[OutFile],
    ) -> Vec<OwnedEventId> {
        let mut posted = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let key = format!("{RUN_KEY_PREFIX}{run}:file:{i}");
            match self.post_file(intent, room, last, file, key).await {
                Ok(event) => {
                    self.metrics.media("sent");
                    posted.push(event);
                }
                Err(error) => {
                    self.metrics.media("send_failed");
                    tracing::warn!(run_id = %run, name = %file.name, %error, "cannot post a file of the answer");
                }
            }
        }
        posted
    }

    async fn post_file(
        &self,
        intent: &PuppetIntent,
        room: &RoomId,
        last: &TriggerRow,
        file: &OutFile,
        key: String,
    ) -> Result<OwnedEventId, String> {
        let item = match intent.queued(&key).await.map_err(|e| e.to_string())? {
            // Queued by an earlier attempt of this run: not uploaded again.
            Some(item) => item,
            None => {
                let content = self.file_content(intent, room, last, file).await?;
                let send = Send {
                    content,
                    key: Some(key),
                    request_hash: None,
                };
                match intent.send(room, send).await.map_err(|e| e.to_string())? {
                    Enqueued::New(item) | Enqueued::Existing(item) | Enqueued::KeyReused(item) => {
                        item
                    }
                }
            }
        };
        let item = intent
            .wait(item.id, self.settings.send_wait)
            .await
            .map_err(|e| e.to_string())?;
        match (item.status, item.event_id) {
            (OutboxStatus::Sent, Some(event)) => Ok(event),
            _ => Err(item
                .error
                .unwrap_or_else(|| "the homeserver has not accepted the file yet".into())),
        }
    }

    /// The message of a file: fetched, typed, uploaded.
    async fn file_content(
        &self,
        intent: &PuppetIntent,
        room: &RoomId,
        last: &TriggerRow,
        file: &OutFile,
    ) -> Result<content::Content, String> {
        let media = &self.settings.media;
        let declared = file.mimetype.as_deref().unwrap_or("");
        let cap = media.cap(declared.split('/').next().unwrap_or(""));
        let bytes = match &file.content {
            OutContent::Bytes(bytes) => bytes.clone(),
            OutContent::Url(url) => self.fetch(url, media.video_max_bytes.max(cap)).await?,
        };
        let mimetype = infer::get(&bytes)
            .map(|t| t.mime_type().to_owned())
            .or_else(|| file.mimetype.clone())
            .unwrap_or_else(|| "application/octet-stream".into());
        let cap = media.cap(mimetype.split('/').next().unwrap_or(""));
        if bytes.is_empty() || bytes.len() as u64 > cap {
            return Err(format!(
                "{} bytes: not within 1 and the {cap}-byte cap",
                bytes.len()
            ));
        }
        let dimensions = mimetype
            .starts_with("image/")
            .then(|| imagesize::blob_size(&bytes).ok())
            .flatten()
            .map(|s| (s.width as u64, s.height as u64));
        // A name is a name, never a path.
        let name: String = file
            .name
            .chars()
            .filter(|c| !matches!(c, '/' | '\\' | '\0'))
            .take(255)
            .collect();
        let size = bytes.len() as u64;
        let source = intent
            .upload(room, bytes, &mimetype, &name)
            .await
            .map_err(|e| e.to_string())?;
        let trigger = &last.payload.0;
        Ok(content::file(&OutgoingFile {
            source,
            filename: name,
            caption: None,
            mimetype,
            size,
            dimensions,
            place: Outgoing {
                reply_to: Some(last.event_id.clone()),
                thread_root: trigger.thread_root.clone(),
                mentions: vec![trigger.sender.clone()],
                ..Outgoing::default()
            },
        }))
    }

    /// Fetches a runtime's file URL: at most `cap` bytes, within the download timeout.
    async fn fetch(&self, url: &str, cap: u64) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(url)
            .timeout(self.settings.media.download_timeout)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > cap) {
            return Err(format!("{url} is larger than the {cap}-byte cap"));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if (bytes.len() + chunk.len()) as u64 > cap {
                return Err(format!("{url} is larger than the {cap}-byte cap"));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}
