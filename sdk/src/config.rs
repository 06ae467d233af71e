//! An instance's configuration: the `key=value` pairs an operator gave a plugin.

use std::str::FromStr;

/// The configuration of one plugin instance. Keys may repeat: a list value is either one
/// value separated by `|` or the key given several times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.pairs
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error saying it is missing and what it is for.
    pub fn require(&self, key: &str, what: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing required key `{key}` ({what})"))
    }

    /// Every value of `key`: repeated keys and `|`-separated values, empty items dropped.
    pub fn list(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split('|'))
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .collect()
    }

    /// `key` parsed as `T`, or `default` when absent.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| format!("key `{key}`: cannot use {raw:?}: {e}")),
        }
    }

    /// `key` as a boolean (`true`/`false` in any case, as Kafka reads them), or `default` when
    /// absent.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key).map(str::trim) {
            None => Ok(default),
            Some(raw) if raw.eq_ignore_ascii_case("true") => Ok(true),
            Some(raw) if raw.eq_ignore_ascii_case("false") => Ok(false),
            Some(raw) => Err(format!("key `{key}` is true or false, not {raw:?}")),
        }
    }

    /// The keys starting with `prefix`, without it, with their values, in order
    /// (`header.Accept=text/plain` with prefix `header.` gives `("Accept", "text/plain")`).
    pub fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix(prefix)?.to_owned(), value.clone())))
            .collect()
    }

    /// Rejects keys outside `known`, naming them and the keys this plugin takes. An entry
    /// ending in `.*` (`header.*`) takes every key that starts with what precedes the `*`.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        let takes = |key: &str| {
            known.iter().any(|known| match known.strip_suffix('*') {
                Some(prefix) if known.ends_with(".*") => key.starts_with(prefix),
                _ => *known == key,
            })
        };
        let unknown: Vec<&str> = self
            .pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !takes(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "unknown key(s) {}; this plugin takes: {}",
                unknown.join(", "),
                known.join(", ")
            ))
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_come_from_pipes_and_repeated_keys() {
        let config: Config = [("fields", "a|b"), ("fields", "c"), ("x", "1")]
            .into_iter()
            .collect();
        assert_eq!(config.list("fields"), ["a", "b", "c"]);
        assert_eq!(config.get("x"), Some("1"));
        assert!(
            config
                .only(&["fields"])
                .unwrap_err()
                .contains("unknown key(s) x")
        );
        assert!(config.parse_or::<u32>("fields", 0).is_err());
    }

    #[test]
    fn a_known_prefix_takes_every_key_under_it() {
        let config: Config = [("url", "u"), ("header.Accept", "a"), ("header.X-Id", "7")]
            .into_iter()
            .collect();
        assert!(config.only(&["url", "header.*"]).is_ok());
        assert!(config.only(&["url"]).is_err());
        assert!(
            config.only(&["url", "head*"]).is_err(),
            "only `.*` is a prefix"
        );
        assert_eq!(
            config.prefixed("header."),
            [
                ("Accept".to_owned(), "a".to_owned()),
                ("X-Id".to_owned(), "7".to_owned())
            ]
        );
    }
}
