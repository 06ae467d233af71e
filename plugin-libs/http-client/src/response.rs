//! Reading one response off a connection: the head with `httparse`, then the body as its
//! framing says (RFC 9112 §6.3): none for 204/304, chunked when the last transfer coding is
//! `chunked`, `Content-Length` bytes, or everything until the server closes. Every byte is the
//! server's to choose, so each step is bounded: the head to [`MAX_HEAD_BYTES`] and
//! [`MAX_HEADERS`], the body to the client's limit, the time to the request's deadline.

use std::io::{self, Read};
use std::net::TcpStream;

use httparse::Status;

use crate::{Error, Wait};

/// The most a response head (status line and headers), or a chunk-size line or trailer, may
/// take.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a response may have.
pub(crate) const MAX_HEADERS: usize = 100;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header fields in the order received; names as the server spelled them.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, with any transfer coding removed.
    pub body: Vec<u8>,
}

impl Response {
    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (in any case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The start of the body as text, for an error message.
    pub fn excerpt(&self, max_bytes: usize) -> String {
        let end = self.body.len().min(max_bytes);
        let mut text = String::from_utf8_lossy(&self.body[..end]).trim().to_owned();
        if end < self.body.len() {
            text.push_str("...");
        }
        text
    }
}

/// The status line and headers of a response.
struct Head {
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    version: u8,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// Every comma-separated token of every header named `name`.
    fn tokens<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'h [u8]> + 'h {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, value)| value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|token| !token.is_empty())
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Whether the server lets the connection carry another request.
    fn keeps_alive(&self) -> bool {
        let says = |word: &str| {
            self.tokens("connection")
                .any(|token| token.eq_ignore_ascii_case(word.as_bytes()))
        };
        match self.version {
            1 => !says("close"),
            _ => says("keep-alive"),
        }
    }
}

enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads one response; remembers whether any byte of it arrived, which tells a failure on a
/// reused connection the server had already closed (nothing arrived) from one mid-response.
pub(crate) struct ResponseReader<'s> {
    stream: &'s TcpStream,
    buf: Vec<u8>,
    limit: usize,
    pub(crate) received_any: bool,
}

impl<'s> ResponseReader<'s> {
    pub(crate) fn new(stream: &'s TcpStream, limit: usize) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            limit,
            received_any: false,
        }
    }

    /// The response, and whether the connection may carry another request.
    pub(crate) fn read(&mut self, wait: &mut Wait) -> Result<(Response, bool), Error> {
        let head = loop {
            let head = self.read_head(wait)?;
            match head.status {
                // Interim responses (100 Continue, 103 Early Hints) precede the real one.
                100 | 102..=199 => continue,
                101 => {
                    return Err(Error::Malformed(
                        "the server switched protocols (101), which was not asked for".into(),
                    ));
                }
                _ => break head,
            }
        };
        let chunked_and_length = head.has("transfer-encoding") && head.has("content-length");
        let framing = framing(&head)?;
        let body = match framing {
            Framing::Empty => Vec::new(),
            Framing::Length(length) => self.read_length(length, wait)?,
            Framing::Chunked => self.read_chunked(wait)?,
            Framing::UntilClose => self.read_until_close(wait)?,
        };
        // Bytes past the response were not asked for: the connection is out of step.
        let reusable = head.keeps_alive()
            && !matches!(framing, Framing::UntilClose)
            && !chunked_and_length
            && self.buf.is_empty();
        let response = Response {
            status: head.status,
            headers: head.headers,
            body,
        };
        Ok((response, reusable))
    }

    /// Reads more bytes into the buffer: false at the end of the stream.
    fn fill(&mut self, wait: &mut Wait) -> Result<bool, Error> {
        let mut chunk = [0u8; 16 * 1024];
        let mut stream = self.stream;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.received_any = true;
                    self.buf.extend_from_slice(&chunk[..n]);
                    wait.progressed()?;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait.pause()?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Fills, calling the end of the stream an error: `what` says what was cut short.
    fn fill_more(&mut self, wait: &mut Wait, what: &str) -> Result<(), Error> {
        if self.fill(wait)? {
            Ok(())
        } else {
            Err(Error::Malformed(format!(
                "the server closed the connection {what}"
            )))
        }
    }

    fn read_head(&mut self, wait: &mut Wait) -> Result<Head, Error> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf) {
                Ok(Status::Complete(length)) => {
                    let status = parsed.code.unwrap_or(0);
                    if status < 100 {
                        return Err(Error::Malformed(format!("status {status} is not valid")));
                    }
                    let head = Head {
                        version: parsed.version.unwrap_or(1),
                        status,
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| (h.name.to_owned(), h.value.to_vec()))
                            .collect(),
                    };
                    self.buf.drain(..length);
                    return Ok(head);
                }
                Ok(Status::Partial) if self.buf.len() > MAX_HEAD_BYTES => {
                    return Err(Error::Malformed(format!(
                        "the response head is over {} KiB",
                        MAX_HEAD_BYTES / 1024
                    )));
                }
                Ok(Status::Partial) => {
                    if !self.fill(wait)? {
                        return Err(if self.buf.is_empty() {
                            Error::Io(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the server closed the connection without a response",
                            ))
                        } else {
                            Error::Malformed(
                                "the server closed the connection inside the response head".into(),
                            )
                        });
                    }
                }
                Err(e) => return Err(Error::Malformed(format!("invalid response head: {e}"))),
            }
        }
    }

    fn read_length(&mut self, length: usize, wait: &mut Wait) -> Result<Vec<u8>, Error> {
        if length > self.limit {
            return Err(Error::TooLarge { limit: self.limit });
        }
        while self.buf.len() < length {
            let what = format!("after {} of {length} body bytes", self.buf.len());
            self.fill_more(wait, &what)?;
        }
        Ok(self.buf.drain(..length).collect())
    }

    fn read_until_close(&mut self, wait: &mut Wait) -> Result<Vec<u8>, Error> {
        // The head's reads may have brought the whole body already, so the check comes first.
        loop {
            if self.buf.len() > self.limit {
                return Err(Error::TooLarge { limit: self.limit });
            }
            if !self.fill(wait)? {
                return Ok(std::mem::take(&mut self.buf));
            }
        }
    }

    fn read_chunked(&mut self, wait: &mut Wait) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        loop {
            let (line, size) = match httparse::parse_chunk_size(&self.buf) {
                Ok(Status::Complete(found)) => found,
                Ok(Status::Partial) if self.buf.len() > MAX_HEAD_BYTES => {
                    return Err(Error::Malformed("a chunk-size line is too long".into()));
                }
                Ok(Status::Partial) => {
                    self.fill_more(wait, "inside a chunked body")?;
                    continue;
                }
                Err(_) => return Err(Error::Malformed("invalid chunk-size line".into())),
            };
            self.buf.drain(..line);
            if size == 0 {
                break;
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|size| body.len().saturating_add(*size) <= self.limit)
                .ok_or(Error::TooLarge { limit: self.limit })?;
            while self.buf.len() < size + 2 {
                self.fill_more(wait, "inside a chunk")?;
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(Error::Malformed("a chunk does not end with CRLF".into()));
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
        // The trailer section: fields (ignored) up to an empty line.
        loop {
            match self.buf.windows(2).position(|pair| pair == b"\r\n") {
                Some(0) => {
                    self.buf.drain(..2);
                    return Ok(body);
                }
                Some(end) => {
                    self.buf.drain(..end + 2);
                }
                None if self.buf.len() > MAX_HEAD_BYTES => {
                    return Err(Error::Malformed("the chunked trailer is too long".into()));
                }
                None => self.fill_more(wait, "inside the chunked trailer")?,
            }
        }
    }
}

fn framing(head: &Head) -> Result<Framing, Error> {
    if matches!(head.status, 204 | 304) {
        return Ok(Framing::Empty);
    }
    if head.has("transfer-encoding") {
        let last = head.tokens("transfer-encoding").last();
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            // Any other final coding leaves the end to the connection's close.
            _ => Framing::UntilClose,
        });
    }
    let mut length = None;
    for token in head.tokens("content-length") {
        let parsed = std::str::from_utf8(token)
            .ok()
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::Malformed(format!(
                    "Content-Length {:?} is not a number",
                    String::from_utf8_lossy(token)
                ))
            })?;
        if length.is_some_and(|seen| seen != parsed) {
            return Err(Error::Malformed("conflicting Content-Length values".into()));
        }
        length = Some(parsed);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}
