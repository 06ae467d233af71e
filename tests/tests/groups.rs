//! Consumer group liveness against a real `appliance run` and real `appliance consume`
//! members: a member frozen with SIGSTOP loses its partitions to the other member after its
//! session timeout, and learns that it was removed when it resumes.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use appliance_e2e::Channel;
use appliance_e2e::{Daemon, Deadline, appliance};
use appliance_proto::v1 as pb;
use appliance_proto::v1::groups_client::GroupsClient;
use appliance_proto::v1::records_client::RecordsClient;
use appliance_proto::v1::topics_client::TopicsClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// An `appliance consume --group` process; killed when dropped.
struct Consumer {
    child: Child,
    printed: Arc<Mutex<Vec<String>>>,
}

impl Consumer {
    fn start(
        daemon: &Daemon,
        dir: &Path,
        group: &str,
        session_timeout_ms: &str,
    ) -> anyhow::Result<Self> {
        let mut child = appliance(dir)?
            .args(["consume", "work", "--group", group, "--from-beginning"])
            .args(["--session-timeout-ms", session_timeout_ms])
            .env("APPLIANCE_SERVER", &daemon.grpc_url)
            .env("APPLIANCE_TOKEN", &daemon.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let printed = Arc::new(Mutex::new(Vec::new()));
        let collected = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
            }
        });
        Ok(Self { child, printed })
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        Ok(kill(Pid::from_raw(self.child.id() as i32), signal)?)
    }

    fn printed(&self) -> Vec<String> {
        self.printed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each member of `group` and the partitions it owns.
async fn owners(channel: &Channel, group: &str) -> anyhow::Result<Vec<(String, Vec<u32>)>> {
    let description = GroupsClient::new(channel.clone())
        .describe_group(pb::DescribeGroupRequest {
            group: group.into(),
        })
        .await?
        .into_inner();
    Ok(description
        .members
        .into_iter()
        .map(|m| {
            let mut partitions: Vec<u32> = m.assigned.iter().map(|p| p.partition).collect();
            partitions.sort_unstable();
            (m.member_id, partitions)
        })
        .collect())
}

/// Waits until `group`'s members and their partitions are what `wanted` says of them.
async fn wait_for_owners(
    channel: &Channel,
    group: &str,
    what: &str,
    wanted: impl Fn(&[(String, Vec<u32>)]) -> bool,
) -> anyhow::Result<Vec<(String, Vec<u32>)>> {
    let deadline = Deadline::new(what);
    loop {
        let now = owners(channel, group).await?;
        if wanted(&now) {
            return Ok(now);
        }
        deadline.pause(now).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_loses_its_partitions_after_its_session_timeout_and_learns_it()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("appliance.toml");
    std::fs::write(&config, "[groups]\nmin-session-timeout-ms = 500\n")?;
    let config = config.to_str().context("config path")?;
    let daemon =
        Daemon::start_on_free_ports(dir.path(), &["--data-dir", "data", "--config", config])?;
    let channel = daemon.channel().await?;
    TopicsClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: "work".into(),
            config: Some(pb::TopicConfig {
                partitions: Some(2),
                ..Default::default()
            }),
        })
        .await?;

    let frozen = Consumer::start(&daemon, dir.path(), "g", "1500")?;
    let alone = wait_for_owners(
        &channel,
        "g",
        "the first member owning both partitions",
        |m| m.len() == 1 && m[0].1 == [0, 1],
    )
    .await?;
    let frozen_id = alone[0].0.clone();
    let survivor = Consumer::start(&daemon, dir.path(), "g", "1500")?;
    wait_for_owners(&channel, "g", "two members with a partition each", |m| {
        m.len() == 2 && m.iter().all(|(_, p)| p.len() == 1)
    })
    .await?;

    frozen.signal(Signal::SIGSTOP)?;
    let after = wait_for_owners(
        &channel,
        "g",
        "the frozen member removed and the other owning both partitions",
        |m| m.len() == 1 && m[0].0 != frozen_id && m[0].1 == [0, 1],
    )
    .await?;
    assert!(
        daemon.log_text().contains("member removed"),
        "the removal is logged: {after:?}"
    );

    for partition in [0, 1] {
        RecordsClient::new(channel.clone())
            .produce(pb::ProduceRequest {
                topic: "work".into(),
                partition: Some(partition),
                records: vec![pb::Record {
                    key: None,
                    value: Some(format!("to-partition-{partition}").into_bytes().into()),
                    headers: vec![],
                    timestamp_ms: 0,
                }],
            })
            .await?;
    }
    let deadline = Deadline::new("the remaining member printing the records of both partitions");
    while !["to-partition-0", "to-partition-1"]
        .iter()
        .all(|value| survivor.printed().iter().any(|line| line.contains(value)))
    {
        deadline.pause(survivor.printed()).await?;
    }

    frozen.signal(Signal::SIGCONT)?;
    let mut frozen = frozen;
    let deadline = Deadline::new("the resumed member exiting");
    let exit = loop {
        if let Some(exit) = frozen.child.try_wait()? {
            break exit;
        }
        deadline.pause("still running").await?;
    };
    let mut stderr = String::new();
    frozen
        .child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)?;
    assert!(!exit.success(), "a removed member fails: {stderr}");
    assert!(
        stderr.contains("removed from group g") && stderr.contains("session timeout"),
        "the resumed member is told it was removed and why: {stderr}"
    );
    Ok(())
}
