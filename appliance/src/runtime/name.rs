//! Names and ids of components.

use std::fmt;

/// The name of a pipeline, connector or link: 1 to 128 of `a-z A-Z 0-9 . _ -`. Names appear
/// in metadata keys, metric labels and retention-hold owners, so nothing else is allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceName(String);

impl ResourceName {
    /// What a valid name is, for error messages.
    pub const RULE: &'static str = "use 1 to 128 of a-z, A-Z, 0-9, '.', '_' and '-'";
    const MAX_LEN: usize = 128;

    /// The name, if it follows [`Self::RULE`].
    pub fn new(name: &str) -> Option<Self> {
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        valid.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A practically unique id: the name and the current time, hashed with a per-process random
/// key. Tags carry it, so output of an earlier pipeline or connector of the same name is
/// never taken for this one's.
pub fn unique_id(name: &str) -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((name, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        for good in ["a", "plant-7.sensors_v2", &"x".repeat(128)] {
            assert_eq!(ResourceName::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "a b", "a/b", "ä", "a\0", &"x".repeat(129)] {
            assert!(ResourceName::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn ids_of_one_name_differ() {
        assert_ne!(unique_id("p"), unique_id("p"));
    }
}
