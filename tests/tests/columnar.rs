//! Columnar forms of sealed segments under a real process: a query over a topic of many small
//! segments makes the appliance write a form of each after answering; the process is
//! SIGKILLed right after the answer, while it writes them; after a restart no unfinished form
//! is left, the answer is the same, the forms get written (those that fit their bound), and
//! the answer read from them is still the same.

use std::path::{Path, PathBuf};

use anyhow::Context;
use appliance_e2e::{Daemon, Deadline, cli_ok};
use nix::sys::signal::Signal;

const RECORDS: u64 = 200_000;

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else if entry.file_name().to_string_lossy().ends_with(suffix) {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

fn answer(daemon: &Daemon, root: &Path) -> anyhow::Result<String> {
    cli_ok(
        daemon,
        root,
        &[
            "query",
            "--format",
            "json",
            "SELECT site, count(*) AS n, sum(n) AS total, max(temp) AS hottest \
             FROM readings WHERE temp > 10 GROUP BY site ORDER BY site",
        ],
        b"",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_while_columnar_forms_are_written_leaves_answers_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let daemon = Daemon::start_on_free_ports(root, &[])?;
    cli_ok(
        &daemon,
        root,
        &[
            "topic",
            "create",
            "readings",
            "--partitions",
            "1",
            "--segment-bytes",
            "65536",
        ],
        b"",
    )?;
    let lines: String = (0..RECORDS)
        .map(|n| {
            format!(
                "{{\"n\":{n},\"temp\":{}.5,\"site\":\"s{}\"}}\n",
                n % 50,
                n % 7
            )
        })
        .collect();
    cli_ok(&daemon, root, &["produce", "readings"], lines.as_bytes())?;
    let segments = files_ending(root, ".log")?.len();
    anyhow::ensure!(
        segments > 50,
        "{segments} segments: too few to catch a write"
    );

    let expected = answer(&daemon, root)?;
    let (status, _) = daemon.stop_with(Signal::SIGKILL)?;
    let written_before = files_ending(root, ".columns")?.len();
    let unfinished = files_ending(root, ".columns.tmp")?.len();

    let daemon = Daemon::start_on_free_ports(root, &[])?;
    let left = files_ending(root, ".columns.tmp")?;
    anyhow::ensure!(
        left.is_empty(),
        "unfinished forms left after the restart: {left:?}"
    );
    anyhow::ensure!(
        answer(&daemon, root)? == expected,
        "the answer changed after the kill"
    );

    // A form larger than its segment is not kept: most segments get one, not every one.
    let deadline = Deadline::new("a columnar form of nine in ten sealed segments");
    loop {
        let written = files_ending(root, ".columns")?.len();
        if written * 10 >= (segments - 1) * 9 {
            break;
        }
        deadline
            .pause(format!("{written} of {} forms", segments - 1))
            .await?;
    }
    let from_forms = answer(&daemon, root).context("the answer from the forms")?;
    anyhow::ensure!(
        from_forms == expected,
        "the forms answer differently:\n{from_forms}\nagainst\n{expected}"
    );
    eprintln!(
        "killed ({status}) with {written_before} forms written and {unfinished} being written, of {} sealed segments",
        segments - 1
    );
    Ok(())
}
