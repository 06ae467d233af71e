//! The SDK's JSON scanner (`json::lookup`, `json::field_spans`), which filters, routers and
//! in-place rewrites run on every record's bytes: any bytes give an answer or an error, never
//! a panic or unbounded recursion, and it agrees with serde_json. What serde_json parses, it
//! reads; where it reads a whole document, serde_json's skipping reader (which, like it, checks
//! the grammar but not number ranges or surrogate pairs) reads it too. The first byte picks
//! the path.

#![no_main]

use appliance_sdk::json::{field_spans, lookup, serde_json};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, document)) = data.split_first() else {
        return;
    };
    let path = ["a", "a.b", "b.a.c"][usize::from(pick) % 3];
    let looked = lookup(document, path);
    let spans = field_spans(document, &[path]);
    if let Ok(parsed) = serde_json::from_slice::<Value>(document) {
        assert!(looked.is_ok(), "{looked:?}");
        assert_eq!(spans.is_ok(), parsed.is_object(), "{spans:?}");
    }
    if matches!(looked, Ok(None)) || spans.is_ok() {
        let skipped = serde_json::from_slice::<serde::de::IgnoredAny>(document);
        assert!(skipped.is_ok(), "{skipped:?}");
    }
    for (_, span) in spans.unwrap_or_default() {
        let field = serde_json::from_slice::<serde::de::IgnoredAny>(&document[span]);
        assert!(field.is_ok(), "a span holds one value: {field:?}");
    }
});
