use proptest::prelude::*;

use super::*;

const HOUR: i64 = 3_600_000;
const NOW: Timestamp = Timestamp(1_000 * HOUR);

/// Sealed segments (records, bytes, age in hours of the newest record) back to back from
/// offset 0, and the partition's total bytes with an active segment.
fn arb_partition() -> impl Strategy<Value = (Vec<SealedSegment>, u64)> {
    (
        proptest::collection::vec(
            (1u64..100, 1u64..1000, proptest::option::of(0i64..10)),
            0..12,
        ),
        0u64..1000,
    )
        .prop_map(|(specs, active_len)| {
            let mut end = 0;
            let sealed: Vec<SealedSegment> = specs
                .into_iter()
                .map(|(records, len, age)| {
                    end += records;
                    SealedSegment {
                        end: Offset(end),
                        len,
                        max_timestamp: age.map(|hours| Timestamp(NOW.0 - hours * HOUR)),
                    }
                })
                .collect();
            let total = active_len + sealed.iter().map(|s| s.len).sum::<u64>();
            (sealed, total)
        })
}

fn arb_config() -> impl Strategy<Value = TopicConfig> {
    (
        proptest::option::of(1u64..10),
        proptest::option::of(0u64..6000),
    )
        .prop_map(|(hours, bytes)| TopicConfig {
            retention_ms: hours.map(|h| h * HOUR as u64),
            retention_bytes: bytes,
            ..TopicConfig::default()
        })
}

fn arb_hold() -> impl Strategy<Value = RetentionHold> {
    (0u64..1200, prop_oneof![Just(u64::MAX), 0u64..12_000]).prop_map(|(keep_from, max_bytes)| {
        RetentionHold {
            keep_from: Offset(keep_from),
            max_bytes,
        }
    })
}

proptest! {
    /// A hold only ever takes segments away from what retention deletes, and it stops
    /// retention exactly at the first segment it still needs while the partition is
    /// within its cap.
    #[test]
    fn a_hold_keeps_what_it_needs_within_its_cap_and_never_deletes_more(
        (sealed, total) in arb_partition(),
        config in arb_config(),
        hold in arb_hold(),
    ) {
        let without = segments_to_delete(&sealed, total, &config, NOW, None);
        let with = segments_to_delete(&sealed, total, &config, NOW, Some(hold));
        prop_assert!(with <= without);
        let bytes_before = |count: usize| total - sealed[..count].iter().map(|s| s.len).sum::<u64>();
        for (i, segment) in sealed[..with].iter().enumerate() {
            prop_assert!(
                segment.end <= hold.keep_from || bytes_before(i) > hold.max_bytes,
                "segment {} was needed by the hold and the partition was within the cap", i
            );
        }
        if with < without {
            prop_assert!(sealed[with].end > hold.keep_from, "stopped at a segment the hold needs");
            prop_assert!(bytes_before(with) <= hold.max_bytes, "stopped within the cap");
        }
    }
}
