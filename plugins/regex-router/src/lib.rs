//! `regex-router`: re-routes records whose topic matches a regular expression to a topic built
//! from the match, as Kafka Connect's `RegexRouter` does (e.g. `regex=(.*)-raw`,
//! `replacement=$1-clean`).
//!
//! Config: `regex` (required; it must match the whole topic, which is where an earlier transform
//! re-routed the record, else the source topic) and `replacement` (required), in Java's syntax:
//! `$1` or `${name}` insert a group (an unmatched one inserts nothing), `\` makes the next
//! character literal (`\$`). As in Java, `$12` is group 12 if the regex has that many groups,
//! else group 1 and a `2`. Records whose topic does not match keep it. Tombstones are routed
//! like any record.

use appliance_sdk::{BatchInfo, Config, Record, Transform, transform};
use regex_lite::Regex;

#[transform]
#[derive(Debug)]
pub struct RegexRouter {
    /// The pattern anchored at both ends: does the whole topic match?
    whole: Regex,
    /// The pattern as given: the first match it finds is what gets replaced.
    search: Regex,
    replacement: Vec<Piece>,
}

/// A part of the replacement: text to copy, or a capture group of the match to insert.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Group(usize),
}

const KNOWN_KEYS: &[&str] = &["regex", "replacement"];

impl Transform for RegexRouter {
    fn init(config: Config) -> Result<Self, String> {
        config.only(KNOWN_KEYS)?;
        let pattern = config.require("regex", "the regular expression a topic must match")?;
        let invalid = |e: regex_lite::Error| format!("`regex` is not a regular expression: {e}");
        // Compiled alone first: wrapped unchecked, `a)|(b` would turn into a different regex.
        let search = Regex::new(pattern).map_err(invalid)?;
        let whole = Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)?;
        let replacement =
            config.require("replacement", "the topic to route matching records to")?;
        let replacement =
            parse_replacement(replacement, &search).map_err(|e| format!("`replacement`: {e}"))?;
        Ok(Self {
            whole,
            search,
            replacement,
        })
    }

    fn apply(&mut self, info: &BatchInfo, mut record: Record) -> Result<Option<Record>, String> {
        let topic = record.topic.as_deref().unwrap_or(&info.topic);
        // As Kafka: when the whole topic matches, replace the first match a search finds.
        if self.whole.is_match(topic)
            && let Some(captures) = self.search.captures(topic)
        {
            let found = captures.get(0).map_or(0..0, |m| m.range());
            let mut routed = topic[..found.start].to_owned();
            for piece in &self.replacement {
                match piece {
                    Piece::Text(text) => routed.push_str(text),
                    Piece::Group(index) => {
                        routed.push_str(captures.get(*index).map_or("", |group| group.as_str()));
                    }
                }
            }
            routed.push_str(&topic[found.end..]);
            record.topic = Some(routed);
        }
        Ok(Some(record))
    }
}

/// Splits a Java `Matcher` replacement into pieces, resolving group references against
/// `regex` as `Matcher.appendReplacement` does.
fn parse_replacement(replacement: &str, regex: &Regex) -> Result<Vec<Piece>, String> {
    let groups = regex.captures_len() - 1;
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(
                chars
                    .next()
                    .ok_or("a `\\` at the end escapes nothing; write `\\\\` for a backslash")?,
            ),
            '$' => {
                let group = if chars.next_if_eq(&'{').is_some() {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err("a `${` is missing its `}`".to_owned()),
                        }
                    }
                    regex
                        .capture_names()
                        .position(|group_name| group_name == Some(name.as_str()))
                        .ok_or_else(|| format!("`regex` has no group named {name:?}"))?
                } else {
                    let mut group = chars
                        .next()
                        .and_then(|digit| digit.to_digit(10))
                        .ok_or("`$` must be followed by a group number or {name}; write `\\$` for a dollar")?
                        as usize;
                    if group > groups {
                        return Err(format!("`regex` has no group {group}"));
                    }
                    while let Some(longer) = chars
                        .peek()
                        .and_then(|digit| digit.to_digit(10))
                        .map(|digit| group * 10 + digit as usize)
                        .filter(|&longer| longer <= groups)
                    {
                        group = longer;
                        chars.next();
                    }
                    group
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Group(group));
            }
            other => text.push(other),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(config: &[(&str, &str)], source: &str, rerouted: Option<&str>) -> Option<String> {
        let mut router = RegexRouter::init(config.iter().copied().collect()).expect("valid config");
        let info = BatchInfo {
            topic: source.into(),
            partition: 0,
        };
        let mut record = Record::from_value("{}");
        record.topic = rerouted.map(str::to_owned);
        router
            .apply(&info, record)
            .expect("applies")
            .expect("kept")
            .topic
    }

    #[test]
    fn a_whole_match_routes_to_the_replacement() {
        let config = [("regex", "(.*)-raw"), ("replacement", "$1-clean")];
        assert_eq!(
            route(&config, "orders-raw", None),
            Some("orders-clean".to_owned())
        );
        assert_eq!(
            route(&config, "orders-raw-v2", None),
            None,
            "not a whole match"
        );
        assert_eq!(
            route(&config, "other", Some("sensors-raw")),
            Some("sensors-clean".to_owned()),
            "the re-routed topic is the one matched"
        );
        assert_eq!(
            route(&[("regex", "a|ab"), ("replacement", "x")], "ab", None),
            Some("xb".to_owned()),
            "Java's replaceFirst: the first match a search finds is replaced"
        );
        assert_eq!(
            route(
                &[("regex", "(.*?)-raw"), ("replacement", "$1-clean")],
                "a-raw-raw",
                None
            ),
            Some("a-clean-raw".to_owned())
        );
        assert!(
            RegexRouter::init(
                [("regex", "logs)|(metrics"), ("replacement", "x")]
                    .into_iter()
                    .collect()
            )
            .is_err(),
            "a pattern that is only valid once wrapped is refused"
        );
    }

    #[test]
    fn replacements_follow_java_syntax() {
        let config = [
            ("regex", r"(?P<site>\w+)\.(\w+)(-old)?"),
            ("replacement", r"${site}_$2$3\$$10"),
        ];
        assert_eq!(
            route(&config, "eu.orders", None),
            Some("eu_orders$eu0".to_owned())
        );
    }

    #[test]
    fn group_numbers_take_as_many_digits_as_there_are_groups() {
        let regex = Regex::new("(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)").expect("regex");
        assert_eq!(
            parse_replacement("$12$13", &regex),
            Ok(vec![
                Piece::Group(12),
                Piece::Group(1),
                Piece::Text("3".into())
            ])
        );
    }

    #[test]
    fn bad_config_is_rejected() {
        let rejected = |config: &[(&str, &str)]| {
            RegexRouter::init(config.iter().copied().collect()).expect_err("rejected")
        };
        assert!(rejected(&[("replacement", "x")]).contains("missing required key `regex`"));
        assert!(rejected(&[("regex", "x")]).contains("missing required key `replacement`"));
        assert!(
            rejected(&[("regex", "(x"), ("replacement", "y")]).contains("not a regular expression")
        );
        assert!(rejected(&[("regex", "(x)"), ("replacement", "$2")]).contains("no group 2"));
        assert!(
            rejected(&[("regex", "(x)"), ("replacement", "${n}")]).contains("no group named \"n\"")
        );
        assert!(rejected(&[("regex", "x"), ("replacement", "$")]).contains("`\\$`"));
        assert!(
            rejected(&[("regex", "(?P<n>x)"), ("replacement", "${n")]).contains("missing its `}`")
        );
        assert!(rejected(&[("regex", "x"), ("replacement", "a\\")]).contains("escapes nothing"));
    }
}
