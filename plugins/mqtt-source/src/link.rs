//! One TCP connection to the broker, used without blocking: the host gives every call a
//! deadline, so reads take what has arrived (a non-blocking socket, read until it would
//! block) and writes and waits sleep 1 ms between tries up to a deadline of their own. The
//! same code runs natively in the tests and on WASI sockets in the sandbox.
//!
//! Bytes are read into an inbox and decoded from a cursor, so a burst of small packets is
//! decoded in one pass; the codec refuses a packet over `max.packet.bytes` on its header, so
//! the inbox never holds more than one such packet and one read.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::codec::{self, Packet, Version};

/// How long a write may wait for the socket to take its bytes.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// How much one read takes off the socket.
const READ_CHUNK: usize = 64 * 1024;
/// The pause between tries of a socket that has nothing to give or take right now.
const PAUSE: Duration = Duration::from_millis(1);
/// How long [`Link::check_grant`] waits for its connection.
const GRANT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct Link {
    stream: TcpStream,
    inbox: Vec<u8>,
    /// Where the undecoded bytes of the inbox start.
    start: usize,
    /// The broker closed its end: what is in the inbox is all there is.
    closed: bool,
    max_packet: usize,
    /// The protocol the connection speaks.
    version: Version,
    /// The keep-alive in force: the client's, or the one the broker's CONNACK imposed.
    pub(crate) keep_alive_s: u16,
    last_sent: Instant,
    /// When the PINGREQ that has not been answered yet went out.
    pub(crate) ping_sent: Option<Instant>,
}

impl Link {
    /// Connects to `host` (as written in the URL: IPv6 in brackets) before `deadline`, to
    /// speak `version`.
    pub(crate) fn open(
        host: &str,
        port: u16,
        max_packet: usize,
        version: Version,
        keep_alive_s: u16,
        deadline: Instant,
    ) -> Result<Self, String> {
        let addrs: Vec<SocketAddr> = (bare_host(host), port)
            .to_socket_addrs()
            .map_err(|e| {
                format!(
                    "cannot resolve {host}: {e} (the sandbox may not offer DNS; an IP address \
                     in the url avoids it)"
                )
            })?
            .collect();
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    stream
                        .set_nonblocking(true)
                        .map_err(|e| format!("cannot make the socket non-blocking: {e}"))?;
                    // Acknowledgements are small and should leave at once; not every socket
                    // layer offers the option, and nothing depends on it.
                    let _ = stream.set_nodelay(true);
                    return Ok(Self {
                        stream,
                        inbox: Vec::new(),
                        start: 0,
                        closed: false,
                        max_packet,
                        version,
                        keep_alive_s,
                        last_sent: Instant::now(),
                        ping_sent: None,
                    });
                }
                Err(e) => last_error = e,
            }
        }
        Err(format!(
            "cannot connect to {host}:{port}: {last_error} (outbound connections need a \
             wasi.net={host}:{port} grant)"
        ))
    }

    /// Fails when the sandbox forbids connections to the broker, so that a missing
    /// `wasi.net` grant shows when the task starts (the appliance validates a connector by
    /// starting its tasks) rather than at its first poll. It tries a TCP connection (closed at
    /// once, before any MQTT packet) and fails only on a denial: a broker that is down now is
    /// the polls' business. Only in WebAssembly, where grants exist, and only for an IP
    /// address, since resolving a name could take longer than a start may.
    pub(crate) fn check_grant(host: &str, port: u16) -> Result<(), String> {
        if !cfg!(target_family = "wasm") {
            return Ok(());
        }
        let Ok(ip) = bare_host(host).parse::<IpAddr>() else {
            return Ok(());
        };
        match TcpStream::connect_timeout(&SocketAddr::new(ip, port), GRANT_PROBE_TIMEOUT) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
                "the sandbox does not let this plugin connect to {host}:{port}; grant it with \
                 wasi.net={host}:{port}"
            )),
            _ => Ok(()),
        }
    }

    /// Sends the packets in one write.
    pub(crate) fn send(&mut self, packets: &[Packet]) -> Result<(), String> {
        let mut bytes = Vec::new();
        for packet in packets {
            let encoded = codec::encode(packet, self.version)
                .map_err(|e| format!("cannot encode {}: {e}", packet.name()))?;
            bytes.extend_from_slice(&encoded);
        }
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err("the connection takes no more bytes".to_owned()),
                Ok(written) => rest = &rest[written..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "the broker took no bytes for {} ms",
                            WRITE_TIMEOUT.as_millis()
                        ));
                    }
                    std::thread::sleep(PAUSE);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("sending failed: {e}")),
            }
        }
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next packet if one has arrived whole, reading what the socket has; `None` when
    /// nothing complete is there now.
    pub(crate) fn next(&mut self) -> Result<Option<Packet>, String> {
        loop {
            if let Some((packet, size)) =
                codec::decode(&self.inbox[self.start..], self.max_packet, self.version).map_err(
                    |e| {
                        let hint = match e {
                            codec::CodecError::TooLarge { .. } => " (raise max.packet.bytes)",
                            codec::CodecError::Malformed(_) => "",
                        };
                        format!("{e}{hint}")
                    },
                )?
            {
                self.start += size;
                return Ok(Some(packet));
            }
            if self.closed {
                return Err("the broker closed the connection".to_owned());
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Waits for the next packet until `deadline`; `None` once it has passed, even while
    /// packets keep coming (a caller waiting for one kind must not wait forever).
    pub(crate) fn wait(&mut self, deadline: Instant) -> Result<Option<Packet>, String> {
        while Instant::now() < deadline {
            if let Some(packet) = self.next()? {
                return Ok(Some(packet));
            }
            std::thread::sleep(PAUSE);
        }
        Ok(None)
    }

    /// How long since anything was sent (the broker's keep-alive timer counts that).
    pub(crate) fn idle_for(&self) -> Duration {
        self.last_sent.elapsed()
    }

    /// One read off the socket: whether anything changed (bytes or the end of the stream).
    fn fill(&mut self) -> Result<bool, String> {
        // Decoded bytes go before reading more, so the inbox holds only what is undecoded.
        self.inbox.drain(..self.start);
        self.start = 0;
        let filled = self.inbox.len();
        self.inbox.resize(filled + READ_CHUNK, 0);
        let outcome = loop {
            match self.stream.read(&mut self.inbox[filled..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let (read, changed) = match outcome {
            Ok(0) => {
                self.closed = true;
                (0, true)
            }
            Ok(read) => (read, true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
            Err(e) => {
                self.inbox.truncate(filled);
                return Err(format!("receiving failed: {e}"));
            }
        };
        self.inbox.truncate(filled + read);
        Ok(changed)
    }
}

/// The host to resolve: without the brackets of an IPv6 address.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}
