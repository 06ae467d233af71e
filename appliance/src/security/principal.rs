//! Who is calling: `User:NAME` (a person or program, from a bearer token) or `Edge:ID` (a
//! linked edge, from its certificate).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SecurityError;

/// Longest name of a principal.
const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PrincipalKind {
    User,
    Edge,
}

/// An authenticated identity, written `User:alice` or `Edge:plant-7`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Principal {
    kind: PrincipalKind,
    name: String,
}

impl Principal {
    /// `User:NAME`, its name checked.
    pub fn user(name: &str) -> Result<Self, SecurityError> {
        Self::new(PrincipalKind::User, name)
    }

    pub fn new(kind: PrincipalKind, name: &str) -> Result<Self, SecurityError> {
        let invalid = |reason: &str| SecurityError::InvalidPrincipal {
            principal: name.to_owned(),
            reason: reason.to_owned(),
        };
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(invalid("a name has 1 to 128 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        {
            return Err(invalid(
                "a name has only ASCII letters, digits and the characters . _ - @",
            ));
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }

    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            PrincipalKind::User => "User",
            PrincipalKind::Edge => "Edge",
        };
        write!(f, "{kind}:{}", self.name)
    }
}

impl FromStr for Principal {
    type Err = SecurityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, name) = match text.split_once(':') {
            Some(("User", name)) => (PrincipalKind::User, name),
            Some(("Edge", name)) => (PrincipalKind::Edge, name),
            _ => {
                return Err(SecurityError::InvalidPrincipal {
                    principal: text.to_owned(),
                    reason: "a principal is written User:NAME or Edge:ID".into(),
                });
            }
        };
        Self::new(kind, name)
    }
}

impl TryFrom<String> for Principal {
    type Error = SecurityError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Principal> for String {
    fn from(principal: Principal) -> Self {
        principal.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_through_text() {
        for text in ["User:alice", "Edge:plant-7", "User:ci.bot@example.org"] {
            let principal: Principal = text.parse().unwrap();
            assert_eq!(principal.to_string(), text);
        }
    }

    #[test]
    fn malformed_principals_are_refused() {
        for text in [
            "alice",
            "Group:x",
            "User:",
            "User:a b",
            "User:a:b",
            "user:alice",
        ] {
            assert!(text.parse::<Principal>().is_err(), "{text}");
        }
    }
}
