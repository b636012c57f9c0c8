//! Request bodies with a deadline, and what is refused before a body is read.
//!
//! - [`DeadlineBody`]: the whole body must arrive within `server.body_timeout`, counted from
//!   when its request's headers arrived, however slowly it drips (tower-http's body timeout
//!   restarts at every chunk, so one byte every few seconds kept a connection forever).
//! - [`body_error`]: what a failed read answers: 408 `M_UNKNOWN` past the deadline, 413
//!   `M_TOO_LARGE` past the size limit, never 400 `M_BAD_JSON` for either.
//! - [`refuse_oversized`]: a declared `Content-Length` over the route's limit gets 413 at once,
//!   before a byte of the body is read.
//!
//! A response produced while its request's body is still unread closes the connection
//! (`Connection: close`, set by the listener from [`BodyState`]): the unread rest is never
//! buffered, and a dripping client cannot keep the connection.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Request, State, rejection::BytesRejection},
    http::{StatusCode, header::CONTENT_LENGTH},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use ruma::api::error::ErrorKind;
use tokio::time::{Instant, Sleep};

use crate::server::error::MatrixError;

/// The body did not arrive within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyDeadline(pub Duration);

/// Whether a request's body was read to its end (shared by the body and the listener).
#[derive(Debug, Default)]
pub struct BodyState {
    finished: AtomicBool,
}

impl BodyState {
    /// The body was read to its end.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }
}

/// A request body that fails with [`BodyDeadline`] once its deadline has passed.
pub struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    /// Made on the first wait only: a body that is already buffered costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<BodyState>,
}

impl DeadlineBody {
    /// `inner`, due `timeout` from now; `state` learns when it was read to the end.
    pub fn new(inner: Incoming, timeout: Duration, state: Arc<BodyState>) -> Self {
        Self {
            inner,
            deadline: Instant::now() + timeout,
            timeout,
            sleep: None,
            state,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.state.finished.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                // A body that keeps dripping is never Pending for long: check the clock too.
                if Instant::now() >= this.deadline && !this.inner.is_end_stream() {
                    return Poll::Ready(Some(Err(Box::new(BodyDeadline(this.timeout)))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Box::new(error)))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyDeadline(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` or anything it was caused by is a [`BodyDeadline`].
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyDeadline>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// 408 `M_UNKNOWN`: the request did not arrive in time.
pub fn request_timeout(message: impl Into<String>) -> MatrixError {
    MatrixError::new(StatusCode::REQUEST_TIMEOUT, ErrorKind::Unknown, message)
}

/// The Matrix error for a body that could not be read: 408 past the deadline, 413 past
/// `limit`, 400 `M_BAD_JSON` otherwise (the client broke the framing).
pub fn body_error(rejection: BytesRejection, limit: usize) -> MatrixError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return MatrixError::too_large(limit);
    }
    if timed_out(&rejection) {
        return request_timeout("the request body did not arrive within the deadline");
    }
    MatrixError::bad_json(rejection.body_text())
}

/// Refuses a declared `Content-Length` over `limit` with 413 before reading the body (a
/// chunked body is still bounded while it is read).
pub async fn refuse_oversized(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return MatrixError::too_large(limit).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_inside_axums_rejection_is_found() {
        let inner: BoxError = Box::new(BodyDeadline(Duration::from_secs(1)));
        let axum_error = axum::Error::new(inner);
        assert!(timed_out(&axum_error));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!timed_out(&other));
    }
}
