//! JSON text without the whitespace between its tokens.

/// `json`, which must be valid JSON text (as a parser's raw value is), without the whitespace
/// between tokens: one line, and otherwise byte for byte what it was (key order, number
/// spelling, string escapes), which re-serializing a parsed value would not keep.
pub fn compact_json(json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json.as_bytes() {
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = byte == b'"';
            out.push(byte);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_whitespace_between_tokens_only() {
        let pretty = "{\n  \"z\": 1.50,\n  \"a\": [ 1 , 2 ],\n  \"s\": \"a b \\\" c\\\\\",\n  \"n\": 123456789012345678901234567890\n}";
        assert_eq!(
            compact_json(pretty),
            br#"{"z":1.50,"a":[1,2],"s":"a b \" c\\","n":123456789012345678901234567890}"#
        );
        assert_eq!(compact_json(" \"\\\\\" "), br#""\\""#);
        assert_eq!(compact_json("[ \"x\" , \" y \" ]"), br#"["x"," y "]"#);
    }
}
