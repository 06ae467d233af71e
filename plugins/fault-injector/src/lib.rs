//! A transform that misbehaves on purpose, to test that the host contains it. `mode` picks
//! the fault: `trap` (panics on the first batch), `loop` (never returns), `allocate` (grows its
//! memory until something stops it), `reject-config` (fails init), `poison` (an error for
//! each record whose value contains `poison`, every other record passes), `trap-until` (traps
//! like `trap` until the wall clock reaches `until`, epoch milliseconds, then passes records:
//! a transient fault that outlives the instance, as a restart makes a new one), `garbage`
//! (hands the host bytes that are not an encoded batch as its output).

use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};

#[transform]
#[derive(Debug)]
pub struct FaultInjector {
    mode: Mode,
    hoard: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Trap,
    Loop,
    Sleep,
    Allocate,
    Flood,
    Poison,
    Connect(String),
    TrapUntil(u128),
    Garbage,
}

impl Transform for FaultInjector {
    fn process(
        &mut self,
        info: &BatchInfo,
        records: Vec<Record>,
    ) -> Result<Vec<Record>, appliance_sdk::RecordError> {
        if self.mode == Mode::Garbage {
            // The import the SDK's encoded export writes its output to, called directly.
            #[cfg(target_family = "wasm")]
            __appliance_transform_export_FaultInjector::appliance::plugin::encoded_output::emit(
                b"not an encoded batch",
            );
        }
        if self.mode != Mode::Flood {
            return appliance_sdk::apply_each(self, info, records);
        }
        let offset = records.first().map_or(0, |r| r.offset);
        Ok((0..80)
            .map(|_| {
                let mut record = Record::from_value(vec![b'x'; 1 << 20]);
                record.offset = offset;
                record
            })
            .collect())
    }

    fn init(config: Config) -> Result<Self, String> {
        config.only(&["mode", "addr", "until"])?;
        let mode = match config.require(
            "mode",
            "trap, trap-until, loop, sleep, allocate, flood, connect, reject-config or poison",
        )? {
            "trap" => Mode::Trap,
            "loop" => Mode::Loop,
            "sleep" => Mode::Sleep,
            "flood" => Mode::Flood,
            "connect" => Mode::Connect(
                config
                    .require("addr", "HOST:PORT to connect to")?
                    .to_owned(),
            ),
            "allocate" => Mode::Allocate,
            "trap-until" => Mode::TrapUntil(
                config
                    .require("until", "epoch milliseconds")?
                    .parse()
                    .map_err(|e| format!("until: {e}"))?,
            ),
            "poison" => Mode::Poison,
            "garbage" => Mode::Garbage,
            "reject-config" => return Err("this configuration is rejected on purpose".into()),
            other => return Err(format!("unknown mode {other:?}")),
        };
        Ok(Self {
            mode,
            hoard: Vec::new(),
        })
    }

    fn apply(&mut self, _: &BatchInfo, record: Record) -> Result<Option<Record>, String> {
        match &self.mode {
            Mode::Connect(addr) => match std::net::TcpStream::connect(addr.as_str()) {
                Ok(_) => Ok(Some(record)),
                Err(e) => Err(format!("cannot connect to {addr}: {e}")),
            },
            Mode::Trap => panic!("fault-injector: trapping on purpose"),
            Mode::TrapUntil(until) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis());
                if now < *until {
                    panic!(
                        "fault-injector: trapping on purpose for another {} ms",
                        until - now
                    );
                }
                Ok(Some(record))
            }
            Mode::Loop => loop {
                std::hint::spin_loop();
            },
            Mode::Sleep => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(Some(record))
            }
            Mode::Flood | Mode::Garbage => Ok(Some(record)),
            Mode::Allocate => loop {
                self.hoard.push(vec![1; 1 << 20]);
            },
            Mode::Poison => {
                let poisoned = record
                    .value
                    .as_deref()
                    .is_some_and(|v| v.windows(6).any(|w| w == b"poison"));
                if poisoned {
                    Err("the value contains `poison`".into())
                } else {
                    Ok(Some(record))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_mode_rejects_only_poisoned_records() {
        let mut plugin = FaultInjector::init([("mode", "poison")].into_iter().collect()).unwrap();
        let info = BatchInfo::new("t", 0);
        assert!(
            plugin
                .apply(&info, Record::from_value("ok"))
                .unwrap()
                .is_some()
        );
        assert!(
            plugin
                .apply(&info, Record::from_value("a poison b"))
                .is_err()
        );
        assert!(FaultInjector::init([("mode", "reject-config")].into_iter().collect()).is_err());
    }
}
