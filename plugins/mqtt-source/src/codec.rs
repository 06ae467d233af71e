//! MQTT 3.1.1 packets: the subset a QoS-1 subscriber exchanges (CONNECT, CONNACK, PUBLISH
//! at QoS 0 and 1, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT), both ways, so
//! the tests' fake broker speaks through the same code.
//!
//! Every byte from the broker is hostile input: [`decode`] never panics and never trusts a
//! length. A packet announces its size in the fixed header (the remaining-length varint, at
//! most 4 bytes), which is checked against the caller's bound before anything is buffered
//! for it; inside, every field read is bounds-checked, flags and reserved bits are checked as
//! the specification requires, and a packet with bytes left over is malformed. QoS 2 is not
//! part of this subset: the client subscribes at QoS 1, and a broker must not send more.

use std::fmt;

/// The largest remaining length the 4-byte varint can express.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish(Publish),
    PubAck {
        packet_id: u16,
    },
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, u8)>,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// The packet's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "CONNECT",
            Self::ConnAck { .. } => "CONNACK",
            Self::Publish(_) => "PUBLISH",
            Self::PubAck { .. } => "PUBACK",
            Self::Subscribe { .. } => "SUBSCRIBE",
            Self::SubAck { .. } => "SUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

/// CONNECT without a will (this client never sets one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub keep_alive_s: u16,
    pub clean_session: bool,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    /// QoS 1: the id to acknowledge. None: QoS 0.
    pub packet_id: Option<u16>,
    /// A redelivery of a message sent before (QoS 1 only).
    pub dup: bool,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The bytes break the protocol.
    Malformed(String),
    /// A packet is bigger than the bound.
    TooLarge { size: usize, max: usize },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed MQTT packet: {what}"),
            Self::TooLarge { size, max } => {
                write!(
                    f,
                    "an MQTT packet of {size} bytes is over the bound of {max}"
                )
            }
        }
    }
}

fn malformed<T>(what: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError::Malformed(what.into()))
}

/// The packet at the start of `buf` and its length in bytes; `None` while it is incomplete.
/// A packet bigger than `max_packet` bytes is an error as soon as its header says so.
pub fn decode(buf: &[u8], max_packet: usize) -> Result<Option<(Packet, usize)>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len == 5 {
            return malformed("the remaining length takes more than 4 bytes");
        }
    }
    let size = header_len + remaining;
    if size > max_packet {
        return Err(CodecError::TooLarge {
            size,
            max: max_packet,
        });
    }
    let Some(body) = buf.get(header_len..size) else {
        return Ok(None);
    };
    let packet = decode_body(first >> 4, first & 0x0f, body)?;
    Ok(Some((packet, size)))
}

fn decode_body(kind: u8, flags: u8, body: &[u8]) -> Result<Packet, CodecError> {
    let mut reader = Reader { bytes: body };
    let expect_flags = |expected: u8, name: &str| {
        if flags == expected {
            Ok(())
        } else {
            malformed(format!("{name} with flags {flags:#06b}"))
        }
    };
    let packet = match kind {
        1 => {
            expect_flags(0, "CONNECT")?;
            Packet::Connect(decode_connect(&mut reader)?)
        }
        2 => {
            expect_flags(0, "CONNACK")?;
            let acknowledge = reader.u8("CONNACK flags")?;
            if acknowledge & 0xfe != 0 {
                return malformed("CONNACK with reserved flags set");
            }
            Packet::ConnAck {
                session_present: acknowledge & 1 == 1,
                code: reader.u8("CONNACK return code")?,
            }
        }
        3 => Packet::Publish(decode_publish(flags, &mut reader)?),
        4 => {
            expect_flags(0, "PUBACK")?;
            Packet::PubAck {
                packet_id: reader.packet_id("PUBACK")?,
            }
        }
        8 => {
            expect_flags(0b0010, "SUBSCRIBE")?;
            let packet_id = reader.packet_id("SUBSCRIBE")?;
            let mut filters = Vec::new();
            while !reader.bytes.is_empty() {
                let filter = reader.string("topic filter")?;
                let qos = reader.u8("requested QoS")?;
                if qos > 2 {
                    return malformed(format!("requested QoS byte {qos:#04x}"));
                }
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return malformed("SUBSCRIBE without topic filters");
            }
            Packet::Subscribe { packet_id, filters }
        }
        9 => {
            expect_flags(0, "SUBACK")?;
            let packet_id = reader.packet_id("SUBACK")?;
            let codes = reader.rest().to_vec();
            if let Some(code) = codes.iter().find(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
                return malformed(format!("SUBACK return code {code:#04x}"));
            }
            if codes.is_empty() {
                return malformed("SUBACK without return codes");
            }
            Packet::SubAck { packet_id, codes }
        }
        12 => {
            expect_flags(0, "PINGREQ")?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0, "PINGRESP")?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0, "DISCONNECT")?;
            Packet::Disconnect
        }
        5..=7 => return malformed("a QoS 2 flow packet (PUBREC/PUBREL/PUBCOMP) to a QoS 1 client"),
        other => return malformed(format!("packet type {other} is not one this client takes")),
    };
    if !reader.bytes.is_empty() {
        return malformed(format!(
            "{} with {} bytes past its end",
            packet.name(),
            reader.bytes.len()
        ));
    }
    Ok(packet)
}

fn decode_connect(reader: &mut Reader<'_>) -> Result<Connect, CodecError> {
    if reader.string("protocol name")? != "MQTT" || reader.u8("protocol level")? != 4 {
        return malformed("CONNECT of a protocol other than MQTT 3.1.1");
    }
    let flags = reader.u8("CONNECT flags")?;
    if flags & 0x01 != 0 {
        return malformed("CONNECT with the reserved flag set");
    }
    if flags & 0x04 != 0 {
        return malformed("CONNECT with a will, which this codec does not carry");
    }
    let keep_alive_s = reader.u16("keep alive")?;
    let client_id = reader.string("client id")?;
    let username = (flags & 0x80 != 0)
        .then(|| reader.string("user name"))
        .transpose()?;
    let password = (flags & 0x40 != 0)
        .then(|| reader.binary("password"))
        .transpose()?;
    Ok(Connect {
        client_id,
        keep_alive_s,
        clean_session: flags & 0x02 != 0,
        username,
        password,
    })
}

fn decode_publish(flags: u8, reader: &mut Reader<'_>) -> Result<Publish, CodecError> {
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    let topic = reader.string("topic name")?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return malformed(format!("PUBLISH to topic {topic:?}"));
    }
    let packet_id = match (flags >> 1) & 0b11 {
        0 if dup => return malformed("a QoS 0 PUBLISH marked DUP"),
        0 => None,
        1 => Some(reader.packet_id("PUBLISH")?),
        2 => return malformed("a QoS 2 PUBLISH; subscriptions ask for QoS 1 at most"),
        _ => return malformed("PUBLISH with QoS 3"),
    };
    Ok(Publish {
        topic,
        payload: reader.rest().to_vec(),
        packet_id,
        dup,
        retain,
    })
}

/// Reads fields off a packet body, failing instead of reading past it.
struct Reader<'b> {
    bytes: &'b [u8],
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'b [u8], CodecError> {
        if self.bytes.len() < n {
            return malformed(format!("the packet ends inside its {what}"));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, CodecError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn packet_id(&mut self, name: &str) -> Result<u16, CodecError> {
        match self.u16("packet id")? {
            0 => malformed(format!("{name} with packet id 0")),
            id => Ok(id),
        }
    }

    fn binary(&mut self, what: &str) -> Result<Vec<u8>, CodecError> {
        let length = self.u16(what)?;
        Ok(self.take(usize::from(length), what)?.to_vec())
    }

    /// A UTF-8 string, which MQTT forbids to contain U+0000.
    fn string(&mut self, what: &str) -> Result<String, CodecError> {
        let bytes = self.binary(what)?;
        match String::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => Ok(text),
            _ => malformed(format!("the {what} is not valid MQTT UTF-8")),
        }
    }

    fn rest(&mut self) -> &'b [u8] {
        std::mem::take(&mut self.bytes)
    }
}

/// The packet's bytes. Fails only for what MQTT cannot express: a string or password over
/// 65535 bytes, a packet over [`MAX_REMAINING_LENGTH`], a packet id 0 or a QoS over 2.
pub fn encode(packet: &Packet) -> Result<Vec<u8>, CodecError> {
    let mut body = Vec::new();
    let first = match packet {
        Packet::Connect(connect) => {
            put_binary(&mut body, b"MQTT")?;
            body.push(4);
            let mut flags = 0u8;
            if connect.clean_session {
                flags |= 0x02;
            }
            if connect.username.is_some() {
                flags |= 0x80;
            }
            if connect.password.is_some() {
                flags |= 0x40;
            }
            body.push(flags);
            body.extend_from_slice(&connect.keep_alive_s.to_be_bytes());
            put_binary(&mut body, connect.client_id.as_bytes())?;
            if let Some(username) = &connect.username {
                put_binary(&mut body, username.as_bytes())?;
            }
            if let Some(password) = &connect.password {
                put_binary(&mut body, password)?;
            }
            0x10
        }
        Packet::ConnAck {
            session_present,
            code,
        } => {
            body.extend_from_slice(&[u8::from(*session_present), *code]);
            0x20
        }
        Packet::Publish(publish) => {
            put_binary(&mut body, publish.topic.as_bytes())?;
            let mut flags = u8::from(publish.retain);
            if let Some(id) = publish.packet_id {
                put_packet_id(&mut body, id)?;
                flags |= 0b0010;
                if publish.dup {
                    flags |= 0b1000;
                }
            }
            body.extend_from_slice(&publish.payload);
            0x30 | flags
        }
        Packet::PubAck { packet_id } => {
            put_packet_id(&mut body, *packet_id)?;
            0x40
        }
        Packet::Subscribe { packet_id, filters } => {
            put_packet_id(&mut body, *packet_id)?;
            for (filter, qos) in filters {
                if *qos > 2 {
                    return malformed(format!("QoS {qos}"));
                }
                put_binary(&mut body, filter.as_bytes())?;
                body.push(*qos);
            }
            0x82
        }
        Packet::SubAck { packet_id, codes } => {
            put_packet_id(&mut body, *packet_id)?;
            body.extend_from_slice(codes);
            0x90
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    if body.len() > MAX_REMAINING_LENGTH {
        return Err(CodecError::TooLarge {
            size: body.len(),
            max: MAX_REMAINING_LENGTH,
        });
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    let mut length = body.len();
    loop {
        // The low 7 bits; the cast keeps exactly those.
        let mut byte = (length & 0x7f) as u8;
        length >>= 7;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    Ok(out)
}

fn put_binary(body: &mut Vec<u8>, bytes: &[u8]) -> Result<(), CodecError> {
    let length = u16::try_from(bytes.len())
        .or_else(|_| malformed(format!("a field of {} bytes (at most 65535)", bytes.len())))?;
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(bytes);
    Ok(())
}

fn put_packet_id(body: &mut Vec<u8>, id: u16) -> Result<(), CodecError> {
    if id == 0 {
        return malformed("packet id 0");
    }
    body.extend_from_slice(&id.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAX: usize = 1 << 20;

    fn samples() -> Vec<Packet> {
        vec![
            Packet::Connect(Connect {
                client_id: "appliance-1a2b".into(),
                keep_alive_s: 30,
                clean_session: false,
                username: Some("user".into()),
                password: Some(b"p\x00ss".to_vec()),
            }),
            Packet::Connect(Connect {
                client_id: String::new(),
                keep_alive_s: 0,
                clean_session: true,
                username: None,
                password: None,
            }),
            Packet::ConnAck {
                session_present: true,
                code: 0,
            },
            Packet::ConnAck {
                session_present: false,
                code: 5,
            },
            Packet::Publish(Publish {
                topic: "sensors/1/temp".into(),
                payload: b"{\"t\":21.5}".to_vec(),
                packet_id: Some(7),
                dup: true,
                retain: true,
            }),
            Packet::Publish(Publish {
                topic: "ünïcode".into(),
                payload: Vec::new(),
                packet_id: None,
                dup: false,
                retain: false,
            }),
            Packet::PubAck { packet_id: 65535 },
            Packet::Subscribe {
                packet_id: 1,
                filters: vec![("a/+/c".into(), 1), ("#".into(), 0)],
            },
            Packet::SubAck {
                packet_id: 1,
                codes: vec![1, 0x80],
            },
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect,
        ]
    }

    #[test]
    fn every_packet_round_trips_and_is_incomplete_until_its_last_byte() {
        for packet in samples() {
            let bytes = encode(&packet).unwrap();
            assert_eq!(
                decode(&bytes, MAX).unwrap(),
                Some((packet.clone(), bytes.len()))
            );
            for end in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..end], MAX).unwrap(),
                    None,
                    "{packet:?} cut at {end}"
                );
            }
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            assert_eq!(decode(&two, MAX).unwrap().unwrap().1, bytes.len());
        }
    }

    #[test]
    fn known_encodings() {
        assert_eq!(encode(&Packet::PingReq).unwrap(), [0xc0, 0]);
        assert_eq!(
            encode(&Packet::PubAck { packet_id: 258 }).unwrap(),
            [0x40, 2, 1, 2]
        );
        let publish = Packet::Publish(Publish {
            topic: "a".into(),
            payload: b"x".to_vec(),
            packet_id: Some(1),
            dup: true,
            retain: false,
        });
        assert_eq!(encode(&publish).unwrap(), [0x3a, 6, 0, 1, b'a', 0, 1, b'x']);
    }

    #[test]
    fn remaining_length_boundaries() {
        for (length, header) in [
            (0usize, 2usize),
            (127, 2),
            (128, 3),
            (16_383, 3),
            (16_384, 4),
            (2_097_151, 4),
            (2_097_152, 5),
        ] {
            let topic_and_id = 2 + 1 + 2;
            let Some(payload_len) = length.checked_sub(topic_and_id) else {
                continue;
            };
            let packet = Packet::Publish(Publish {
                topic: "t".into(),
                payload: vec![7; payload_len],
                packet_id: Some(1),
                dup: false,
                retain: false,
            });
            let bytes = encode(&packet).unwrap();
            assert_eq!(bytes.len(), header + length);
            let (decoded, size) = decode(&bytes, usize::MAX).unwrap().unwrap();
            assert_eq!((decoded, size), (packet, bytes.len()));
        }
        assert_eq!(
            decode(&[0x30, 0xff, 0xff, 0xff, 0x7f], usize::MAX).unwrap(),
            None,
            "the largest length is valid, the packet incomplete"
        );
    }

    #[test]
    fn hostile_bytes_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], "more than 4 bytes"),
            (&[0x32, 5, 0, 1, b'a', 0, 0], "packet id 0"),
            (&[0x36, 5, 0, 1, b'a', 0, 1], "QoS 3"),
            (&[0x34, 5, 0, 1, b'a', 0, 1], "QoS 2"),
            (&[0x38, 3, 0, 1, b'a'], "QoS 0 PUBLISH marked DUP"),
            (&[0x30, 3, 0, 5, b'a'], "ends inside its topic name"),
            (&[0x30, 4, 0, 2, 0xc3, 0x28], "not valid MQTT UTF-8"),
            (&[0x30, 3, 0, 1, 0], "not valid MQTT UTF-8"),
            (&[0x30, 3, 0, 1, b'#'], "PUBLISH to topic"),
            (&[0x30, 2, 0, 0], "PUBLISH to topic"),
            (&[0x20, 2, 2, 0], "reserved flags"),
            (&[0x21, 2, 0, 0], "CONNACK with flags"),
            (&[0x20, 3, 0, 0, 0], "bytes past its end"),
            (&[0x20, 1, 0], "ends inside its CONNACK return code"),
            (&[0x40, 1, 1], "ends inside its packet id"),
            (&[0x90, 3, 0, 1, 3], "SUBACK return code"),
            (&[0x90, 2, 0, 1], "without return codes"),
            (&[0x80, 2, 0, 1], "SUBSCRIBE with flags"),
            (&[0x82, 2, 0, 1], "without topic filters"),
            (&[0x50, 2, 0, 1], "QoS 2 flow"),
            (&[0xf0, 0], "packet type 15"),
            (&[0x00, 0], "packet type 0"),
            (&[0xc1, 0], "PINGREQ with flags"),
            (&[0xd0, 1, 0], "bytes past its end"),
            (&[0x10, 2, 0, 4], "ends inside its protocol name"),
        ];
        for (bytes, expected) in cases {
            let error = decode(bytes, MAX).unwrap_err().to_string();
            assert!(error.contains(expected), "{bytes:?}: {error}");
        }
        let big = [0x30, 0x80, 0x80, 0x40];
        assert_eq!(
            decode(&big, 1000).unwrap_err(),
            CodecError::TooLarge {
                size: 4 + (0x40 << 14),
                max: 1000
            },
            "refused on the header alone"
        );
    }

    #[test]
    fn what_mqtt_cannot_express_is_not_encoded() {
        let long = "x".repeat(65_536);
        let publish = Packet::Publish(Publish {
            topic: long,
            payload: Vec::new(),
            packet_id: None,
            dup: false,
            retain: false,
        });
        assert!(encode(&publish).is_err());
        assert!(encode(&Packet::PubAck { packet_id: 0 }).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some((_, size))) = decode(&bytes, 64) {
                prop_assert!(size <= bytes.len());
            }
        }

        #[test]
        fn publishes_round_trip(
            topic in "[a-z/]{1,20}",
            payload in prop::collection::vec(any::<u8>(), 0..300),
            packet_id in prop::option::of(1u16..=u16::MAX),
            dup in any::<bool>(),
            retain in any::<bool>(),
        ) {
            let packet = Packet::Publish(Publish {
                topic,
                payload,
                dup: dup && packet_id.is_some(),
                packet_id,
                retain,
            });
            let bytes = encode(&packet).unwrap();
            prop_assert_eq!(decode(&bytes, MAX).unwrap(), Some((packet, bytes.len())));
        }
    }
}
