//! Framing of the link protocol (`proto/appliance/link/v1/link.proto`): each message on a
//! QUIC stream is a 4-byte big-endian length and then that many bytes of the prost-encoded
//! message. The peer is untrusted: a length over the receiver's limit is refused before
//! anything is allocated, and a frame that does not decode is an error, never a panic.

use appliance_proto::link::v1 as wire;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Room for a message's envelope around the batch it carries.
pub const ENVELOPE_BYTES: usize = 64 * 1024;
const LENGTH_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer sent a frame of {length} bytes; the limit here is {limit}")]
    TooLong { length: usize, limit: usize },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("the peer sent a frame that is not a valid {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("reading the stream: {0}")]
    Io(#[from] std::io::Error),
}

/// One message as a frame.
pub fn encode<M: Message>(message: &M) -> Bytes {
    let length = message.encoded_len();
    let mut frame = BytesMut::with_capacity(LENGTH_BYTES + length);
    frame.put_u32(length as u32);
    message
        .encode(&mut frame)
        .unwrap_or_else(|_| unreachable!("the buffer was sized for the message"));
    frame.freeze()
}

/// A `PartitionFrame` carrying `batch`, as one frame in two parts: the envelope, then the
/// batch's bytes themselves, so a batch is never copied to be sent. Protobuf decoders take
/// fields in any order, so the envelope holds the small fields and the `data` field's key.
pub fn encode_batch(batch: wire::Batch) -> [Bytes; 2] {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    // Field 1 of PartitionFrame is its `batch`; field 1 of Batch is its `data`.
    const FIELD: u32 = 1;
    let data = batch.data;
    let rest = wire::Batch {
        data: Bytes::new(),
        ..batch
    };
    let data_key = key_len(FIELD) + encoded_len_varint(data.len() as u64);
    let batch_len = rest.encoded_len() + data_key + data.len();
    let frame_len = key_len(FIELD) + encoded_len_varint(batch_len as u64) + batch_len;
    let mut envelope = BytesMut::with_capacity(LENGTH_BYTES + frame_len - data.len());
    envelope.put_u32(frame_len as u32);
    encode_key(FIELD, WireType::LengthDelimited, &mut envelope);
    encode_varint(batch_len as u64, &mut envelope);
    rest.encode_raw(&mut envelope);
    encode_key(FIELD, WireType::LengthDelimited, &mut envelope);
    encode_varint(data.len() as u64, &mut envelope);
    [envelope.freeze(), data]
}

/// Reads the next frame's message; `None` when the stream ended cleanly between frames.
pub async fn read<M: Message + Default>(
    stream: &mut (impl AsyncRead + Unpin),
    limit: usize,
) -> Result<Option<M>, FrameError> {
    let mut length = [0u8; LENGTH_BYTES];
    let mut filled = 0;
    while filled < LENGTH_BYTES {
        match stream.read(&mut length[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => filled += n,
        }
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > limit {
        return Err(FrameError::TooLong { length, limit });
    }
    // Read into uninitialised room: a batch frame is a few hundred KiB, not worth zeroing
    // before the stream overwrites it.
    let mut body = BytesMut::with_capacity(length);
    while body.len() < length {
        let room = length - body.len();
        if stream.read_buf(&mut (&mut body).limit(room)).await? == 0 {
            return Err(FrameError::Truncated);
        }
    }
    M::decode(body.freeze())
        .map(Some)
        .map_err(|source| FrameError::Malformed {
            what: std::any::type_name::<M>()
                .rsplit("::")
                .next()
                .unwrap_or("message"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    fn batch(data: Vec<u8>) -> wire::Batch {
        wire::Batch {
            stored_length: data.len() as u32,
            data: data.into(),
            compression: wire::WireCompression::None as i32,
        }
    }

    proptest! {
        #[test]
        fn a_batch_frame_in_two_parts_reads_back_as_one_message(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            compression in 0i32..3,
            stored_length in any::<u32>(),
        ) {
            let batch = wire::Batch { data: data.into(), compression, stored_length };
            let [envelope, body] = encode_batch(batch.clone());
            let joined = [&envelope[..], &body[..]].concat();
            let read = block_on(read::<wire::PartitionFrame>(&mut &joined[..], 1 << 20)).unwrap();
            let expected = wire::PartitionFrame {
                kind: Some(wire::partition_frame::Kind::Batch(batch)),
            };
            prop_assert_eq!(read, Some(expected));
        }

        #[test]
        fn frames_read_back_in_order_whatever_the_reads_split(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..8),
        ) {
            let mut bytes = Vec::new();
            for payload in &payloads {
                bytes.extend_from_slice(&encode(&batch(payload.clone())));
            }
            // A pipe of 7 bytes: every frame arrives in many short reads.
            let got: Vec<Vec<u8>> = block_on(async {
                let (mut writer, mut reader) = tokio::io::duplex(7);
                let writing = async move {
                    tokio::io::AsyncWriteExt::write_all(&mut writer, &bytes).await.expect("write");
                };
                let reading = async {
                    let mut got = Vec::new();
                    while let Some(frame) = read::<wire::Batch>(&mut reader, 4096).await.expect("frame") {
                        got.push(frame.data.to_vec());
                    }
                    got
                };
                tokio::join!(writing, reading).1
            });
            prop_assert_eq!(got, payloads);
        }

        #[test]
        fn hostile_bytes_give_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            block_on(async {
                let mut stream = &bytes[..];
                while let Ok(Some(_)) = read::<wire::ControlFrame>(&mut stream, 100).await {}
            });
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let frame = encode(&batch(vec![7; 5000]));
        let error = block_on(read::<wire::Batch>(&mut &frame[..], 4096)).unwrap_err();
        assert!(matches!(error, FrameError::TooLong { length, limit: 4096 } if length > 5000));
        let mut huge = &[0xff, 0xff, 0xff, 0xff][..];
        let error = block_on(read::<wire::Batch>(&mut huge, 4096)).unwrap_err();
        assert!(matches!(error, FrameError::TooLong { .. }), "{error}");
    }

    #[test]
    fn a_cut_frame_and_a_garbled_one_are_errors() {
        let frame = encode(&batch(vec![1, 2, 3]));
        let cut = &frame[..frame.len() - 1];
        let error = block_on(read::<wire::Batch>(&mut &cut[..], 4096)).unwrap_err();
        assert!(matches!(error, FrameError::Truncated), "{error}");
        let half_length = &frame[..2];
        let error = block_on(read::<wire::Batch>(&mut &half_length[..], 4096)).unwrap_err();
        assert!(matches!(error, FrameError::Truncated), "{error}");
        let garbled = [0, 0, 0, 2, 0xff, 0xff];
        let error = block_on(read::<wire::Batch>(&mut &garbled[..], 4096)).unwrap_err();
        assert!(error.to_string().contains("not a valid Batch"), "{error}");
        assert!(
            block_on(read::<wire::Batch>(&mut &[][..], 4096))
                .unwrap()
                .is_none()
        );
    }
}
