//! Kafka's default partitioner for keyed records: murmur2 of the key bytes, made positive,
//! modulo the partition count. Using the same function puts a key in the partition a Kafka
//! producer would choose, so data can move between the two without reshuffling keys.

use super::types::PartitionId;

/// The partition Kafka's `DefaultPartitioner` picks for `key` among `partitions` (>= 1).
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    let positive = murmur2(key) & 0x7fff_ffff;
    PartitionId(positive as u32 % partitions.max(1))
}

/// Kafka's `Utils.murmur2`: MurmurHash2, 32-bit, seed 0x9747b28c, little-endian blocks.
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in blocks.by_ref() {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka() {
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), expected, "{key}");
        }
    }

    #[test]
    fn keys_spread_over_every_partition_and_stay_put() {
        let mut seen = [0u32; 8];
        for i in 0..1000 {
            let key = format!("device-{i}");
            let partition = partition_for_key(key.as_bytes(), 8);
            assert_eq!(partition, partition_for_key(key.as_bytes(), 8));
            seen[partition.0 as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 80), "{seen:?}");
    }
}
