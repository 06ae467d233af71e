//! A source that misbehaves on purpose, to test that the worker contains it. `mode` picks the
//! fault: `trap` (panics in its first poll), `connect` (connects to `addr` in each poll),
//! `read` (reads the file `path` in each poll), `plan-grant` (its plan hands each task a
//! `wasi.dir` grant of its own), `reject-config` (fails init), `ahead` (polls ahead of the
//! log and fails unless each poll is acknowledged once, in order). A poll that succeeds emits
//! one record whose value says what it did.

use appliance_sdk::{Config, Record, Source, SourceRecord, source};

#[source]
#[derive(Debug)]
pub struct FaultSource {
    mode: Mode,
    polls: u64,
    /// The last poll acknowledged (mode `ahead`).
    acknowledged: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Trap,
    Connect(String),
    Read(String),
    PlanGrant,
    Ahead,
}

impl Source for FaultSource {
    fn plan(config: Config, max_tasks: u32) -> Result<Vec<Config>, String> {
        let _ = max_tasks;
        if config.get("mode") == Some("plan-grant") {
            let mut pairs = config.into_pairs();
            pairs.push(("wasi.dir".to_owned(), "/".to_owned()));
            return Ok(vec![Config::new(pairs)]);
        }
        Ok(vec![config])
    }

    fn init(config: Config, _resume_after: Option<Vec<u8>>) -> Result<Self, String> {
        let mode = match config.require(
            "mode",
            "trap, connect, read, plan-grant, ahead or reject-config",
        )? {
            "trap" => Mode::Trap,
            "connect" => Mode::Connect(
                config
                    .require("addr", "HOST:PORT to connect to")?
                    .to_owned(),
            ),
            "read" => Mode::Read(config.require("path", "the file to read")?.to_owned()),
            "plan-grant" => Mode::PlanGrant,
            "ahead" => Mode::Ahead,
            "reject-config" => return Err("this configuration is rejected on purpose".into()),
            other => return Err(format!("unknown mode {other:?}")),
        };
        Ok(Self {
            mode,
            polls: 0,
            acknowledged: 0,
        })
    }

    fn poll(&mut self, _max: u32) -> Result<Vec<SourceRecord>, String> {
        let done = match &self.mode {
            Mode::Trap => panic!("fault-source: trapping on purpose"),
            Mode::Connect(addr) => std::net::TcpStream::connect(addr.as_str())
                .map(|_| format!("connected to {addr}"))
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?,
            Mode::Read(path) => std::fs::read(path)
                .map(|bytes| format!("read {} bytes of {path}", bytes.len()))
                .map_err(|e| format!("cannot read {path}: {e}"))?,
            Mode::PlanGrant => "planned a grant".to_owned(),
            Mode::Ahead => format!(
                "poll {} after acknowledgement {}",
                self.polls + 1,
                self.acknowledged
            ),
        };
        self.polls += 1;
        Ok(vec![SourceRecord {
            record: Record::from_value(done.into_bytes()),
            position: self.polls.to_be_bytes().to_vec(),
        }])
    }

    fn polls_ahead(&self) -> bool {
        self.mode == Mode::Ahead
    }

    fn acknowledge(&mut self, position: Vec<u8>) -> Result<(), String> {
        let poll = <[u8; 8]>::try_from(position.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| format!("acknowledged a position of {} bytes", position.len()))?;
        if poll != self.acknowledged + 1 || poll > self.polls {
            return Err(format!(
                "acknowledged poll {poll} after {} of {} polls",
                self.acknowledged, self.polls
            ));
        }
        self.acknowledged = poll;
        Ok(())
    }
}
