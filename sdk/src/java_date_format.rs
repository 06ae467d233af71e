//! Java `SimpleDateFormat` patterns, which Kafka Connect's timestamp transforms take, translated
//! to chrono format items.

use chrono::format::{Fixed, Item, StrftimeItems};

/// The pattern letters translated, for error messages.
const SUPPORTED: &str = "y M L d D E u a H h m s SSS SSSSSS SSSSSSSSS z Z X XX XXX";

/// The chrono items of a `SimpleDateFormat` pattern such as `yyyy-MM-dd'T'HH:mm:ss.SSSXXX`:
/// letters are fields, other characters and text in `'…'` are literal, `''` is a quote.
/// `SSS` is milliseconds as in Java; `SSSSSS` and `SSSSSSSSS` are micro- and nanoseconds, which
/// Java would read as a zero-padded count of milliseconds.
pub fn translate(pattern: &str) -> Result<Vec<Item<'static>>, String> {
    let mut items = Vec::new();
    let mut literal = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.next_if_eq(&'\'').is_some() {
                literal.push('\'');
                continue;
            }
            loop {
                match chars.next() {
                    None => return Err(format!("date pattern {pattern:?} has an unclosed quote")),
                    Some('\'') if chars.next_if_eq(&'\'').is_some() => literal.push('\''),
                    Some('\'') => break,
                    Some(quoted) => literal.push(quoted),
                }
            }
        } else if c.is_ascii_alphabetic() {
            let mut count = 1;
            while chars.next_if_eq(&c).is_some() {
                count += 1;
            }
            if !literal.is_empty() {
                items.push(Item::OwnedLiteral(std::mem::take(&mut literal).into()));
            }
            let field = field_items(c, count).ok_or_else(|| {
                let letters: String = std::iter::repeat_n(c, count).collect();
                format!(
                    "date pattern {pattern:?}: `{letters}` is not supported; \
                     the supported fields are {SUPPORTED}"
                )
            })?;
            items.extend(field);
        } else {
            literal.push(c);
        }
    }
    if !literal.is_empty() {
        items.push(Item::OwnedLiteral(literal.into()));
    }
    Ok(items)
}

/// The items of `count` repetitions of the pattern letter `letter`.
fn field_items(letter: char, count: usize) -> Option<Vec<Item<'static>>> {
    let strftime = match (letter, count) {
        ('y', 2) => "%y",
        ('y', _) => "%Y",
        ('M' | 'L', 1) => "%-m",
        ('M' | 'L', 2) => "%m",
        ('M' | 'L', 3) => "%b",
        ('M' | 'L', _) => "%B",
        ('d', 1) => "%-d",
        ('d', _) => "%d",
        ('D', 1) => "%-j",
        ('D', _) => "%j",
        ('E', 1..=3) => "%a",
        ('E', _) => "%A",
        ('u', _) => "%u",
        ('a', _) => "%p",
        ('H', 1) => "%-H",
        ('H', _) => "%H",
        ('h', 1) => "%-I",
        ('h', _) => "%I",
        ('m', 1) => "%-M",
        ('m', _) => "%M",
        ('s', 1) => "%-S",
        ('s', _) => "%S",
        ('S', 3) => "%3f",
        ('S', 6) => "%6f",
        ('S', 9) => "%9f",
        ('z', _) => "%Z",
        ('Z', _) => "%z",
        // Java's `X` prints `Z` for UTC, which no strftime specifier does.
        ('X', 1 | 2) => return Some(vec![Item::Fixed(Fixed::TimezoneOffsetZ)]),
        ('X', 3) => return Some(vec![Item::Fixed(Fixed::TimezoneOffsetColonZ)]),
        _ => return None,
    };
    Some(StrftimeItems::new(strftime).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn format(pattern: &str, millis: i64) -> String {
        let items = translate(pattern).expect("valid pattern");
        DateTime::from_timestamp_millis(millis)
            .expect("in range")
            .format_with_items(items.iter())
            .to_string()
    }

    #[test]
    fn formats_like_simple_date_format_in_utc() {
        let millis = 1_709_294_405_007; // 2024-03-01T12:00:05.007Z, a Friday
        assert_eq!(format("yyyy-MM-dd HH:mm:ss", millis), "2024-03-01 12:00:05");
        assert_eq!(format("yyyyMMdd", millis), "20240301");
        assert_eq!(
            format("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", millis),
            "2024-03-01T12:00:05.007Z"
        );
        assert_eq!(format("d/M/yy h:m a", millis), "1/3/24 12:0 PM");
        assert_eq!(
            format("EEE, d MMM yyyy HH:mm:ss Z", millis),
            "Fri, 1 Mar 2024 12:00:05 +0000"
        );
        assert_eq!(format("EEEE MMMM D u", millis), "Friday March 61 5");
        assert_eq!(
            format("'at' h 'o''clock' 100%", millis),
            "at 12 o'clock 100%"
        );
        assert_eq!(format("ss.SSSSSS", millis), "05.007000");
    }

    #[test]
    fn unsupported_letters_and_unclosed_quotes_are_errors() {
        assert!(
            translate("yyyy-MM-dd kk")
                .expect_err("k")
                .contains("`kk` is not supported")
        );
        assert!(
            translate("ss.S")
                .expect_err("S")
                .contains("`S` is not supported")
        );
        assert!(
            translate("'open")
                .expect_err("quote")
                .contains("unclosed quote")
        );
    }
}
