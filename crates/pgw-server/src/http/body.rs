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
}

/// A request body read on demand: a prefix can be inspected (the gzip header check that
/// upstream's request decoder does before routing) and the rest read later, never holding
/// more than the limit in memory.
pub struct BufferedBody {
    body: Body,
    buf: Vec<u8>,
    done: bool,
}

impl BufferedBody {
    /// Wraps a body; nothing is read yet.
    pub fn new(body: Body) -> Self {
        BufferedBody {
            body,
            buf: Vec::new(),
            done: false,
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

    /// Reads the whole body; `TooLarge` as soon as more than `limit` bytes arrived.
    pub async fn read_all(mut self, limit: usize) -> Result<Vec<u8>, ReadError> {
        while !self.done {
            self.next_frame(limit).await?;
        }
        Ok(self.buf)
    }

    async fn next_frame(&mut self, limit: usize) -> Result<(), ReadError> {
        match self.body.frame().await {
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
