//! Reading request bodies incrementally and within limits.

use axum::body::Body;
use http_body_util::BodyExt;

/// Why a body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// More than the limit arrived (or was announced by `Content-Length`).
    TooLarge,
    /// The connection failed mid-body.
    Io(String),
    /// The body did not arrive within its deadline (`--web.read-body-timeout`).
    Stalled,
}

/// Every this many bytes received extend the body deadline by [`EXTEND_PER_CHUNK`]: a body
/// must keep coming at 64 KiB/s on average once the base timeout has passed.
const EXTEND_CHUNK: usize = 64 << 10;
const EXTEND_PER_CHUNK: std::time::Duration = std::time::Duration::from_secs(1);

/// A request body read on demand: a prefix can be inspected (the gzip header check that
/// upstream's request decoder does before routing) and the rest read later, never holding
/// more than the limit in memory.
pub struct BufferedBody {
    body: Body,
    buf: Vec<u8>,
    done: bool,
    /// Deadline base: when the head arrived plus `--web.read-body-timeout`.
    deadline: tokio::time::Instant,
}

impl BufferedBody {
    /// Wraps a body; nothing is read yet. It must have arrived by `deadline`, extended by
    /// one second for every 64 KiB received.
    pub fn new(body: Body, deadline: tokio::time::Instant) -> Self {
        BufferedBody {
            body,
            buf: Vec::new(),
            done: false,
            deadline,
        }
    }

    /// Reads until at least `n` bytes are buffered or the body ends; returns what is
    /// buffered (at most `limit` bytes are ever held).
    pub async fn prefix(&mut self, n: usize, limit: usize) -> Result<&[u8], ReadError> {
        while self.buf.len() < n && !self.done {
            self.next_frame(limit).await?;
        }
        Ok(&self.buf)
    }

    /// Discards the rest of the body before an answer that does not need it ([`drain`]).
    pub async fn discard(self) {
        if !self.done {
            drain(self.body, self.deadline).await;
        }
    }

    /// Reads the whole body; `TooLarge` as soon as more than `limit` bytes arrived.
    pub async fn read_all(mut self, limit: usize) -> Result<Vec<u8>, ReadError> {
        while !self.done {
            self.next_frame(limit).await?;
        }
        Ok(self.buf)
    }

    async fn next_frame(&mut self, limit: usize) -> Result<(), ReadError> {
        let extend =
            EXTEND_PER_CHUNK * u32::try_from(self.buf.len() / EXTEND_CHUNK).unwrap_or(u32::MAX);
        let deadline = self.deadline.checked_add(extend).unwrap_or(self.deadline);
        let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
            Ok(f) => f,
            Err(_) => return Err(ReadError::Stalled),
        };
        match frame {
            None => self.done = true,
            Some(Err(e)) => return Err(ReadError::Io(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if self.buf.len().saturating_add(data.len()) > limit {
                        return Err(ReadError::TooLarge);
                    }
                    self.buf.extend_from_slice(&data);
                }
            }
        }
        Ok(())
    }
}

/// The gzip header check upstream's request decoder does for every non-API route
/// (`gzip.NewReader` reads the 10-byte header): the Go error text, or `None` when the body
/// starts like a gzip stream.
pub fn gzip_header_error(prefix: &[u8]) -> Option<&'static str> {
    if prefix.is_empty() {
        Some("EOF")
    } else if prefix.len() < 10 {
        Some("unexpected EOF")
    } else if prefix[..3] != [0x1f, 0x8b, 0x08] {
        Some("gzip: invalid header")
    } else {
        None
    }
}

/// At most this much of an unread request body is read and discarded before an early answer
/// (Go's server does the same, with the same bound).
const DRAIN_LIMIT: usize = 256 << 10;

/// Reads and discards what remains of a request body that is answered without being read
/// (401, 403), up to 256 KiB and until `deadline`. Over HTTP/2 the answer to a stream whose
/// body is still arriving goes out with a reset that can overtake it (the client then sees no
/// answer at all); a finished body avoids that. Larger or slower bodies are left: the
/// connection layer resets or closes them.
pub async fn drain(mut body: Body, deadline: tokio::time::Instant) {
    let mut seen = 0usize;
    while seen <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => seen += f.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}
