//! A small blocking HTTP/1.1 client for the appliance's connector plugins (`http-source`,
//! `http-sink`), written for WASI preview 2 sockets and the host's per-call deadline.
//!
//! # Design
//! - A [`Client`] talks to one origin, the plugin's [`Url`], over at most one connection. A
//!   response that leaves the connection usable (HTTP/1.1 without `Connection: close`, framed
//!   by length or chunks, nothing after it) keeps it for the next request. A kept connection
//!   is checked before reuse (the server may have closed it while idle) and, when it fails
//!   before any byte of the response arrives, the request is sent once more on a new
//!   connection: that is almost always a server closing an idle connection.
//! - Every request has a deadline covering connect, send and the whole response (resolving
//!   a host name is the system's and not bounded by it). The socket is non-blocking: reads take what is there and, when nothing is,
//!   sleep 1 ms growing to 10 ms before trying again, so no call waits past the deadline and
//!   the same code runs natively (unit tests) and in the sandbox.
//! - Responses come from outside, so they are bounded: a head to 64 KiB and 100 fields, a
//!   body to [`Client::with_max_response_bytes`] (64 MiB by default), reading to the
//!   deadline. The `response` module has the framing rules.
//! - Only `http://`. The host is used as written: an IP address connects directly; a name is
//!   resolved through the sandbox, which may refuse DNS, and the error says so.
//!
//! Data flow: `get`/`post` -> request bytes (request line, `Host`, `User-Agent`,
//! `Content-Length`, the client's headers, the call's headers, body) -> kept or new
//! connection -> `response` reads head and body -> [`Response`].
//!
//! [`check_grant`] lets a plugin find a missing `wasi.net` grant when it starts, and
//! [`compact_json`] is here because both HTTP plugins put JSON values on one line each.

mod compact;
mod response;
mod url;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub use compact::compact_json;
pub use response::Response;
pub use url::Url;

use response::ResponseReader;

/// The default bound on a response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a request failed.
#[derive(Debug)]
pub enum Error {
    /// The URL's host name did not resolve (a sandbox may refuse DNS: use an IP address).
    Resolve { host: String, source: io::Error },
    /// No connection to the address (in the appliance it needs a `wasi.net` grant).
    Connect { addr: String, source: io::Error },
    /// The connection broke while sending the request or receiving the response.
    Io(io::Error),
    /// The server's answer is not a valid HTTP/1.x response.
    Malformed(String),
    /// The response body is over the client's limit.
    TooLarge { limit: usize },
    /// The deadline passed before the response was complete.
    Timeout(Duration),
    /// A header the caller passed cannot be sent.
    InvalidHeader(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resolve { host, source } => write!(
                f,
                "cannot resolve {host:?}: {source} (the sandbox may not offer DNS; an IP \
                 address in the URL avoids it)"
            ),
            Self::Connect { addr, source } => write!(
                f,
                "cannot connect to {addr}: {source} (outbound connections need a \
                 wasi.net={addr} grant)"
            ),
            Self::Io(source) => write!(f, "connection failed: {source}"),
            Self::Malformed(what) => write!(f, "invalid HTTP response: {what}"),
            Self::TooLarge { limit } => write!(f, "the response is over {limit} bytes"),
            Self::Timeout(timeout) => {
                write!(f, "no complete response within {} ms", timeout.as_millis())
            }
            Self::InvalidHeader(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for Error {}

/// Checks that a request header can be sent as given: a token name, a value without line
/// breaks, and not one of the headers that frame the message (the client sets those).
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(format!("the value of header {name} contains a line break"));
    }
    if ["content-length", "transfer-encoding", "connection"]
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
    {
        return Err(format!(
            "header {name} is set by the client itself and cannot be configured"
        ));
    }
    Ok(())
}

/// Fails when the sandbox forbids connections to the URL's address, so that a missing
/// `wasi.net` grant shows when the plugin starts (the appliance validates a connector by
/// starting its tasks) rather than at its first request. It tries a connection (closed at
/// once) and fails only on a denial: a server that is down now is the requests' business.
/// Only in WebAssembly, where grants exist, and only for an IP address, since resolving a name
/// could take longer than a start may.
pub fn check_grant(url: &Url) -> Result<(), String> {
    if !cfg!(target_family = "wasm") {
        return Ok(());
    }
    let Ok(ip) = url.connect_host().parse::<IpAddr>() else {
        return Ok(());
    };
    match TcpStream::connect_timeout(&SocketAddr::new(ip, url.port()), GRANT_PROBE_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let addr = format!("{}:{}", url.host(), url.port());
            Err(format!(
                "the sandbox does not let this plugin connect to {addr}; grant it with \
                 wasi.net={addr}"
            ))
        }
        _ => Ok(()),
    }
}

/// How long [`check_grant`] waits for its connection.
const GRANT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// An HTTP/1.1 client for one URL, keeping one connection alive between requests.
#[derive(Debug)]
pub struct Client {
    url: Url,
    headers: Vec<(String, String)>,
    max_response_bytes: usize,
    connection: Option<TcpStream>,
}

impl Client {
    /// A client for `url` that sends `headers` with every request (checked with
    /// [`check_header`]).
    pub fn new(url: Url, headers: Vec<(String, String)>) -> Result<Self, String> {
        for (name, value) in &headers {
            check_header(name, value)?;
        }
        Ok(Self {
            url,
            headers,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            connection: None,
        })
    }

    /// Bounds response bodies to `limit` bytes ([`Error::TooLarge`] beyond).
    pub fn with_max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// GETs the URL; the whole exchange ends within `timeout`.
    pub fn get(&mut self, timeout: Duration) -> Result<Response, Error> {
        self.send("GET", &[], &[], timeout)
    }

    /// POSTs `body` with `Content-Length` and the extra `headers`; the whole exchange ends
    /// within `timeout`.
    pub fn post(
        &mut self,
        headers: &[(String, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, Error> {
        self.send("POST", headers, body, timeout)
    }

    fn send(
        &mut self,
        method: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, Error> {
        for (name, value) in headers {
            check_header(name, value).map_err(Error::InvalidHeader)?;
        }
        let request = self.encode(method, headers, body);
        let mut wait = Wait::new(timeout);
        if let Some(stream) = self.connection.take().filter(is_idle_and_open) {
            match exchange(&stream, &request, &mut wait, self.max_response_bytes) {
                Ok((response, reusable)) => {
                    if reusable {
                        self.connection = Some(stream);
                    }
                    return Ok(response);
                }
                // Nothing came back on the kept connection: the server closed it (idle
                // timeout, restart) as the request went out, so send it on a new one.
                Err((Error::Io(_), false)) => {}
                Err((error, _)) => return Err(error),
            }
        }
        let stream = connect(&self.url, &mut wait)?;
        let (response, reusable) = exchange(&stream, &request, &mut wait, self.max_response_bytes)
            .map_err(|(error, _)| error)?;
        if reusable {
            self.connection = Some(stream);
        }
        Ok(response)
    }

    fn encode(&self, method: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
        let all = || self.headers.iter().chain(headers);
        let given = |name: &str| all().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut head = format!("{method} {} HTTP/1.1\r\n", self.url.target());
        if !given("host") {
            head.push_str(&format!("Host: {}\r\n", self.url.authority()));
        }
        if !given("user-agent") {
            head.push_str("User-Agent: appliance\r\n");
        }
        if method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (name, value) in all() {
            head.push_str(&format!("{name}: {}\r\n", value.trim()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

/// Sends the request and reads the response. On failure, also says whether any byte of the
/// response had arrived.
fn exchange(
    stream: &TcpStream,
    request: &[u8],
    wait: &mut Wait,
    limit: usize,
) -> Result<(Response, bool), (Error, bool)> {
    write_all(stream, request, wait).map_err(|error| (error, false))?;
    let mut reader = ResponseReader::new(stream, limit);
    reader
        .read(wait)
        .map_err(|error| (error, reader.received_any))
}

/// A kept connection is usable when a read finds nothing waiting: end of stream means the
/// server closed it, and bytes nobody asked for mean it is out of step.
fn is_idle_and_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    let mut stream = stream;
    matches!(stream.read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn connect(url: &Url, wait: &mut Wait) -> Result<TcpStream, Error> {
    let host = url.connect_host();
    let addr = format!("{}:{}", url.host(), url.port());
    let resolved: Vec<SocketAddr> = (host, url.port())
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for candidate in resolved {
        match TcpStream::connect_timeout(&candidate, wait.remaining()?) {
            Ok(stream) => {
                stream.set_nonblocking(true).map_err(Error::Io)?;
                // Requests go out in one write, so Nagle's algorithm would only add latency;
                // not every socket layer offers the option, and nothing depends on it.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(source) if source.kind() == io::ErrorKind::TimedOut => {
                return Err(Error::Timeout(wait.timeout));
            }
            Err(source) => last_error = source,
        }
    }
    Err(Error::Connect {
        addr,
        source: last_error,
    })
}

fn write_all(stream: &TcpStream, mut bytes: &[u8], wait: &mut Wait) -> Result<(), Error> {
    let mut stream = stream;
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(written) => {
                bytes = &bytes[written..];
                wait.progressed()?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait.pause()?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Ok(())
}

/// The deadline of one request, and the growing pause between tries of a socket that has
/// nothing to give (or take) right now.
#[derive(Debug)]
pub(crate) struct Wait {
    deadline: Instant,
    timeout: Duration,
    pause: Duration,
}

const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(10);

impl Wait {
    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
            pause: FIRST_PAUSE,
        }
    }

    fn remaining(&self) -> Result<Duration, Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(Error::Timeout(self.timeout))
        } else {
            Ok(left)
        }
    }

    /// Sleeps a little (never past the deadline), or fails once the deadline has passed.
    pub(crate) fn pause(&mut self) -> Result<(), Error> {
        std::thread::sleep(self.pause.min(self.remaining()?));
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        Ok(())
    }

    /// Data moved: the next pause starts short again. Fails once the deadline has passed, so
    /// a server that never stops sending cannot hold the call either.
    pub(crate) fn progressed(&mut self) -> Result<(), Error> {
        self.pause = FIRST_PAUSE;
        self.remaining().map(drop)
    }
}

#[cfg(test)]
mod tests;
