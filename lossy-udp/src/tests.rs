use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};

use super::*;

/// How long a test waits for a packet or a counter before failing.
const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn socket() -> UdpSocket {
    UdpSocket::bind(loopback()).await.unwrap()
}

/// A server socket, a proxy in front of it, and a client socket.
async fn setup(impairment: Impairment) -> (UdpSocket, Proxy, UdpSocket) {
    let server = socket().await;
    let proxy = Proxy::start(loopback(), server.local_addr().unwrap(), impairment)
        .await
        .unwrap();
    let client = socket().await;
    client.connect(proxy.local_addr()).await.unwrap();
    (server, proxy, client)
}

async fn recv_from(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (len, from) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("no packet arrived")
        .unwrap();
    buf.truncate(len);
    (buf, from)
}

/// Waits until `done` holds, polling.
async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn total(stats: DirectionStats) -> u64 {
    stats.forwarded_packets + stats.dropped_packets
}

#[tokio::test]
async fn forwards_both_ways() {
    let (server, proxy, client) = setup(Impairment::default()).await;

    client.send(b"ping").await.unwrap();
    let (packet, proxy_upstream) = recv_from(&server).await;
    assert_eq!(packet, b"ping");
    assert_ne!(proxy_upstream, client.local_addr().unwrap());

    server.send_to(b"pong!", proxy_upstream).await.unwrap();
    let (packet, from) = recv_from(&client).await;
    assert_eq!(packet, b"pong!");
    assert_eq!(from, proxy.local_addr());

    wait_until(|| proxy.stats().to_client.forwarded_packets == 1).await;
    let stats = proxy.stats();
    assert_eq!(
        stats.to_upstream,
        DirectionStats {
            forwarded_packets: 1,
            forwarded_bytes: 4,
            dropped_packets: 0,
            dropped_bytes: 0,
        }
    );
    assert_eq!(stats.to_client.forwarded_bytes, 5);
    assert_eq!(stats.to_client.dropped_packets, 0);
}

/// Sends `count` packets through the proxy at a pace its socket keeps up with (the kernel
/// drops nothing), and returns how many it dropped.
async fn dropped_of(seed: u64, loss: f64, count: u64) -> u64 {
    let (_server, proxy, client) = setup(Impairment {
        loss,
        seed,
        ..Impairment::default()
    })
    .await;
    for i in 0..count {
        client.send(&i.to_be_bytes()).await.unwrap();
        if i % 32 == 31 {
            wait_until(|| total(proxy.stats().to_upstream) == i + 1).await;
        }
    }
    wait_until(|| total(proxy.stats().to_upstream) == count).await;
    proxy.stats().to_upstream.dropped_packets
}

#[tokio::test]
async fn loss_drops_about_the_given_share_repeatably() {
    let count = 10_000;
    let dropped = dropped_of(7, 0.25, count).await;
    let share = dropped as f64 / count as f64;
    // The standard deviation is about 0.0043: this bound is over ten of them.
    assert!((0.2..=0.3).contains(&share), "dropped {share}");
    assert_eq!(dropped_of(7, 0.25, count).await, dropped, "same seed");

    assert_eq!(dropped_of(7, 0.0, 1000).await, 0);
    assert_eq!(dropped_of(7, 1.0, 1000).await, 1000);
}

#[tokio::test]
async fn loss_applies_to_each_direction() {
    let (server, proxy, client) = setup(Impairment::default()).await;
    client.send(b"hello").await.unwrap();
    let (_, proxy_upstream) = recv_from(&server).await;

    proxy.set_loss(1.0);
    client.send(b"lost").await.unwrap();
    server.send_to(b"lost", proxy_upstream).await.unwrap();
    wait_until(|| {
        let stats = proxy.stats();
        stats.to_upstream.dropped_packets == 1 && stats.to_client.dropped_packets == 1
    })
    .await;

    proxy.set_loss(0.0);
    server.send_to(b"back", proxy_upstream).await.unwrap();
    assert_eq!(recv_from(&client).await.0, b"back");
}

#[tokio::test]
async fn delay_adds_at_least_the_delay_and_keeps_order() {
    let delay = Duration::from_millis(50);
    let (server, proxy, client) = setup(Impairment {
        delay,
        ..Impairment::default()
    })
    .await;

    let sent = Instant::now();
    client.send(b"ping").await.unwrap();
    let (_, proxy_upstream) = recv_from(&server).await;
    assert!(sent.elapsed() >= delay, "one way took {:?}", sent.elapsed());
    server.send_to(b"pong", proxy_upstream).await.unwrap();
    recv_from(&client).await;
    assert!(
        sent.elapsed() >= 2 * delay,
        "round trip took {:?}",
        sent.elapsed()
    );

    for i in 0u32..100 {
        client.send(&i.to_be_bytes()).await.unwrap();
    }
    // Shrinking the delay does not let new packets overtake the queued ones.
    proxy.set_delay(Duration::ZERO);
    for i in 100u32..110 {
        client.send(&i.to_be_bytes()).await.unwrap();
    }
    for i in 0u32..110 {
        assert_eq!(recv_from(&server).await.0, i.to_be_bytes());
    }
}

#[tokio::test]
async fn blackhole_drops_everything_then_resumes() {
    let (server, proxy, client) = setup(Impairment::default()).await;
    client.send(b"hello").await.unwrap();
    let (_, proxy_upstream) = recv_from(&server).await;

    proxy.set_blackhole(true);
    for _ in 0..10 {
        client.send(b"cut").await.unwrap();
        server.send_to(b"cut", proxy_upstream).await.unwrap();
    }
    wait_until(|| {
        let stats = proxy.stats();
        stats.to_upstream.dropped_packets == 10 && stats.to_client.dropped_packets == 10
    })
    .await;
    let stats = proxy.stats();
    assert_eq!(stats.to_upstream.forwarded_packets, 1);
    assert_eq!(stats.to_client.forwarded_packets, 0);
    assert_eq!(stats.to_upstream.dropped_bytes, 30);

    proxy.set_blackhole(false);
    client.send(b"up").await.unwrap();
    assert_eq!(recv_from(&server).await.0, b"up");
    server.send_to(b"down", proxy_upstream).await.unwrap();
    assert_eq!(recv_from(&client).await.0, b"down");
}

#[tokio::test]
async fn blackhole_drops_delayed_packets_in_flight() {
    let (server, proxy, client) = setup(Impairment {
        delay: Duration::from_secs(1),
        ..Impairment::default()
    })
    .await;
    client.send(b"in flight").await.unwrap();
    // Long enough for the proxy to queue it (if not, the cut drops it on arrival: the test
    // still passes), far shorter than the delay.
    tokio::time::sleep(Duration::from_millis(20)).await;
    proxy.set_blackhole(true);
    wait_until(|| proxy.stats().to_upstream.dropped_packets == 1).await;
    proxy.set_blackhole(false);
    client.send(b"after").await.unwrap();
    assert_eq!(recv_from(&server).await.0, b"after");
}

#[tokio::test]
async fn rebind_shows_the_server_a_new_address() {
    let (server, proxy, client) = setup(Impairment::default()).await;
    client.send(b"before").await.unwrap();
    let (_, old) = recv_from(&server).await;

    proxy.rebind().await.unwrap();
    client.send(b"after").await.unwrap();
    let (packet, new) = recv_from(&server).await;
    assert_eq!(packet, b"after");
    assert_ne!(new, old);

    server.send_to(b"reply", new).await.unwrap();
    let (packet, from) = recv_from(&client).await;
    assert_eq!(packet, b"reply");
    assert_eq!(from, proxy.local_addr());
}

#[tokio::test]
async fn unsendable_packets_are_dropped_and_the_proxy_carries_on() {
    let server = socket().await;
    let upstream = server.local_addr().unwrap();
    drop(server);
    let proxy = Proxy::start(loopback(), upstream, Impairment::default())
        .await
        .unwrap();
    let client = socket().await;
    client.connect(proxy.local_addr()).await.unwrap();
    for _ in 0..5 {
        client.send(b"nobody there").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until(|| total(proxy.stats().to_upstream) == 5).await;

    // A server on that port again: the proxy still forwards.
    let Ok(server) = UdpSocket::bind(upstream).await else {
        return; // The port was taken meanwhile.
    };
    client.send(b"hello").await.unwrap();
    assert_eq!(recv_from(&server).await.0, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_smoke() {
    const PACKET: usize = 1200;
    const COUNT: u64 = 50_000;
    // In flight at most, across both directions: the sockets' buffers never overflow.
    const WINDOW: usize = 32;

    let (server, proxy, client) = setup(Impairment::default()).await;
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            server.send_to(&buf[..len], from).await.unwrap();
        }
    });
    let client = Arc::new(client);
    let window = Arc::new(Semaphore::new(WINDOW));
    let reader = tokio::spawn({
        let client = client.clone();
        let window = window.clone();
        async move {
            let mut buf = vec![0u8; 65536];
            for _ in 0..COUNT {
                let len = client.recv(&mut buf).await.unwrap();
                assert_eq!(len, PACKET);
                window.add_permits(1);
            }
        }
    });

    let started = Instant::now();
    let packet = vec![0x5a; PACKET];
    for _ in 0..COUNT {
        timeout(WAIT, window.acquire())
            .await
            .expect("echoes stopped")
            .unwrap()
            .forget();
        client.send(&packet).await.unwrap();
    }
    timeout(WAIT, reader).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    echo.abort();

    let stats = proxy.stats();
    assert_eq!(stats.to_upstream.forwarded_packets, COUNT);
    assert_eq!(stats.to_client.forwarded_packets, COUNT);
    assert_eq!(stats.to_client.forwarded_bytes, COUNT * PACKET as u64);
    let megabytes = (2 * COUNT * PACKET as u64) as f64 / 1e6;
    eprintln!(
        "{megabytes:.0} MB through the proxy in {elapsed:?}: {:.0} MB/s",
        megabytes / elapsed.as_secs_f64()
    );
}
