//! `mqtt-source`: subscribes to MQTT 5 (or 3.1.1) topics at QoS 1 and delivers every message exactly
//! once into the log, across crashes and reconnects.
//!
//! Config:
//! - `url` (required): `mqtt://HOST[:PORT]` (port 1883 by default; no TLS). The appliance
//!   needs a `wasi.net=HOST:PORT` grant for it.
//! - `topics` (required): topic filters (`sensors/+/temp`, `alerts/#`), comma separated or
//!   the key repeated.
//! - `client.id` (default `appliance-` and 12 hex digits of a hash of the url and the
//!   topics): the broker keeps this client's session under it, so it must be stable and used
//!   by no one else.
//! - `keep.alive.s` (default 30, 0 = off), `username`, `password`,
//!   `max.packet.bytes` (default 1 MiB: a bigger packet from the broker fails the task).
//! - `protocol` (default `auto`: 5, or 3.1.1 when the broker refuses 5), `5` or `3.1.1`.
//!   MQTT 5's Receive Maximum (65535 here) lets the broker send a burst on at once instead of
//!   queueing it (where mosquitto drops beyond `max_queued_messages`); in 3.1.1 the broker's
//!   own window (mosquitto: `max_inflight_messages`, 20) applies.
//! - `qos`: only 1 (the default); QoS 1 with the scheme below is what gives exactly once.
//!
//! Records: key = the topic, value = the payload, timestamp = when it was received, and a
//! header `mqtt.retain=true` on retained messages (which a broker sends when a subscription
//! is made). Messages of a subscription the broker downgraded to QoS 0 are delivered at most
//! once.
//!
//! # Exactly once
//! The client connects with clean-session (clean-start) = false, in MQTT 5 with a session that
//! never expires: the broker keeps the subscriptions and,
//! while the task is away, queues the messages, and after every reconnect it sends again,
//! with DUP = 1 and in their original order, the messages it sent but did not see
//! acknowledged, before anything new.
//!
//! A message is acknowledged (PUBACK) only once the log holds it: the worker starts a poll
//! only after everything the previous poll emitted is durable, so each poll first sends the
//! PUBACKs of the previous poll's messages, in order. What the broker forgets is therefore
//! always in the log; what the log does not hold, the broker sends again.
//!
//! The converse needs care: a message may be in the log but not acknowledged (a crash after
//! the append, before the next poll). Each record's position identifies the last QoS 1
//! message emitted with it or before it: version 1, its packet id (u16), and a 64-bit FNV-1a
//! digest of its topic (length-prefixed) and payload, big-endian, 11 bytes. On a (re)connect
//! with that message known (`resume_after` on a restart, the last one emitted within a task),
//! the DUP = 1 messages are held until the first DUP = 0 message arrives or nothing has come
//! for 300 ms. If one of them matches the packet id and digest, it and everything held
//! before it are in the log: they are acknowledged and dropped, the rest is kept. If none
//! matches, the logged message was acknowledged before the crash, and since acknowledgements
//! go out in order, so was everything before it: every redelivered message is newer, and all
//! are kept. The one limit: a newer message with the same packet id, topic and payload as the
//! logged one, redelivered in the same window, would be taken for it and dropped. (And a
//! broker that keeps more than 10,000 unacknowledged messages in flight would overflow the
//! hold: it then stops, and keeps everything.)
//!
//! The broker must persist sessions for this to hold across a broker restart, and must queue
//! enough for the time the task is away: mosquitto, for one, drops QoS 1 messages beyond
//! `max_queued_messages` (default 1000) per client; raise it (0 = no limit) for bursts.
//! Subscriptions are made on the first connect and whenever the broker has no session; on a
//! reconnect to a kept session they are not repeated, as that would make the broker send
//! the retained messages again. Changing `topics` changes the default client id, hence the
//! session; with an explicit `client.id`, change it too.
//!
//! # Data flow and timing
//! `poll` -> connect if needed (CONNECT, CONNACK, SUBSCRIBE/SUBACK when needed, 2.5 s at
//! most) -> PUBACKs of the previous poll -> read what has arrived without blocking (at most
//! 500 ms of it; after PUBACKs, up to 50 ms for the next messages the broker was holding back)
//! -> PINGREQ when nothing was sent for half the keep-alive -> up to `max` records. A
//! connection that broke is replaced once within the poll (the broker redelivers, the resync
//! above drops what the log holds); if that fails too, the poll fails and the worker restarts
//! the task. A poll takes milliseconds; one that replaces a connection about 3.5 s at worst
//! (writes give up after 500 ms), inside the host's 5 s. At most 10,000 messages wait here;
//! beyond that the socket is left unread until polls drain them.

mod codec;
mod link;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use appliance_sdk::{Config, Record, Source, SourceRecord, host, source};

use codec::{Connect, Packet, Properties, Publish, Value, Version, property};
use link::Link;

const KEYS: &[&str] = &[
    "url",
    "topics",
    "client.id",
    "keep.alive.s",
    "username",
    "password",
    "max.packet.bytes",
    "qos",
    "protocol",
];
/// Messages held here (received, not emitted) before the socket is left unread.
const MAX_BUFFERED: usize = 10_000;
/// How long redelivery may pause before it counts as over.
const RESYNC_QUIET: Duration = Duration::from_millis(300);
/// Connect, CONNACK and SUBACK together.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long a poll that sent PUBACKs waits for the messages they let the broker send.
const LINGER: Duration = Duration::from_millis(50);
/// How long one poll reads at most.
const READ_BUDGET: Duration = Duration::from_millis(500);
const POSITION_VERSION: u8 = 1;
const POSITION_LEN: usize = 11;
/// The packet id of our SUBSCRIBE (ids we send are apart from the broker's).
const SUBSCRIBE_ID: u16 = 1;
/// MQTT 5 Receive Maximum: how many QoS 1 messages the broker may have sent us unacknowledged.
/// The most MQTT allows, so that a burst leaves the broker's queue (which drops what overflows
/// it) for the socket and this plugin's buffer as fast as it arrives.
const RECEIVE_MAXIMUM: u16 = u16::MAX;
/// MQTT 5 Session Expiry Interval: the broker keeps the session however long the task is away
/// (MQTT 5 ends it at the disconnect unless told otherwise).
const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

#[source]
#[derive(Debug)]
pub struct MqttSource {
    settings: Settings,
    /// The protocol to connect with: the configured one, or 3.1.1 once a broker refused 5.
    version: Version,
    link: Option<Link>,
    /// Whether the broker's session has our subscriptions (a record in the log says so too).
    subscribed: bool,
    /// The last QoS 1 message emitted: by the time `poll` runs again the log holds it.
    last_emitted: Option<Mark>,
    /// Packet ids of the previous poll's QoS 1 messages, acknowledged at the next poll.
    to_ack: Vec<u16>,
    /// Messages received, not emitted yet.
    pending: VecDeque<Publish>,
    /// After a reconnect: redelivered messages held until it is known which the log holds.
    resync: Option<Resync>,
}

/// The configuration, checked.
#[derive(Debug)]
struct Settings {
    /// As written in the URL (IPv6 in brackets).
    host: String,
    port: u16,
    topics: Vec<String>,
    client_id: String,
    keep_alive_s: u16,
    username: Option<String>,
    password: Option<String>,
    max_packet: usize,
    protocol: Protocol,
}

/// Which MQTT the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// 5, or 3.1.1 with a broker that refuses 5.
    Auto,
    Only(Version),
}

/// A QoS 1 message as the broker's session knows it: what a position stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    packet_id: u16,
    digest: u64,
}

impl Mark {
    /// None for a QoS 0 message, which the broker never sends again.
    fn of(publish: &Publish) -> Option<Self> {
        let topic = publish.topic.as_bytes();
        Some(Self {
            packet_id: publish.packet_id?,
            digest: fnv1a(&[&(topic.len() as u64).to_be_bytes(), topic, &publish.payload]),
        })
    }

    /// The position after a record: the last QoS 1 message so far (packet id 0: none).
    fn position(last: Option<Self>) -> Vec<u8> {
        let (packet_id, digest) = last.map_or((0, 0), |m| (m.packet_id, m.digest));
        let mut position = Vec::with_capacity(POSITION_LEN);
        position.push(POSITION_VERSION);
        position.extend_from_slice(&packet_id.to_be_bytes());
        position.extend_from_slice(&digest.to_be_bytes());
        position
    }

    fn from_position(position: &[u8]) -> Result<Option<Self>, String> {
        let invalid = || {
            format!(
                "the stored position ({} bytes) is not one of mqtt-source's ({POSITION_LEN} \
                 bytes, version {POSITION_VERSION})",
                position.len()
            )
        };
        let bytes: [u8; POSITION_LEN] = position.try_into().map_err(|_| invalid())?;
        if bytes[0] != POSITION_VERSION {
            return Err(invalid());
        }
        let packet_id = u16::from_be_bytes([bytes[1], bytes[2]]);
        let digest = u64::from_be_bytes(bytes[3..].try_into().map_err(|_| invalid())?);
        Ok((packet_id != 0).then_some(Self { packet_id, digest }))
    }
}

/// Redelivered messages held after a reconnect, until the one the log ends with shows up or
/// redelivery is over.
#[derive(Debug)]
struct Resync {
    after: Mark,
    held: Vec<Publish>,
    quiet_since: Instant,
}

impl Source for MqttSource {
    const SECRET_KEYS: &'static [&'static str] = &["password"];

    fn init(config: Config, resume_after: Option<Vec<u8>>) -> Result<Self, String> {
        let settings = Settings::from_config(&config)?;
        Link::check_grant(&settings.host, settings.port)?;
        let last_emitted = resume_after
            .as_deref()
            .map(Mark::from_position)
            .transpose()?
            .flatten();
        let version = match settings.protocol {
            Protocol::Auto => Version::V5,
            Protocol::Only(version) => version,
        };
        Ok(Self {
            settings,
            version,
            link: None,
            // A record in the log came through our subscriptions, which the session keeps.
            subscribed: resume_after.is_some(),
            last_emitted,
            to_ack: Vec::new(),
            pending: VecDeque::new(),
            resync: None,
        })
    }

    fn poll(&mut self, max: u32) -> Result<Vec<SourceRecord>, String> {
        let had_link = self.link.is_some();
        if let Err(lost) = self.service() {
            if !had_link {
                return Err(lost);
            }
            let broker = self.settings.address();
            host::log(
                host::Level::Warn,
                &format!("lost the connection to {broker}: {lost}; reconnecting"),
            );
            host::counter_add("reconnects", 1);
            self.service().map_err(|error| {
                format!("lost the connection to {broker} ({lost}) and could not reconnect: {error}")
            })?;
        }
        Ok(self.emit(max))
    }
}

impl MqttSource {
    /// Connects if needed, acknowledges the previous poll, reads what has arrived. On an
    /// error the link is gone: the next call connects anew.
    fn service(&mut self) -> Result<(), String> {
        let mut link = match self.link.take() {
            Some(link) => link,
            None => self.connect()?,
        };
        let acknowledged = self.acknowledge(&mut link)?;
        self.receive(&mut link, acknowledged)?;
        self.keep_alive(&mut link)?;
        self.link = Some(link);
        Ok(())
    }

    fn connect(&mut self) -> Result<Link, String> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let (mut link, session_present) = match self.handshake(deadline) {
            Err(Refusal::Version(code))
                if self.settings.protocol == Protocol::Auto && self.version == Version::V5 =>
            {
                host::log(
                    host::Level::Warn,
                    &format!(
                        "the broker at {} does not speak MQTT 5 (code {code:#04x}); using \
                         MQTT 3.1.1, where it sends at most its max_inflight_messages \
                         unacknowledged (see docs/connectors/mqtt.md on bursts)",
                        self.settings.address()
                    ),
                );
                self.version = Version::V311;
                self.handshake(deadline)
            }
            other => other,
        }
        .map_err(|refusal| refusal.to_string())?;
        // What the old connection received and did not acknowledge, the broker sends again.
        self.pending.clear();
        self.to_ack.clear();
        self.resync = None;
        if session_present {
            self.resync = self.last_emitted.map(|after| Resync {
                after,
                held: Vec::new(),
                quiet_since: Instant::now(),
            });
        } else if self.subscribed {
            host::log(
                host::Level::Warn,
                &format!(
                    "the broker kept no session for client id {:?}: messages published while \
                     this task was disconnected are lost (does the broker persist sessions? \
                     does another client use this id?)",
                    self.settings.client_id
                ),
            );
        }
        if !session_present || !self.subscribed {
            self.subscribe(&mut link, deadline)?;
        }
        Ok(link)
    }

    /// Opens a connection and sends CONNECT: the link and whether the broker kept a session.
    fn handshake(&self, deadline: Instant) -> Result<(Link, bool), Refusal> {
        let settings = &self.settings;
        let version = self.version;
        let mut link = Link::open(
            &settings.host,
            settings.port,
            settings.max_packet,
            version,
            settings.keep_alive_s,
            deadline,
        )?;
        // No Maximum Packet Size: a broker would drop bigger messages silently, where this
        // client fails the task with the reason (max.packet.bytes).
        let properties = match version {
            Version::V311 => Properties::new(),
            Version::V5 => vec![
                (
                    property::SESSION_EXPIRY_INTERVAL,
                    Value::FourBytes(SESSION_NEVER_EXPIRES),
                ),
                (property::RECEIVE_MAXIMUM, Value::TwoBytes(RECEIVE_MAXIMUM)),
            ],
        };
        link.send(&[Packet::Connect(Connect {
            version,
            client_id: settings.client_id.clone(),
            keep_alive_s: settings.keep_alive_s,
            clean_session: false,
            username: settings.username.clone(),
            password: settings.password.clone().map(String::into_bytes),
            properties,
        })])?;
        match link.wait(deadline)? {
            Some(Packet::ConnAck {
                code: 0,
                session_present,
                properties,
            }) => {
                if let Some(Value::TwoBytes(keep_alive_s)) =
                    codec::find(&properties, property::SERVER_KEEP_ALIVE)
                {
                    link.keep_alive_s = *keep_alive_s;
                }
                Ok((link, session_present))
            }
            // 3.1.1's "unacceptable protocol level", 5's "unsupported protocol version".
            Some(Packet::ConnAck {
                code: code @ (1 | 0x84),
                ..
            }) => Err(Refusal::Version(code)),
            Some(Packet::ConnAck {
                code, properties, ..
            }) => Err(Refusal::Other(refusal(
                code,
                &properties,
                version,
                settings,
            ))),
            Some(other) => Err(Refusal::Other(format!(
                "the broker answered CONNECT with {}",
                other.name()
            ))),
            None => Err(Refusal::Other(format!(
                "no CONNACK from {} within {} ms",
                settings.address(),
                CONNECT_TIMEOUT.as_millis()
            ))),
        }
    }

    fn subscribe(&mut self, link: &mut Link, deadline: Instant) -> Result<(), String> {
        let topics = self.settings.topics.clone();
        // QoS 1; in MQTT 5 also the default options: retained messages sent at subscribe,
        // own messages included, retain flag as the broker sets it.
        link.send(&[Packet::Subscribe {
            packet_id: SUBSCRIBE_ID,
            filters: topics.iter().map(|topic| (topic.clone(), 1)).collect(),
            properties: Properties::new(),
        }])?;
        let codes = loop {
            match link.wait(deadline)? {
                Some(Packet::SubAck {
                    packet_id: SUBSCRIBE_ID,
                    codes,
                    ..
                }) => break codes,
                // A broker may start sending (retained messages) before it answers.
                Some(other) if self.buffered() < MAX_BUFFERED => self.handle(link, other)?,
                Some(_) => {
                    return Err(format!(
                        "the broker sent over {MAX_BUFFERED} messages before its SUBACK"
                    ));
                }
                None => {
                    return Err(format!(
                        "no SUBACK from {} within {} ms",
                        self.settings.address(),
                        CONNECT_TIMEOUT.as_millis()
                    ));
                }
            }
        };
        if codes.len() != topics.len() {
            return Err(format!(
                "the broker answered {} topic filter(s) with {} code(s)",
                topics.len(),
                codes.len()
            ));
        }
        for (topic, code) in topics.iter().zip(codes) {
            match code {
                0x80.. => {
                    return Err(format!(
                        "the broker refused the subscription to {topic:?} (code {code:#04x})"
                    ));
                }
                0 => host::log(
                    host::Level::Warn,
                    &format!(
                        "the broker granted QoS 0 for {topic:?}: its messages arrive at most once"
                    ),
                ),
                _ => {}
            }
        }
        self.subscribed = true;
        Ok(())
    }

    /// PUBACKs for the previous poll's messages, which the log holds now; whether any went.
    fn acknowledge(&mut self, link: &mut Link) -> Result<bool, String> {
        if self.to_ack.is_empty() {
            return Ok(false);
        }
        let acks: Vec<Packet> = self
            .to_ack
            .iter()
            .map(|&packet_id| Packet::puback(packet_id))
            .collect();
        link.send(&acks)?;
        self.to_ack.clear();
        Ok(true)
    }

    /// Takes the packets that have arrived. After PUBACKs the broker sends the messages it
    /// was holding back (brokers bound the unacknowledged messages in flight), so then this
    /// waits a little for them rather than return empty-handed.
    fn receive(&mut self, link: &mut Link, linger: bool) -> Result<(), String> {
        let started = Instant::now();
        let linger_until = linger.then(|| started + LINGER);
        // A broker that never stops sending (pings, say) must not hold the poll past its
        // deadline.
        while self.buffered() < MAX_BUFFERED && started.elapsed() < READ_BUDGET {
            match link.next()? {
                Some(packet) => self.handle(link, packet)?,
                None => match linger_until {
                    Some(until) if self.pending.is_empty() && Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    _ => break,
                },
            }
        }
        if self
            .resync
            .as_ref()
            .is_some_and(|resync| resync.quiet_since.elapsed() >= RESYNC_QUIET)
        {
            self.end_resync();
        }
        Ok(())
    }

    fn handle(&mut self, link: &mut Link, packet: Packet) -> Result<(), String> {
        match packet {
            Packet::Publish(publish) => self.accept(link, publish),
            Packet::PingResp => {
                link.ping_sent = None;
                Ok(())
            }
            Packet::PingReq => link.send(&[Packet::PingResp]),
            Packet::Disconnect { reason, properties } => Err(format!(
                "the broker ended the connection (reason code {reason:#04x}){}",
                reason_string(&properties)
            )),
            other => Err(format!("the broker sent an unexpected {}", other.name())),
        }
    }

    /// A message from the broker: held while resyncing, else queued for emission.
    fn accept(&mut self, link: &mut Link, publish: Publish) -> Result<(), String> {
        let Some(resync) = &mut self.resync else {
            self.pending.push_back(publish);
            return Ok(());
        };
        let mark = Mark::of(&publish);
        if !publish.dup || mark.is_none() {
            // Redelivery is over, and the log's last message was not among it.
            self.end_resync();
            self.pending.push_back(publish);
            return Ok(());
        }
        if mark != Some(resync.after) {
            resync.held.push(publish);
            resync.quiet_since = Instant::now();
            if resync.held.len() >= MAX_BUFFERED {
                self.end_resync();
            }
            return Ok(());
        }
        // The log ends with this message: it and everything redelivered before it are in.
        let acks: Vec<Packet> = resync
            .held
            .iter()
            .chain([&publish])
            .filter_map(|held| held.packet_id)
            .map(Packet::puback)
            .collect();
        self.resync = None;
        host::log(
            host::Level::Info,
            &format!(
                "dropped {} redelivered message(s) the log already holds",
                acks.len()
            ),
        );
        link.send(&acks)
    }

    /// Keeps everything held: none of it is in the log.
    fn end_resync(&mut self) {
        if let Some(resync) = self.resync.take() {
            self.pending.extend(resync.held);
        }
    }

    fn buffered(&self) -> usize {
        self.pending.len() + self.resync.as_ref().map_or(0, |r| r.held.len())
    }

    fn keep_alive(&mut self, link: &mut Link) -> Result<(), String> {
        let interval = Duration::from_secs(u64::from(link.keep_alive_s));
        if interval.is_zero() {
            return Ok(());
        }
        match link.ping_sent {
            Some(sent) if sent.elapsed() >= interval => Err(format!(
                "no PINGRESP within the keep-alive of {} s",
                link.keep_alive_s
            )),
            Some(_) => Ok(()),
            None if link.idle_for() >= interval / 2 => {
                link.send(&[Packet::PingReq])?;
                link.ping_sent = Some(Instant::now());
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn emit(&mut self, max: u32) -> Vec<SourceRecord> {
        let count = self.pending.len().min(max as usize);
        let now = host::now_ms();
        let mut records = Vec::with_capacity(count);
        for publish in self.pending.drain(..count) {
            if let Some(mark) = Mark::of(&publish) {
                self.to_ack.push(mark.packet_id);
                self.last_emitted = Some(mark);
            }
            let mut record = Record::from_value(publish.payload);
            record.key = Some(publish.topic.into_bytes());
            record.timestamp = now;
            if publish.retain {
                record.add_header("mqtt.retain", "true");
            }
            records.push(SourceRecord {
                record,
                position: Mark::position(self.last_emitted),
            });
        }
        records
    }
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        config.only(KEYS)?;
        let url = config
            .require("url", "the broker, mqtt://HOST[:PORT]")?
            .trim();
        let (host, port) = parse_url(url)?;
        let topics: Vec<String> = config
            .list("topics")
            .into_iter()
            .flat_map(|item| item.split(','))
            .map(str::trim)
            .filter(|topic| !topic.is_empty())
            .map(str::to_owned)
            .collect();
        if topics.is_empty() {
            return Err(
                "missing required key `topics` (topic filters to subscribe to, comma separated)"
                    .to_owned(),
            );
        }
        for topic in &topics {
            check_filter(topic)?;
        }
        let client_id = match config.get("client.id").map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                let hash = fnv1a(&[url.as_bytes(), b"\n", topics.join("\n").as_bytes()]);
                // 22 characters: within the 23 every broker must accept.
                format!("appliance-{:012x}", hash >> 16)
            }
        };
        let keep_alive_s: u16 = config.parse_or("keep.alive.s", 30)?;
        let username = config.get("username").map(str::to_owned);
        let password = config.get("password").map(str::to_owned);
        if password.is_some() && username.is_none() {
            return Err(
                "`password` needs `username` (MQTT 3.1.1 sends no password alone)".to_owned(),
            );
        }
        let too_long = [Some(&client_id), username.as_ref(), password.as_ref()]
            .into_iter()
            .flatten()
            .any(|text| text.len() > usize::from(u16::MAX));
        if too_long {
            return Err(
                "`client.id`, `username` and `password` are at most 65535 bytes".to_owned(),
            );
        }
        let max_packet: usize = config.parse_or("max.packet.bytes", 1 << 20)?;
        if !(64..=codec::MAX_REMAINING_LENGTH).contains(&max_packet) {
            return Err(format!(
                "`max.packet.bytes` is 64 to {}",
                codec::MAX_REMAINING_LENGTH
            ));
        }
        if let Some(qos) = config.get("qos").map(str::trim)
            && qos != "1"
        {
            return Err(format!(
                "`qos` is 1 (exactly once into the log needs acknowledged delivery), not {qos:?}"
            ));
        }
        let protocol = match config.get("protocol").map(str::trim) {
            None | Some("auto") => Protocol::Auto,
            Some("5") => Protocol::Only(Version::V5),
            Some("3.1.1") => Protocol::Only(Version::V311),
            Some(other) => {
                return Err(format!(
                    "`protocol` is auto (5, or 3.1.1 with a broker without 5), 5 or 3.1.1, not \
                     {other:?}"
                ));
            }
        };
        Ok(Self {
            host,
            port,
            topics,
            client_id,
            keep_alive_s,
            username,
            password,
            max_packet,
            protocol,
        })
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why a CONNECT failed: the broker does not speak the version (with its code), or another
/// reason, said in full.
#[derive(Debug)]
enum Refusal {
    Version(u8),
    Other(String),
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self::Other(reason)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Version(code) => write!(
                f,
                "the broker refused the connection (code {code:#04x}): it does not speak the \
                 MQTT version asked for (set `protocol`)"
            ),
            Self::Other(reason) => f.write_str(reason),
        }
    }
}

/// Why the broker refused CONNECT, from its return code (3.1.1) or reason code (5).
fn refusal(code: u8, properties: &Properties, version: Version, settings: &Settings) -> String {
    let reason = match (version, code) {
        (Version::V311, 2) | (Version::V5, 0x85) => {
            format!("it rejects the client id {:?}", settings.client_id)
        }
        (Version::V311, 3) | (Version::V5, 0x88) => "the MQTT service is unavailable".to_owned(),
        (Version::V311, 4) | (Version::V5, 0x86) => "bad user name or password".to_owned(),
        (Version::V311, 5) | (Version::V5, 0x87) => "not authorized".to_owned(),
        (Version::V5, 0x89) => "the server is busy".to_owned(),
        (Version::V5, 0x8a) => "this client is banned".to_owned(),
        (Version::V5, 0x8c) => "bad authentication method".to_owned(),
        (Version::V5, 0x97) => "a quota is exceeded".to_owned(),
        (Version::V5, 0x9c | 0x9d) => "the broker sends its clients to another server".to_owned(),
        (Version::V5, 0x9f) => "connection rate exceeded".to_owned(),
        (Version::V5, _) => "see the reason code in MQTT 5's table".to_owned(),
        (Version::V311, _) => "a reason MQTT 3.1.1 does not define".to_owned(),
    };
    format!(
        "the broker at {} refused the connection (code {code:#04x}): {reason}{}",
        settings.address(),
        reason_string(properties)
    )
}

/// The broker's own words (MQTT 5's Reason String), if it gave any.
fn reason_string(properties: &Properties) -> String {
    match codec::find(properties, property::REASON_STRING) {
        Some(Value::Text(text)) => format!(": {text:?}"),
        _ => String::new(),
    }
}

fn parse_url(url: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL of the form mqtt://HOST[:PORT]"))?;
    if ["mqtts", "ssl", "tls", "wss", "ws"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        return Err(format!(
            "{url:?}: only plain mqtt:// is supported (no TLS, no WebSocket)"
        ));
    }
    if !scheme.eq_ignore_ascii_case("mqtt") && !scheme.eq_ignore_ascii_case("tcp") {
        return Err(format!("{url:?}: the scheme must be mqtt, not {scheme:?}"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{url:?}: only mqtt://HOST[:PORT] (credentials go in `username` and `password`)"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 address without a port has colons but ends with `]`.
        Some((host, port)) if !authority.ends_with(']') => (host, Some(port)),
        _ => (authority, None),
    };
    let valid_host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !valid_host {
        return Err(format!(
            "{url:?}: {host:?} is not a host name or IP address"
        ));
    }
    let port = match port {
        None => 1883,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{url:?}: {port:?} is not a port (1 to 65535)"))?,
    };
    Ok((host.to_owned(), port))
}

/// A topic filter as MQTT 3.1.1 allows it: `#` alone and last, `+` alone in its level.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
        return Err(format!(
            "topic filter {filter:?} is too long or contains NUL"
        ));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        let misplaced_hash = level.contains('#') && (*level != "#" || index + 1 != levels.len());
        let misplaced_plus = level.contains('+') && *level != "+";
        if misplaced_hash || misplaced_plus {
            return Err(format!(
                "topic filter {filter:?}: `#` must be a whole last level and `+` a whole level"
            ));
        }
    }
    Ok(())
}

/// 64-bit FNV-1a over the parts, one after the other.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
