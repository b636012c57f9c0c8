//! Which publish failures are for good: JetStream will never take the event as it is, so after
//! `events.dead_letter_after` of them in a row the publisher dead-letters it instead of holding
//! its partition forever. Read from async-nats's error kinds, not from message text.

use async_nats::jetstream::{
    self, ErrorCode,
    context::{PublishError as NatsPublishError, PublishErrorKind},
};

/// Whether a publish failed for good: the message is larger than the server's `max_payload`
/// (the client checks it before sending, against the limit the server announced on this
/// connection), or JetStream answered that it exceeds the stream's maximum message or header
/// size. Everything else (timeouts, a dropped connection, no stream, a full stream) may pass
/// and is transient.
pub fn refused_for_good(e: &NatsPublishError) -> bool {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|j| {
                matches!(
                    j.error_code(),
                    ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                        | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
                )
            }),
        _ => false,
    }
}

/// The error with its cause (async-nats's `Display` names only the kind: "publish failed").
pub fn describe(e: &NatsPublishError) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jetstream_error(code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": code, "description": description
        }))
        .unwrap()
    }

    #[test]
    fn only_size_refusals_are_for_good() {
        let too_big = NatsPublishError::with_source(
            PublishErrorKind::MaxPayloadExceeded,
            "Payload size limit of 1024 exceeded by message size of 4000",
        );
        assert!(refused_for_good(&too_big));
        let stream_limit = NatsPublishError::with_source(
            PublishErrorKind::Other,
            jetstream_error(10054, "message size exceeds maximum allowed"),
        );
        assert!(refused_for_good(&stream_limit));
        assert!(describe(&stream_limit).contains("message size exceeds maximum allowed"));
        // Transient: they pass when the server comes back or the stream gets room.
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::MaxAckPending,
        ] {
            assert!(!refused_for_good(&NatsPublishError::new(kind)));
        }
        let full = NatsPublishError::with_source(
            PublishErrorKind::Other,
            jetstream_error(10047, "insufficient storage resources available"),
        );
        assert!(!refused_for_good(&full));
        let io = NatsPublishError::with_source(PublishErrorKind::Other, "connection reset");
        assert!(!refused_for_good(&io));
    }
}
