//! `appliance demo`, as a newcomer runs it: a hub and three edges in one process, each edge
//! downsampling its readings to windows and linking only those, and a live per-edge table
//! from SQL on the hub with the bytes the links carried beside the raw bytes.

use anyhow::Context;
use appliance_e2e::run_to_end;

#[test]
fn the_demo_shows_every_edge_in_the_hubs_live_table_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = run_to_end(
        dir.path(),
        &["demo", "--seconds", "20", "--rate", "100", "--window", "3s"],
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("demo stopped"), "{stdout}");
    // The last table the demo printed has a row per edge, with its site and a count.
    let last = stdout
        .rsplit("readings per edge on the hub")
        .next()
        .context("no table printed")?;
    assert!(last.contains("| edge "), "{last}");
    for (edge, site) in [
        ("edge-1", "plant-1"),
        ("edge-2", "plant-2"),
        ("edge-3", "plant-3"),
    ] {
        let row = last
            .lines()
            .find(|line| line.starts_with(&format!("| {edge} ")))
            .with_context(|| format!("no row for {edge} in\n{last}"))?;
        assert!(row.contains(site), "{row}");
        let readings: u64 = row
            .split('|')
            .nth(3)
            .context("a readings column")?
            .trim()
            .parse()?;
        assert!(readings > 0, "{row}");
    }
    // Only the aggregates crossed the uplink: far fewer bytes than the raw readings.
    let uplink = last
        .lines()
        .find(|line| line.starts_with("the links carried"))
        .with_context(|| format!("no uplink line in\n{last}"))?;
    let figures: Vec<u64> = uplink
        .split(' ')
        .filter_map(|word| word.parse().ok())
        .collect();
    let [linked, raw] = figures[..] else {
        anyhow::bail!("{uplink}");
    };
    assert!(linked > 0 && linked * 5 < raw, "{uplink}");
    Ok(())
}
