//! The source against a scripted fake broker: a `TcpListener` on a free local port whose
//! thread plays the broker's side of the handshake (through the same codec), then hands the
//! connection to the test, which sends packets and checks what the source sends back.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};

use super::*;

const WAIT: Duration = Duration::from_secs(3);

/// The broker's end of one connection.
struct Peer {
    stream: TcpStream,
    inbox: Vec<u8>,
    /// The version of the client's CONNECT, which the broker answers in.
    version: Version,
}

impl Peer {
    fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = listener.accept().unwrap();
        // Packets the test sends one at a time must not wait for the source's delayed ACK.
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            inbox: Vec::new(),
            version: Version::V5,
        }
    }

    /// Sends the packets in one write, so they arrive together.
    fn send(&mut self, packets: &[Packet]) {
        let bytes: Vec<u8> = packets
            .iter()
            .flat_map(|p| codec::encode(p, self.version).unwrap())
            .collect();
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next packet from the source, if one comes within `within`.
    fn receive(&mut self, within: Duration) -> Option<Packet> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((packet, size)) = codec::decode(&self.inbox, 1 << 20, self.version).unwrap()
            {
                self.inbox.drain(..size);
                if let Packet::Connect(connect) = &packet {
                    self.version = connect.version;
                }
                return Some(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.inbox.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    fn expect(&mut self) -> Packet {
        self.receive(WAIT).expect("a packet from the source")
    }

    fn expect_acks(&mut self, ids: &[u16]) {
        for &packet_id in ids {
            assert_eq!(self.expect(), Packet::puback(packet_id));
        }
    }

    fn silent(&mut self) -> bool {
        self.receive(Duration::from_millis(100)).is_none()
    }
}

/// What the broker thread does on a connection.
struct Script {
    session_present: bool,
    /// Whether the source must subscribe (answered with QoS 1 grants).
    subscribe: bool,
    /// Sent right after CONNACK (or SUBACK), in the same write.
    then: Vec<Packet>,
}

/// What the broker thread saw; the connection and the listener go back to the test.
struct Session {
    peer: Peer,
    connect: Connect,
    filters: Option<Vec<(String, u8)>>,
    listener: TcpListener,
}

fn broker(listener: TcpListener, script: Script) -> JoinHandle<Session> {
    thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let Packet::Connect(connect) = peer.expect() else {
            panic!("CONNECT first");
        };
        let mut reply = vec![Packet::ConnAck {
            session_present: script.session_present,
            code: 0,
            properties: Properties::new(),
        }];
        let mut filters = None;
        if script.subscribe {
            peer.send(&reply);
            reply.clear();
            let Packet::Subscribe {
                packet_id,
                filters: asked,
                ..
            } = peer.expect()
            else {
                panic!("SUBSCRIBE after CONNACK");
            };
            reply.push(Packet::SubAck {
                packet_id,
                codes: vec![1; asked.len()],
                properties: Properties::new(),
            });
            filters = Some(asked);
        }
        reply.extend(script.then);
        peer.send(&reply);
        Session {
            peer,
            connect,
            filters,
            listener,
        }
    })
}

fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    (listener, url)
}

fn message(packet_id: Option<u16>, topic: &str, payload: &str, dup: bool) -> Publish {
    Publish {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        packet_id,
        dup,
        retain: false,
        properties: Properties::new(),
    }
}

fn publish(packet_id: u16, payload: &str) -> Packet {
    Packet::Publish(message(Some(packet_id), "t", payload, false))
}

fn redeliver(packet_id: u16, payload: &str) -> Packet {
    Packet::Publish(message(Some(packet_id), "t", payload, true))
}

fn source(url: &str, extra: &[(&str, &str)], resume_after: Option<Mark>) -> MqttSource {
    let mut pairs = vec![("url", url), ("topics", "t")];
    pairs.extend_from_slice(extra);
    let position = resume_after.map(|mark| Mark::position(Some(mark)));
    MqttSource::init(pairs.into_iter().collect(), position).unwrap()
}

fn mark(packet_id: u16, payload: &str) -> Mark {
    Mark::of(&message(Some(packet_id), "t", payload, false)).unwrap()
}

/// Polls until `want` records came (each poll acknowledging the previous one's).
fn poll_until(source: &mut MqttSource, want: usize) -> Vec<SourceRecord> {
    let deadline = Instant::now() + WAIT;
    let mut records = Vec::new();
    while records.len() < want && Instant::now() < deadline {
        records.extend(source.poll(100_000).unwrap());
        thread::sleep(Duration::from_millis(2));
    }
    records
}

fn payloads(records: &[SourceRecord]) -> Vec<&str> {
    records
        .iter()
        .map(|r| std::str::from_utf8(r.record.value.as_deref().unwrap()).unwrap())
        .collect()
}

#[test]
fn a_first_start_subscribes_and_acknowledges_each_poll_at_the_next() {
    let (listener, url) = bind();
    let retained = Publish {
        retain: true,
        ..message(Some(3), "alerts", "fire", false)
    };
    let broker = broker(
        listener,
        Script {
            session_present: false,
            subscribe: true,
            then: vec![
                Packet::Publish(message(Some(1), "sensors/a", "21.5", false)),
                Packet::Publish(message(Some(2), "sensors/b", "22", false)),
                Packet::Publish(retained.clone()),
            ],
        },
    );
    let mut source = source(
        &url,
        &[
            ("topics", "sensors/#, alerts"),
            ("username", "u"),
            ("password", "p"),
        ],
        None,
    );
    let records = source.poll(10).unwrap();
    let mut session = broker.join().unwrap();

    assert!(!session.connect.clean_session, "a persistent session");
    assert_eq!(session.connect.version, Version::V5);
    assert_eq!(
        session.connect.properties,
        [
            (
                property::SESSION_EXPIRY_INTERVAL,
                Value::FourBytes(u32::MAX)
            ),
            (property::RECEIVE_MAXIMUM, Value::TwoBytes(65_535)),
        ],
        "a session that outlives the connection, and the broker's window as wide as MQTT allows"
    );
    assert_eq!(session.connect.keep_alive_s, 30);
    assert_eq!(session.connect.username.as_deref(), Some("u"));
    assert_eq!(session.connect.password.as_deref(), Some(&b"p"[..]));
    assert!(session.connect.client_id.starts_with("appliance-"));
    assert_eq!(session.connect.client_id.len(), 22);
    assert_eq!(
        session.filters,
        Some(vec![
            ("t".into(), 1),
            ("sensors/#".into(), 1),
            ("alerts".into(), 1)
        ])
    );

    assert_eq!(payloads(&records), ["21.5", "22", "fire"]);
    assert_eq!(records[0].record.key.as_deref(), Some(&b"sensors/a"[..]));
    assert_eq!(records[0].record.header("mqtt.retain"), None);
    assert_eq!(records[2].record.header("mqtt.retain"), Some(&b"true"[..]));
    assert_eq!(
        Mark::from_position(&records[2].position).unwrap(),
        Mark::of(&retained)
    );
    assert!(
        session.peer.silent(),
        "nothing is acknowledged before the next poll"
    );

    assert!(source.poll(10).unwrap().is_empty());
    session.peer.expect_acks(&[1, 2, 3]);
    assert!(session.peer.silent());
}

#[test]
fn a_restart_drops_the_redelivered_messages_the_log_holds() {
    let (listener, url) = bind();
    let broker = broker(
        listener,
        Script {
            session_present: true,
            subscribe: false,
            then: vec![
                redeliver(3, "m3"),
                redeliver(4, "m4"),
                redeliver(5, "m5"),
                redeliver(6, "m6"),
                publish(7, "m7"),
            ],
        },
    );
    let mut source = source(&url, &[], Some(mark(5, "m5")));
    let records = poll_until(&mut source, 2);
    let mut session = broker.join().unwrap();
    assert_eq!(payloads(&records), ["m6", "m7"]);
    assert_eq!(
        session.filters, None,
        "the kept session has the subscription"
    );
    session.peer.expect_acks(&[3, 4, 5]);
    assert!(session.peer.silent());
    source.poll(10).unwrap();
    session.peer.expect_acks(&[6, 7]);
}

#[test]
fn a_restart_keeps_every_redelivered_message_when_none_is_the_logged_one() {
    let (listener, url) = bind();
    let broker = broker(
        listener,
        Script {
            session_present: true,
            subscribe: false,
            // The same packet id as the logged message, another payload: a newer message.
            then: vec![redeliver(2, "m2-newer"), redeliver(8, "m8")],
        },
    );
    let mut source = source(&url, &[], Some(mark(2, "m2")));
    let started = Instant::now();
    let records = poll_until(&mut source, 2);
    assert_eq!(payloads(&records), ["m2-newer", "m8"]);
    assert!(
        started.elapsed() >= RESYNC_QUIET,
        "held until redelivery went quiet"
    );
    let mut session = broker.join().unwrap();
    assert!(session.peer.silent());
    source.poll(10).unwrap();
    session.peer.expect_acks(&[2, 8]);
}

#[test]
fn a_lost_connection_is_replaced_within_the_poll_without_duplicates() {
    let (listener, url) = bind();
    let first = broker(
        listener,
        Script {
            session_present: false,
            subscribe: true,
            then: vec![publish(1, "m1"), publish(2, "m2")],
        },
    );
    let mut source = source(&url, &[], None);
    assert_eq!(payloads(&source.poll(10).unwrap()), ["m1", "m2"]);
    let Session { peer, listener, .. } = first.join().unwrap();
    drop(peer);

    // The broker never saw the PUBACKs: it sends both again, then something new.
    let second = broker(
        listener,
        Script {
            session_present: true,
            subscribe: false,
            then: vec![redeliver(1, "m1"), redeliver(2, "m2"), publish(3, "m3")],
        },
    );
    let records = poll_until(&mut source, 1);
    assert_eq!(payloads(&records), ["m3"]);
    let mut session = second.join().unwrap();
    assert_eq!(session.filters, None);
    session.peer.expect_acks(&[1, 2]);
    assert!(session.peer.silent());
    source.poll(10).unwrap();
    session.peer.expect_acks(&[3]);
}

#[test]
fn qos_0_messages_are_delivered_and_leave_the_position_alone() {
    let (listener, url) = bind();
    let broker = broker(
        listener,
        Script {
            // A session from before, but nothing in the log: subscribe, keep everything.
            session_present: true,
            subscribe: true,
            then: vec![
                redeliver(9, "old"),
                Packet::Publish(message(None, "t", "a", false)),
                publish(4, "b"),
                Packet::Publish(message(None, "t", "c", false)),
            ],
        },
    );
    let mut source = source(&url, &[], None);
    let records = poll_until(&mut source, 4);
    assert_eq!(payloads(&records), ["old", "a", "b", "c"]);
    let positions: Vec<_> = records
        .iter()
        .map(|r| Mark::from_position(&r.position).unwrap())
        .collect();
    assert_eq!(
        positions,
        [
            Some(mark(9, "old")),
            Some(mark(9, "old")),
            Some(mark(4, "b")),
            Some(mark(4, "b"))
        ]
    );
    let mut session = broker.join().unwrap();
    source.poll(10).unwrap();
    session.peer.expect_acks(&[9, 4]);
}

#[test]
fn the_buffer_is_bounded_and_drains_through_polls() {
    let (listener, url) = bind();
    let flood: Vec<Packet> = (0..MAX_BUFFERED + 50)
        .map(|_| Packet::Publish(message(None, "t", "x", false)))
        .collect();
    let broker = broker(
        listener,
        Script {
            session_present: false,
            subscribe: true,
            then: flood,
        },
    );
    let mut source = source(&url, &[], None);
    assert_eq!(source.poll(1).unwrap().len(), 1);
    let _session = broker.join().unwrap();
    assert!(source.pending.len() < MAX_BUFFERED);
    let mut total = 1;
    let deadline = Instant::now() + WAIT;
    while total < MAX_BUFFERED + 50 && Instant::now() < deadline {
        total += source.poll(1000).unwrap().len();
    }
    assert_eq!(total, MAX_BUFFERED + 50);
}

#[test]
fn keep_alive_pings_when_idle_and_gives_up_without_an_answer() {
    let (listener, url) = bind();
    let broker = broker(
        listener,
        Script {
            session_present: false,
            subscribe: true,
            then: Vec::new(),
        },
    );
    let mut source = source(&url, &[("keep.alive.s", "1")], None);
    source.poll(10).unwrap();
    let Session {
        mut peer, listener, ..
    } = broker.join().unwrap();
    drop(listener);
    thread::sleep(Duration::from_millis(550));
    source.poll(10).unwrap();
    assert_eq!(peer.expect(), Packet::PingReq);
    peer.send(&[Packet::PingResp]);
    thread::sleep(Duration::from_millis(20));
    source.poll(10).unwrap();
    thread::sleep(Duration::from_millis(550));
    source.poll(10).unwrap();
    assert_eq!(peer.expect(), Packet::PingReq);
    thread::sleep(Duration::from_millis(1050));
    let error = source.poll(10).unwrap_err();
    assert!(error.contains("no PINGRESP"), "{error}");
    assert!(error.contains("could not reconnect"), "{error}");
}

#[test]
fn hostile_bytes_fail_the_poll_with_the_reason() {
    for (extra, bytes, expected) in [
        (
            None,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            "more than 4 bytes",
        ),
        (
            Some(("max.packet.bytes", "64")),
            {
                codec::encode(
                    &Packet::Publish(message(Some(1), "t", &"x".repeat(100), false)),
                    Version::V5,
                )
                .unwrap()
            },
            "raise max.packet.bytes",
        ),
        (
            None,
            codec::encode(&Packet::puback(1), Version::V5).unwrap(),
            "unexpected PUBACK",
        ),
        (
            None,
            codec::encode(
                &Packet::Disconnect {
                    reason: 0x8e,
                    properties: vec![(property::REASON_STRING, Value::Text("taken over".into()))],
                },
                Version::V5,
            )
            .unwrap(),
            "the broker ended the connection (reason code 0x8e): \"taken over\"",
        ),
    ] {
        let (listener, url) = bind();
        let broker = broker(
            listener,
            Script {
                session_present: false,
                subscribe: true,
                then: Vec::new(),
            },
        );
        let mut source = source(&url, extra.as_slice(), None);
        source.poll(10).unwrap();
        let mut session = broker.join().unwrap();
        drop(session.listener);
        session.peer.stream.write_all(&bytes).unwrap();
        thread::sleep(Duration::from_millis(20));
        let error = source.poll(10).expect_err(expected);
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn an_unreachable_or_refusing_broker_fails_the_poll() {
    let (listener, url) = bind();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = source(&url, &[], None).poll(10).unwrap_err();
    assert!(error.contains(&format!("wasi.net={addr}")), "{error}");

    let (listener, url) = bind();
    let broker = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        peer.expect();
        peer.send(&[Packet::ConnAck {
            session_present: false,
            code: 0x87,
            properties: vec![(property::REASON_STRING, Value::Text("no ACL".into()))],
        }]);
        peer
    });
    let error = source(&url, &[], None).poll(10).unwrap_err();
    assert!(error.contains("not authorized: \"no ACL\""), "{error}");
    broker.join().unwrap();
}

#[test]
fn a_broker_without_mqtt_5_is_spoken_to_in_3_1_1() {
    let (listener, url) = bind();
    let broker = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        let Packet::Connect(connect) = peer.expect() else {
            panic!("CONNECT first");
        };
        assert_eq!(connect.version, Version::V5);
        // What a 3.1.1 broker answers: "unacceptable protocol level", then it hangs up.
        peer.stream.write_all(&[0x20, 2, 0, 1]).unwrap();
        drop(peer);
        let script = Script {
            session_present: false,
            subscribe: true,
            then: vec![publish(1, "m1")],
        };
        self::broker(listener, script).join().unwrap()
    });
    let mut source = source(&url, &[], None);
    let records = poll_until(&mut source, 1);
    let mut session = broker.join().unwrap();
    assert_eq!(session.connect.version, Version::V311);
    assert!(session.connect.properties.is_empty());
    assert_eq!(payloads(&records), ["m1"]);
    source.poll(10).unwrap();
    session.peer.expect_acks(&[1]);

    let (listener, url) = bind();
    let only_5 = thread::spawn(move || {
        let mut peer = Peer::accept(&listener);
        peer.expect();
        peer.stream.write_all(&[0x20, 3, 0, 0x84, 0]).unwrap();
        peer
    });
    let error = self::source(&url, &[("protocol", "5")], None)
        .poll(10)
        .unwrap_err();
    assert!(error.contains("set `protocol`"), "{error}");
    only_5.join().unwrap();
}

#[test]
fn positions_round_trip() {
    let some = mark(513, "payload");
    let position = Mark::position(Some(some));
    assert_eq!(position.len(), POSITION_LEN);
    assert_eq!(&position[..3], &[POSITION_VERSION, 2, 1]);
    assert_eq!(Mark::from_position(&position).unwrap(), Some(some));
    assert_eq!(Mark::from_position(&Mark::position(None)).unwrap(), None);
    assert!(Mark::from_position(&position[1..]).is_err());
    assert!(Mark::from_position(&[9; POSITION_LEN]).is_err());
    assert_ne!(
        mark(1, "ab").digest,
        Mark::of(&message(Some(1), "ta", "b", false))
            .unwrap()
            .digest,
        "the topic is length-prefixed"
    );
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let init = |pairs: &[(&str, &str)]| {
        MqttSource::init(pairs.iter().copied().collect(), None).map(|s| s.settings)
    };
    let error = |pairs: &[(&str, &str)]| init(pairs).unwrap_err();
    assert!(error(&[("topics", "t")]).contains("`url`"));
    assert!(error(&[("url", "mqtt://h")]).contains("`topics`"));
    assert!(error(&[("url", "mqtts://h"), ("topics", "t")]).contains("no TLS"));
    assert!(error(&[("url", "http://h"), ("topics", "t")]).contains("scheme"));
    assert!(error(&[("url", "mqtt://h:0"), ("topics", "t")]).contains("port"));
    assert!(error(&[("url", "mqtt://u:p@h"), ("topics", "t")]).contains("username"));
    assert!(error(&[("url", "mqtt://h"), ("topics", "a/#/b")]).contains("topic filter"));
    assert!(error(&[("url", "mqtt://h"), ("topics", "a+")]).contains("topic filter"));
    assert!(error(&[("url", "mqtt://h"), ("topics", "t"), ("password", "p")]).contains("username"));
    assert!(error(&[("url", "mqtt://h"), ("topics", "t"), ("qos", "2")]).contains("`qos`"));
    assert!(error(&[("url", "mqtt://h"), ("topics", "t"), ("colour", "x")]).contains("colour"));
    assert!(error(&[("url", "mqtt://h"), ("topics", "t"), ("protocol", "4")]).contains("3.1.1"));
    assert!(
        error(&[
            ("url", "mqtt://h"),
            ("topics", "t"),
            ("max.packet.bytes", "1")
        ])
        .contains("max.packet.bytes")
    );

    let settings = init(&[
        ("url", "mqtt://[::1]/"),
        ("topics", "a, b/+"),
        ("topics", "c/#"),
    ])
    .unwrap();
    assert_eq!((settings.host.as_str(), settings.port), ("[::1]", 1883));
    assert_eq!(settings.topics, ["a", "b/+", "c/#"]);
    let client_id = |topics: &str| {
        init(&[("url", "mqtt://h:1"), ("topics", topics)])
            .unwrap()
            .client_id
    };
    assert_eq!(client_id("a,b"), client_id("a,b"), "stable");
    assert_ne!(
        client_id("a,b"),
        client_id("a"),
        "a session per subscription set"
    );
    let named = init(&[
        ("url", "mqtt://h"),
        ("topics", "t"),
        ("client.id", "line-7"),
        ("qos", "1"),
    ]);
    assert_eq!(named.unwrap().client_id, "line-7");
}
