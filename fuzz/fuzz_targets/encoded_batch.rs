//! An encoded batch as the host reads a plugin's output (`encoded-output.emit`) and the Rust
//! SDK reads the host's input: any bytes must decode or give an error, never panic, and never
//! allocate beyond what the bytes could hold (libFuzzer's `-malloc_limit_mb` catches one).
//! What decodes must encode back to the same bytes.

#![no_main]

use appliance_sdk::encoded::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = decode(data) {
        let again = encode(records.into_iter()).expect("decoded records encode");
        assert_eq!(again, data, "an encoding is canonical");
    }
});
