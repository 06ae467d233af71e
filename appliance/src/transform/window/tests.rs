use proptest::prelude::*;

use super::*;

const LATE: &str = "late";
const MINUTE: i64 = 60_000;

fn spec(settings: &[(&str, &str)]) -> Result<WindowSpec, String> {
    let config: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    WindowSpec::parse(&config)
}

fn operator(settings: &[(&str, &str)]) -> WindowOperator {
    let spec = spec(settings).unwrap();
    let changelog = spec.changelog_topic("p").unwrap();
    WindowOperator::new(spec, changelog)
}

/// Tumbling minutes on `ts` without grace, counting, with `extra` settings.
fn counting_minutes(extra: &[(&str, &str)]) -> WindowOperator {
    let mut settings = vec![
        ("window", "tumbling"),
        ("size", "1m"),
        ("grace", "0s"),
        ("time-field", "ts"),
        ("aggregates", "count"),
        ("late-topic", LATE),
    ];
    settings.extend_from_slice(extra);
    operator(&settings)
}

fn tumbling() -> WindowOperator {
    operator(&[
        ("window", "tumbling"),
        ("size", "1m"),
        ("grace", "10s"),
        ("time-field", "ts"),
        (
            "aggregates",
            "count; avg(t); min(t); max(t); first(t); last(t)",
        ),
        ("late-topic", LATE),
    ])
}

/// A reading of `device` at event time `ts`, received at `received`.
fn reading(offset: i64, device: &str, ts: i64, t: i64, received: i64) -> Record {
    Record {
        key: Some(Bytes::copy_from_slice(device.as_bytes())),
        value: Some(Bytes::from(format!(r#"{{"ts":{ts},"t":{t}}}"#))),
        headers: Vec::new(),
        timestamp: received,
        offset,
        topic: None,
    }
}

fn json(record: &Record) -> Value {
    serde_json::from_slice(record.value.as_deref().unwrap()).unwrap()
}

fn results(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r.topic.is_none())
        .map(json)
        .collect()
}

fn routed<'a>(records: &'a [Record], topic: &str) -> Vec<&'a Record> {
    records
        .iter()
        .filter(|r| r.topic.as_deref() == Some(topic))
        .collect()
}

#[test]
fn settings_are_checked_with_reasons() {
    let base = [
        ("window", "tumbling"),
        ("size", "1m"),
        ("aggregates", "count"),
        ("late-topic", LATE),
    ];
    let without_grace = spec(&base).unwrap_err();
    assert!(
        without_grace.contains("`grace` is required"),
        "{without_grace}"
    );
    let mut with = base.to_vec();
    with.push(("grace", "0s"));
    assert!(spec(&with).is_ok());
    for (bad, says) in [
        (("advance", "10s"), "does not apply"),
        (("aggregates", "median(x)"), "aggregate"),
        (("aggregates", "count; count"), "twice"),
        (("emit", "sometimes"), "final or update"),
        (("size", "0s"), "longer than 0"),
        (("size", "soon"), "not a duration"),
        (("late-topic", "bad topic"), "late-topic"),
        (("colour", "red"), "unknown setting"),
    ] {
        let mut settings = with.clone();
        settings.push(bad);
        let problem = spec(&settings).unwrap_err();
        assert!(problem.contains(says), "{bad:?}: {problem}");
    }
    let hopping = spec(&[
        ("window", "hopping"),
        ("size", "1m"),
        ("advance", "100ms"),
        ("grace", "0s"),
        ("aggregates", "count"),
        ("late-topic", LATE),
    ])
    .unwrap_err();
    assert!(hopping.contains("more than 100 windows"), "{hopping}");
    assert!(
        spec(&[("window", "session"), ("gap", "5m"), ("grace", "1s")])
            .unwrap_err()
            .contains("aggregates")
    );
}

#[test]
fn tumbling_windows_close_at_end_plus_grace_with_exact_aggregates() {
    let mut op = tumbling();
    let now = 10 * MINUTE;
    let input = vec![
        reading(0, "d1", 5_000, 20, now),
        reading(1, "d1", 1_000, 10, now),
        reading(2, "d1", 59_999, 30, now),
        reading(3, "d1", 65_000, 1, now),
        // Within grace: the first window is still open at watermark 65 s.
        reading(4, "d1", 30_000, 40, now),
        // Closes [0, 60 s): 70 s = end + grace.
        reading(5, "d1", 70_000, 2, now),
        // Its window closed: late.
        reading(6, "d1", 50_000, 99, now),
    ];
    let (out, rejected) = op.process(input, now).unwrap();
    assert!(rejected.is_empty());
    let results = results(&out);
    assert_eq!(results.len(), 1, "{results:?}");
    let window = &results[0];
    assert_eq!(window["window_start"], 0);
    assert_eq!(window["window_end"], 60_000);
    assert_eq!(window["count"], 4);
    assert_eq!(window["avg_t"], 25.0);
    assert_eq!(window["min_t"], 10.0);
    assert_eq!(window["max_t"], 40.0);
    assert_eq!(
        window["first_t"], 10,
        "the earliest event, not the first to arrive"
    );
    assert_eq!(window["last_t"], 30);
    let late = routed(&out, LATE);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].offset, 6);
    assert_eq!(late[0].headers[0].value, "late");
    let result = out.iter().find(|r| r.topic.is_none()).unwrap();
    assert_eq!(result.offset, 5, "attributed to the record that closed it");
    assert_eq!(result.key.as_deref(), Some(&b"d1"[..]));
    assert_eq!(op.open_windows(), 1);
}

#[test]
fn an_event_from_the_future_goes_to_the_late_topic_and_closes_nothing() {
    let mut op = tumbling();
    let now = 10 * MINUTE;
    let (out, _) = op
        .process(
            vec![
                reading(0, "slow", now - 30_000, 1, now),
                reading(1, "fast", now + 60 * MINUTE, 1, now),
                reading(2, "slow", now - 20_000, 2, now),
            ],
            now,
        )
        .unwrap();
    let late = routed(&out, LATE);
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].headers[0].value, "future");
    assert!(results(&out).is_empty(), "no window closed");
    assert_eq!(op.watermark, Some(now - 20_000));
    // The gateway's clock is the record's timestamp: a minute ahead is within max-future.
    let (out, _) = op
        .process(vec![reading(3, "d", now + 59_000, 1, now)], now)
        .unwrap();
    assert!(routed(&out, LATE).is_empty());
}

#[test]
fn hopping_windows_take_a_record_in_each_window_that_holds_it() {
    let mut op = operator(&[
        ("window", "hopping"),
        ("size", "1m"),
        ("advance", "20s"),
        ("grace", "0s"),
        ("time-field", "ts"),
        ("aggregates", "count; sum(t)"),
        ("late-topic", LATE),
        ("emit", "update"),
    ]);
    let (out, _) = op
        .process(vec![reading(0, "d", 65_000, 3, 65_000)], 65_000)
        .unwrap();
    let starts: Vec<i64> = results(&out)
        .iter()
        .map(|w| w["window_start"].as_i64().unwrap())
        .collect();
    assert_eq!(starts, [20_000, 40_000, 60_000]);
    assert!(results(&out).iter().all(|w| w["sum_t"] == 3.0));
}

#[test]
fn sessions_merge_when_an_event_bridges_them() {
    let mut op = operator(&[
        ("window", "session"),
        ("gap", "10s"),
        ("grace", "30s"),
        ("time-field", "ts"),
        ("aggregates", "count; max(t)"),
        ("late-topic", LATE),
    ]);
    let (out, _) = op
        .process(
            vec![
                reading(0, "d", 0, 1, 100_000),
                reading(1, "d", 25_000, 2, 100_000),
                // Within the gap of 0 only: the first session becomes [0, 9 s].
                reading(2, "d", 9_000, 5, 100_000),
                // Within the gap of both 9 s and 25 s: one session [0, 25 s].
                reading(3, "d", 17_000, 3, 100_000),
            ],
            100_000,
        )
        .unwrap();
    assert!(results(&out).is_empty());
    assert_eq!(op.open_windows(), 1, "17 s bridged the two sessions");
    let (out, _) = op
        .process(vec![reading(4, "d", 100_000, 0, 100_000)], 100_000)
        .unwrap();
    let results = results(&out);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["window_start"], 0);
    assert_eq!(results[0]["window_end"], 25_000);
    assert_eq!(results[0]["count"], 4);
    assert_eq!(results[0]["max_t"], 5.0);
}

#[test]
fn fields_group_and_unreadable_records_are_rejected() {
    let mut op = operator(&[
        ("window", "tumbling"),
        ("size", "1m"),
        ("grace", "0s"),
        ("time-field", "ts"),
        ("group-by", "site; kind"),
        ("aggregates", "count; avg(t)"),
        ("late-topic", LATE),
        ("emit", "update"),
    ]);
    let record = |offset: i64, value: &str| Record {
        key: None,
        value: Some(Bytes::from(value.to_owned())),
        headers: Vec::new(),
        timestamp: 0,
        offset,
        topic: None,
    };
    let (out, rejected) = op
        .process(
            vec![
                record(0, r#"{"ts":1,"site":"a","kind":"x","t":2}"#),
                record(1, r#"{"ts":2,"site":"a","t":"warm"}"#),
                record(2, "not json"),
                record(3, r#"{"site":"a"}"#),
                record(4, r#"{"ts":-9223372036854775807,"site":"a","t":1}"#),
                record(
                    5,
                    r#"{"ts":"1970-01-01T00:00:00.003Z","site":"a","kind":"x","t":4}"#,
                ),
            ],
            0,
        )
        .unwrap();
    let offsets: Vec<i64> = rejected.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4]);
    assert!(rejected[3].message.contains("years 1 and 9999"));
    assert!(rejected[0].message.contains("needs a number"));
    assert!(rejected[2].message.contains("`ts` is missing"));
    let last = results(&out).pop().unwrap();
    assert_eq!(last["site"], "a");
    assert_eq!(last["kind"], "x");
    assert_eq!(last["count"], 2);
    assert_eq!(last["avg_t"], 3.0);
    let keyed = out.iter().rfind(|r| r.topic.is_none()).unwrap();
    assert_eq!(keyed.key.as_deref(), Some(&br#"["a","x"]"#[..]));
}

#[test]
fn too_many_open_windows_stop_the_partition() {
    let mut op = counting_minutes(&[("max-open-windows", "2")]);
    let input = (0..3)
        .map(|i| reading(i, &format!("d{i}"), 1, 0, 0))
        .collect();
    let problem = op.process(input, 0).unwrap_err();
    assert!(problem.contains("max-open-windows"), "{problem}");
}

/// Restores an operator from every changelog record `batches` produced.
fn restored(settings: &[(&str, &str)], outputs: &[Record]) -> WindowOperator {
    let mut op = operator(settings);
    for record in outputs
        .iter()
        .filter(|r| r.topic.as_deref() == Some("p.window.changelog"))
    {
        op.restore(record.key.as_deref().unwrap(), record.value.as_deref())
            .unwrap();
    }
    op
}

fn settings_of(kind: usize) -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![
        ("grace", "5s"),
        ("time-field", "ts"),
        ("aggregates", "count; sum(t); min(t); last(t)"),
        ("late-topic", LATE),
    ];
    settings.extend_from_slice(match kind {
        0 => &[("window", "tumbling"), ("size", "10s")][..],
        1 => &[("window", "hopping"), ("size", "10s"), ("advance", "5s")][..],
        _ => &[("window", "session"), ("gap", "3s")][..],
    });
    settings
}

proptest! {
    /// Restored from its changelog after any batch, an operator holds the same windows and
    /// watermark, and the rest of the input gives the same output as without the restart.
    #[test]
    fn a_restore_from_the_changelog_continues_exactly(
        kind in 0usize..3,
        events in prop::collection::vec((0usize..4, 0i64..60_000, -5i64..50), 1..120),
        cut in 0usize..120,
        batch in 1usize..10,
    ) {
        let settings = settings_of(kind);
        let input: Vec<Record> = events
            .iter()
            .enumerate()
            .map(|(i, (device, ts, t))| reading(i as i64, &format!("d{device}"), *ts, *t, 0))
            .collect();
        let cut = cut.min(input.len());
        let run = |op: &mut WindowOperator, records: &[Record]| -> Vec<Record> {
            records
                .chunks(batch)
                .flat_map(|chunk| op.process(chunk.to_vec(), 0).unwrap().0)
                .collect()
        };
        let mut whole = operator(&settings);
        let before = run(&mut whole, &input[..cut]);
        let after_whole = run(&mut whole, &input[cut..]);
        let mut again = restored(&settings, &before);
        let mut first = operator(&settings);
        run(&mut first, &input[..cut]);
        prop_assert_eq!(&again.windows, &first.windows);
        prop_assert_eq!(again.watermark, first.watermark);
        let spec = spec(&settings).unwrap();
        let changelog = spec.changelog_topic("p").unwrap();
        let mut from_snapshot = WindowOperator::from_state(spec, changelog, first.state()).unwrap();
        let after_restore = run(&mut again, &input[cut..]);
        prop_assert_eq!(&after_restore, &after_whole);
        prop_assert_eq!(run(&mut from_snapshot, &input[cut..]), after_whole);
    }

    /// Every accepted event is counted in each window that holds it, once: the counts of the
    /// closed and open windows add up to the events not sent to the late topic.
    #[test]
    fn every_event_is_counted_or_late(
        events in prop::collection::vec((0usize..4, 0i64..60_000), 1..200),
    ) {
        let mut op = operator(&settings_of(0));
        let input: Vec<Record> = events
            .iter()
            .enumerate()
            .map(|(i, (device, ts))| reading(i as i64, &format!("d{device}"), *ts, 1, 0))
            .collect();
        let (out, rejected) = op.process(input.clone(), 0).unwrap();
        prop_assert!(rejected.is_empty());
        let closed: u64 = results(&out).iter().map(|w| w["count"].as_u64().unwrap()).sum();
        let open: u64 = op.windows.values().map(|w| w.count).sum();
        let late = routed(&out, LATE).len() as u64;
        prop_assert_eq!(closed + open + late, input.len() as u64);
    }
}

#[test]
fn an_idle_advance_is_decided_first_then_closes_what_it_passed() {
    let mut settings = vec![
        ("window", "tumbling"),
        ("size", "1m"),
        ("grace", "10s"),
        ("time-field", "ts"),
        ("aggregates", "count"),
        ("late-topic", LATE),
        ("idle-advance", "30s"),
    ];
    let mut op = operator(&settings);
    assert_eq!(op.spec().idle_advance, Some(30_000));
    assert_eq!(op.advance_idle(MINUTE, 0, 0), None, "nothing open");
    let now = 10 * MINUTE;
    op.process(
        vec![
            reading(0, "a", 1_000, 1, now),
            reading(1, "b", 2_000, 1, now),
        ],
        now,
    )
    .unwrap();
    assert_eq!(
        op.advance_idle(69_999, 7, 1),
        None,
        "it would close nothing"
    );
    let decision = op.advance_idle(70_000, 7, 1).expect("closes [0, 1m)");
    assert_eq!(decision.len(), 2, "the decision and its commit entry");
    assert_eq!(decision[1].key.as_deref(), Some(&[COMMIT_ENTRY][..]));
    let decision = &decision[0];
    assert_eq!(decision.offset, 1);
    assert_eq!(decision.topic.as_deref(), Some("p.window.changelog"));
    let key = decision.key.clone().unwrap();
    assert_eq!(idle_advance_end(&key, decision.value.as_deref()), Some(7));

    // Restored from the decision alone (stopped before the results), the same windows close;
    // a result the destination already holds is not emitted again.
    let mut again = operator(&settings);
    again
        .process(
            vec![
                reading(0, "a", 1_000, 1, now),
                reading(1, "b", 2_000, 1, now),
            ],
            now,
        )
        .unwrap();
    again.restore(&key, decision.value.as_deref()).unwrap();
    let done = HashSet::from([(Some(Bytes::from_static(b"a")), 0)]);
    let closed = again.close_pending(1, &done);
    let results: Vec<&Record> = closed.iter().filter(|r| r.topic.is_none()).collect();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].key.as_deref(), Some(&b"b"[..]));
    assert_eq!(
        routed(&closed, "p.window.changelog").len(),
        3,
        "both tombstones and the commit entry"
    );
    assert_eq!(again.open_windows(), 0);

    let all = op.close_pending(1, &HashSet::new());
    assert_eq!(all.iter().filter(|r| r.topic.is_none()).count(), 2);
    settings.push(("idle-advance", "0s"));
    assert!(spec(&settings).unwrap_err().contains("idle-advance"));
}

#[test]
fn sums_saturate_and_the_changelog_takes_no_routed_records() {
    let settings = [
        ("window", "tumbling"),
        ("size", "1m"),
        ("grace", "0s"),
        ("time-field", "ts"),
        ("aggregates", "sum(t)"),
        ("late-topic", LATE),
    ];
    let mut op = operator(&settings);
    let huge = |offset: i64| Record {
        key: Some(Bytes::from_static(b"d")),
        value: Some(Bytes::from_static(br#"{"ts":1,"t":1e308}"#)),
        headers: Vec::new(),
        timestamp: 0,
        offset,
        topic: None,
    };
    let mut routed_there = huge(2);
    routed_there.topic = Some("p.window.changelog".to_owned());
    let (out, rejected) = op.process(vec![huge(0), huge(1), routed_there], 0).unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].message.contains("changelog"), "{rejected:?}");
    // The state stays storable: the sum is the largest finite number, not infinity.
    let again = restored(&settings, &out);
    assert_eq!(again.windows, op.windows);
    let (closed, _) = op
        .process(vec![reading(3, "d", 120_000, 0, 120_000)], 120_000)
        .unwrap();
    assert_eq!(results(&closed)[0]["sum_t"], f64::MAX);
}

#[test]
fn one_record_closes_a_bounded_number_of_windows() {
    let mut op = counting_minutes(&[]);
    let now = 10 * MINUTE;
    let open: Vec<Record> = (0..1500)
        .map(|d| reading(d, &format!("d{d}"), 1, 1, now))
        .collect();
    op.process(open, now).unwrap();
    let (out, _) = op
        .process(vec![reading(1500, "x", 2 * MINUTE, 1, now)], now)
        .unwrap();
    assert_eq!(results(&out).len(), MAX_CLOSES_PER_RECORD);
    // A record for a window past its close is late even while the window waits to close.
    let (out, _) = op
        .process(
            vec![
                reading(1501, "d1499", 2, 1, now),
                reading(1502, "x", 2 * MINUTE + 1, 1, now),
            ],
            now,
        )
        .unwrap();
    assert_eq!(routed(&out, LATE).len(), 1);
    assert_eq!(results(&out).len(), 500);
    assert_eq!(op.open_windows(), 1, "only x's window");
}
