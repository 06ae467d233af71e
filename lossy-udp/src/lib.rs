//! A userspace UDP proxy that impairs traffic, for tests and benchmarks of a UDP (QUIC) link
//! where the kernel offers no `netem`.
//!
//! The client dials [`Proxy::local_addr`] instead of the server; the proxy forwards to the
//! `upstream` address it was started with:
//!
//! ```text
//! client ──▶ listen socket ──[cut? lose? delay]──▶ upstream-facing socket ──▶ server
//! client ◀── listen socket ◀──[cut? lose? delay]── upstream-facing socket ◀── server
//! ```
//!
//! One client per proxy: its address is learned from the packets it sends (the latest one
//! wins), and the server's packets go back to it. The upstream-facing socket is connected to
//! the server, so the server sees one peer address, until [`Proxy::rebind`] swaps in a fresh
//! socket (as NAT rebinding or a client's address change does; the old socket is closed, so
//! packets the server still sends there are lost).
//!
//! Each direction is impaired independently, in this order: while the link is cut
//! ([`Proxy::set_blackhole`]) every packet is dropped; otherwise a packet is dropped with
//! probability `loss` (from a seeded PRNG per direction, so runs are repeatable); a packet that
//! survives is sent at once when there is no delay, or queued and sent `delay` later. The queue
//! keeps the order of packets within a direction, and a packet still queued when the link is
//! cut is dropped. With no impairment a packet costs one receive and one send, without
//! allocation or sleeping, so the proxy does not limit a loopback link's throughput.
//!
//! A packet the proxy cannot send (the server's port is closed, no client is known yet, the
//! delay queue is full) is counted as dropped; the proxy's tasks never stop on such errors.
//! They stop when the [`Proxy`] is dropped.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Receive buffer size: the largest UDP payload fits.
const BUF_SIZE: usize = 64 * 1024;

/// Packets a direction's delay queue holds at most; more are dropped, as a router's full
/// queue drops them.
const QUEUE_PACKETS: usize = 64 * 1024;

/// How traffic through a [`Proxy`] is impaired; [`Default`] is no impairment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability that a packet is dropped, `0.0..=1.0`, drawn for each packet in each
    /// direction independently.
    pub loss: f64,
    /// One-way delay added in each direction: the round-trip time grows by twice this.
    pub delay: Duration,
    /// Seed of the loss PRNG: the same seed drops the same packets of the same sequence.
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            loss: 0.0,
            delay: Duration::ZERO,
            seed: 0,
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets sent on.
    pub forwarded_packets: u64,
    /// Payload bytes of the packets sent on.
    pub forwarded_bytes: u64,
    /// Packets dropped: by the cut, by loss, or because they could not be sent.
    pub dropped_packets: u64,
    /// Payload bytes of the dropped packets.
    pub dropped_bytes: u64,
}

/// Counters of a [`Proxy`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client to server.
    pub to_upstream: DirectionStats,
    /// Server to client.
    pub to_client: DirectionStats,
}

/// A running proxy; dropping it stops its tasks.
#[derive(Debug)]
pub struct Proxy {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// The current upstream-facing socket, replaced by [`Proxy::rebind`].
    upstream_socket: watch::Sender<Arc<UdpSocket>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) for the client, forwards to `upstream`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Impairment,
    ) -> io::Result<Proxy> {
        let down = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = down.local_addr()?;
        let up = Arc::new(upstream_socket(upstream).await?);

        let shared = Arc::new(Shared::default());
        shared.set_loss(impairment.loss);
        shared.set_delay(impairment.delay);
        let (upstream_tx, upstream_rx) = watch::channel(up);
        let (client_tx, client_rx) = watch::channel(None);

        let mut tasks = Vec::with_capacity(4);
        let to_upstream = Target::Upstream {
            socket: upstream_rx.borrow().clone(),
            current: upstream_rx.clone(),
        };
        let to_client = Target::Client {
            socket: down.clone(),
            client: None,
            current: client_rx,
        };
        let (to_upstream, drain) =
            Path::new(Direction::ToUpstream, &shared, impairment.seed, to_upstream);
        tasks.push(tokio::spawn(drain.run()));
        tasks.push(tokio::spawn(read_client(down, client_tx, to_upstream)));
        let (to_client, drain) =
            Path::new(Direction::ToClient, &shared, impairment.seed, to_client);
        tasks.push(tokio::spawn(drain.run()));
        tasks.push(tokio::spawn(read_upstream(upstream_rx, to_client)));

        Ok(Proxy {
            local_addr,
            upstream,
            shared,
            upstream_socket: upstream_tx,
            tasks,
        })
    }

    /// The address the client dials.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets the probability that a packet is dropped (clamped to `0.0..=1.0`) for the packets
    /// that arrive from now on.
    pub fn set_loss(&self, loss: f64) {
        self.shared.set_loss(loss);
    }

    /// Sets the one-way delay for the packets that arrive from now on. Packets keep their
    /// order: after the delay shrinks, new packets wait for the queued ones.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.set_delay(delay);
    }

    /// Cut: drop every packet both ways while true (a dead uplink), queued ones included.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    /// Forward from a fresh upstream-facing socket from now on: the server sees the client at
    /// a new address (NAT rebinding / address change). The old socket is closed.
    pub async fn rebind(&self) -> io::Result<()> {
        let socket = upstream_socket(self.upstream).await?;
        self.upstream_socket.send_replace(Arc::new(socket));
        Ok(())
    }

    /// Packets and bytes forwarded and dropped so far, per direction.
    pub fn stats(&self) -> Stats {
        Stats {
            to_upstream: self.shared.counters[Direction::ToUpstream as usize].get(),
            to_client: self.shared.counters[Direction::ToClient as usize].get(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A socket on an ephemeral port, connected to `upstream`: it receives from the server only.
async fn upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let any = match upstream.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Settings and counters the proxy's handle and tasks share.
#[derive(Debug, Default)]
struct Shared {
    /// `f64` bits of the loss probability.
    loss: AtomicU64,
    /// Delay in nanoseconds.
    delay: AtomicU64,
    blackhole: AtomicBool,
    counters: [Counters; 2],
}

impl Shared {
    fn set_loss(&self, loss: f64) {
        // NaN counts as no loss.
        let loss = if loss.is_nan() {
            0.0
        } else {
            loss.clamp(0.0, 1.0)
        };
        self.loss.store(loss.to_bits(), Ordering::Relaxed);
    }

    fn loss(&self) -> f64 {
        f64::from_bits(self.loss.load(Ordering::Relaxed))
    }

    fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.delay.store(nanos, Ordering::Relaxed);
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay.load(Ordering::Relaxed))
    }

    fn blackhole(&self) -> bool {
        self.blackhole.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToUpstream = 0,
    ToClient = 1,
}

#[derive(Debug, Default)]
struct Counters {
    forwarded_packets: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_packets: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl Counters {
    fn forwarded(&self, len: usize) {
        self.forwarded_packets.fetch_add(1, Ordering::Relaxed);
        self.forwarded_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    fn dropped(&self, len: usize) {
        self.dropped_packets.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn get(&self) -> DirectionStats {
        DirectionStats {
            forwarded_packets: self.forwarded_packets.load(Ordering::Relaxed),
            forwarded_bytes: self.forwarded_bytes.load(Ordering::Relaxed),
            dropped_packets: self.dropped_packets.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
        }
    }
}

/// SplitMix64: small, fast, and good enough to decide which packets to drop.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0.0..1.0`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where a direction sends its packets, following rebinds and the client's latest address.
#[derive(Debug, Clone)]
enum Target {
    Upstream {
        socket: Arc<UdpSocket>,
        current: watch::Receiver<Arc<UdpSocket>>,
    },
    Client {
        socket: Arc<UdpSocket>,
        client: Option<SocketAddr>,
        current: watch::Receiver<Option<SocketAddr>>,
    },
}

impl Target {
    async fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        match self {
            Target::Upstream { socket, current } => {
                if current.has_changed().unwrap_or(false) {
                    *socket = current.borrow_and_update().clone();
                }
                socket.send(packet).await?;
            }
            Target::Client {
                socket,
                client,
                current,
            } => {
                if current.has_changed().unwrap_or(false) {
                    *client = *current.borrow_and_update();
                }
                let Some(client) = client else {
                    return Err(io::ErrorKind::NotConnected.into());
                };
                socket.send_to(packet, *client).await?;
            }
        }
        Ok(())
    }
}

/// A packet in the delay queue and when it is due.
type Delayed = (Instant, Vec<u8>);

/// The impairment of one direction, applied by its reading task.
#[derive(Debug)]
struct Path {
    counters: usize,
    shared: Arc<Shared>,
    rng: Rng,
    target: Target,
    queue: mpsc::Sender<Delayed>,
    /// Packets queued and not yet sent (or dropped) by the drain.
    queued: Arc<AtomicUsize>,
}

impl Path {
    fn new(direction: Direction, shared: &Arc<Shared>, seed: u64, target: Target) -> (Path, Drain) {
        let (queue, rx) = mpsc::channel(QUEUE_PACKETS);
        let queued = Arc::new(AtomicUsize::new(0));
        // Different streams per direction from the same seed.
        let stream = match direction {
            Direction::ToUpstream => 0x5555_5555_5555_5555,
            Direction::ToClient => 0xAAAA_AAAA_AAAA_AAAA,
        };
        let mut rng = Rng(seed ^ stream);
        rng.next_u64();
        let drain = Drain {
            counters: direction as usize,
            shared: shared.clone(),
            target: target.clone(),
            queue: rx,
            queued: queued.clone(),
        };
        let path = Path {
            counters: direction as usize,
            shared: shared.clone(),
            rng,
            target,
            queue,
            queued,
        };
        (path, drain)
    }

    /// Drops, delays or sends one packet that arrived.
    async fn handle(&mut self, packet: &[u8]) {
        let counters = &self.shared.counters[self.counters];
        if self.shared.blackhole() {
            counters.dropped(packet.len());
            return;
        }
        let loss = self.shared.loss();
        if loss > 0.0 && self.rng.next_f64() < loss {
            counters.dropped(packet.len());
            return;
        }
        let delay = self.shared.delay();
        // Acquire: once the drain has sent every queued packet, sending directly keeps order.
        if delay.is_zero() && self.queued.load(Ordering::Acquire) == 0 {
            match self.target.send(packet).await {
                Ok(()) => counters.forwarded(packet.len()),
                Err(_) => counters.dropped(packet.len()),
            }
            return;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self
            .queue
            .try_send((Instant::now() + delay, packet.to_vec()))
            .is_err()
        {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            counters.dropped(packet.len());
        }
    }
}

/// Sends a direction's delayed packets when they are due, in order.
#[derive(Debug)]
struct Drain {
    counters: usize,
    shared: Arc<Shared>,
    target: Target,
    queue: mpsc::Receiver<Delayed>,
    queued: Arc<AtomicUsize>,
}

impl Drain {
    async fn run(mut self) {
        let counters = &self.shared.counters[self.counters];
        while let Some((due, packet)) = self.queue.recv().await {
            tokio::time::sleep_until(due).await;
            if self.shared.blackhole() {
                counters.dropped(packet.len());
            } else {
                match self.target.send(&packet).await {
                    Ok(()) => counters.forwarded(packet.len()),
                    Err(_) => counters.dropped(packet.len()),
                }
            }
            // Release: the send is done before the reader may bypass the queue.
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Receives the client's packets, learns its address, and forwards them upstream.
async fn read_client(
    socket: Arc<UdpSocket>,
    client: watch::Sender<Option<SocketAddr>>,
    mut path: Path,
) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                client.send_if_modified(|client| {
                    let changed = *client != Some(from);
                    *client = Some(from);
                    changed
                });
                path.handle(&buf[..len]).await;
            }
            Err(error) => recv_failed(&error).await,
        }
    }
}

/// Receives the server's packets on the current upstream-facing socket and forwards them to
/// the client.
async fn read_upstream(mut current: watch::Receiver<Arc<UdpSocket>>, mut path: Path) {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut socket = current.borrow_and_update().clone();
    loop {
        tokio::select! {
            biased;
            changed = current.changed() => {
                if changed.is_err() {
                    // The proxy is gone.
                    return;
                }
                socket = current.borrow_and_update().clone();
            }
            received = socket.recv(&mut buf) => match received {
                Ok(len) => path.handle(&buf[..len]).await,
                Err(error) => recv_failed(&error).await,
            },
        }
    }
}

/// A receive failed: an ICMP error reported for an earlier send (the server's port is
/// closed) is expected; on anything else, pause briefly rather than spin.
async fn recv_failed(error: &io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => {}
        _ => tokio::time::sleep(Duration::from_millis(1)).await,
    }
}

#[cfg(test)]
mod tests;
