//! The connection's socket as hyper sees it, so that what hyper answers by itself is a Matrix
//! error too. hyper refuses a request head it cannot parse (a negative, non-numeric or doubled
//! `Content-Length`, a garbage request line, too many headers, a URI too long) with a bare
//! status line and no body, says nothing to an HTTP/2 preface, and closes a connection whose
//! headers miss their deadline without a word. This wrapper gives each a
//! `{"errcode","error"}` body:
//!
//! - a response hyper writes with `content-length: 0`, no `content-type` and a 4xx/5xx status,
//!   right after request bytes arrived (our own errors always carry a JSON body, so nothing of
//!   ours matches), is replaced by the same status with a JSON body and `connection: close`;
//! - an HTTP/2 preface as a connection's first bytes gets 505 and the connection ends;
//! - a connection dropped while a request's bytes are waiting unanswered (its deadline passed)
//!   gets a best-effort 408 first.
//!
//! It also closes a connection the way a client still sending can read: a *lingering close*.
//! A response sent before its request's body was read (413, 401, 403…) ends the connection
//! with the client possibly still writing. Closing a socket with unread bytes makes the kernel
//! answer with a reset, and a reset can destroy the response in the client's receive buffer
//! before the client reads it: the client sees "broken pipe" instead of our 413. So shutting
//! down sends FIN after the response and then reads and discards what still comes, until the
//! client closes, [`LINGER`] passes or [`LINGER_BYTES`] were thrown away (nginx's
//! `lingering_close` does the same).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::metrics::Metrics;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How long a closing connection keeps reading what its client still sends. Long enough for a
/// client to read a response that arrived in the middle of its upload, short enough that a
/// hostile client gains nothing (the connection still counts against the budget and can be
/// evicted meanwhile).
pub const LINGER: Duration = Duration::from_secs(2);

/// How many bytes a closing connection reads and throws away at most.
pub const LINGER_BYTES: u64 = 16 << 20;

/// A TCP connection that turns hyper's own bare error responses into Matrix errors.
pub struct MatrixIo {
    stream: TcpStream,
    /// Request bytes arrived and nothing was written since: a response is owed.
    owed: bool,
    /// Bytes ever read (the HTTP/2 preface is looked for at the start only).
    read_total: u64,
    /// The peer closed its side.
    eof: bool,
    /// A replacement response still to be written, and how much of it is.
    pending: Vec<u8>,
    written: usize,
    /// Counts a request dropped unanswered (`requests_timed_out`).
    metrics: Arc<Metrics>,
    /// The lingering close once our side is shut: until when, and what may still be read.
    linger: Option<Linger>,
}

/// A lingering close in progress.
struct Linger {
    until: Pin<Box<tokio::time::Sleep>>,
    budget: u64,
}

impl MatrixIo {
    /// Wraps `stream`, counting requests dropped unanswered in `metrics`.
    pub fn new(stream: TcpStream, metrics: Arc<Metrics>) -> Self {
        Self {
            stream,
            owed: false,
            read_total: 0,
            eof: false,
            pending: Vec::new(),
            written: 0,
            metrics,
            linger: None,
        }
    }

    /// Reads and discards what the client still sends, until it closes, the linger time ends or
    /// the byte budget is spent; ready once any of those happens.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(linger) = self.linger.as_mut() else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 8192];
        loop {
            if linger.until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                // The client closed (or reset): nothing left that a reset could destroy.
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() as u64;
                    if n >= linger.budget {
                        return Poll::Ready(());
                    }
                    linger.budget -= n;
                }
            }
        }
    }

    /// Writes what is left of the replacement response.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// A Matrix error response: `status` with `{"errcode","error"}` and `connection: close`.
pub fn error_response(status: u16, errcode: &str, error: &str) -> Vec<u8> {
    let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// If `buf` is exactly one of hyper's own bodiless error responses, its status.
fn hypers_own_error(buf: &[u8]) -> Option<u16> {
    if !buf.starts_with(b"HTTP/1.1 4") && !buf.starts_with(b"HTTP/1.1 5") {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = response.parse(buf).ok()? else {
        return None;
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let bodiless = header("content-length") == Some(b"0".as_slice());
    (len == buf.len() && bodiless && header("content-type").is_none())
        .then_some(response.code)
        .flatten()
}

/// The Matrix error that stands for hyper's bare `status`.
fn replacement(status: u16) -> Vec<u8> {
    match status {
        431 => error_response(
            431,
            "M_TOO_LARGE",
            "the request headers are too large or too many",
        ),
        414 => error_response(414, "M_TOO_LARGE", "the request URI is too long"),
        400 => error_response(
            400,
            "M_UNKNOWN",
            "not a valid HTTP/1.1 request (request line, a header or Content-Length)",
        ),
        other => error_response(other, "M_UNKNOWN", "the request could not be processed"),
    }
}

impl AsyncRead for MatrixIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            // A replacement answer is on its way; the connection ends after it.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        if got.is_empty() {
            this.eof = true;
            return Poll::Ready(Ok(()));
        }
        // "PRI " is no method anyone serves: four bytes are enough to know the preface.
        if this.read_total == 0
            && got.len() >= 4
            && got.starts_with(&H2_PREFACE[..got.len().min(H2_PREFACE.len())])
        {
            // hyper would close without a word; say why, and end the connection.
            buf.set_filled(before);
            this.pending = error_response(
                505,
                "M_UNRECOGNIZED",
                "HTTP/2 is not served on this port; use HTTP/1.1",
            );
            let _ = this
                .stream
                .try_write(&this.pending)
                .map(|n| this.written = n);
            return Poll::Ready(Ok(()));
        }
        this.read_total += got.len() as u64;
        this.owed = true;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MatrixIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if std::mem::take(&mut this.owed)
            && let Some(status) = hypers_own_error(buf)
        {
            this.pending = replacement(status);
            this.written = 0;
            ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next())
            && this.owed
            && hypers_own_error(only).is_some()
        {
            let only: &[u8] = only;
            return Pin::new(this).poll_write(cx, only);
        }
        this.owed = false;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            ready!(this.poll_pending(cx))?;
            // FIN after the response: the client reads it to the end at once.
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.linger = Some(Linger {
                until: Box::pin(tokio::time::sleep(LINGER)),
                budget: LINGER_BYTES,
            });
        }
        ready!(this.poll_linger(cx));
        this.eof = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for MatrixIo {
    fn drop(&mut self) {
        if self.written < self.pending.len() {
            let _ = self.stream.try_write(&self.pending[self.written..]);
        } else if self.owed && !self.eof && self.pending.is_empty() {
            // Bytes of a request came and no answer went: its deadline passed (or the bridge is
            // shutting down past its grace). Best effort, never blocking.
            self.metrics.requests_timed_out.inc();
            let _ = self.stream.try_write(&error_response(
                408,
                "M_UNKNOWN",
                "the request did not arrive within the deadline",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_errors_are_recognised() {
        assert_eq!(
            hypers_own_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            hypers_own_error(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            ),
            Some(431)
        );
        // Ours carry a JSON body; a success is never touched; a head followed by body bytes
        // or cut short is not hyper's bare answer.
        assert_eq!(
            hypers_own_error(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"),
            None
        );
        assert_eq!(
            hypers_own_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            hypers_own_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nxx"),
            None
        );
        assert_eq!(
            hypers_own_error(b"HTTP/1.1 400 Bad Request\r\ncontent-len"),
            None
        );
    }

    #[test]
    fn replacements_are_matrix_errors() {
        let text = String::from_utf8(replacement(431)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["errcode"], "M_TOO_LARGE");
    }
}
