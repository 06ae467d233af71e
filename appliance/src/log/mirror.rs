//! Names of mirror topics: `<owner>.<topic>`, where the owner is the edge whose topic a hub
//! mirrors (its id), or `hub` for the mirrors an edge keeps of hub topics. Links make these
//! names, the log keeps them, queries read the edge out of them: all through [`MirrorName`].

use std::fmt;

use super::{LogError, TopicName};

/// The owner of an edge's mirrors of hub topics; no edge may be called this.
pub const HUB_MIRROR_PREFIX: &str = "hub";

/// Whose topics a side's mirrors hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorOwner {
    /// An edge's, on a hub (the edge's id, a DNS label without dots).
    Edge(String),
    /// The hub's, on an edge.
    Hub,
}

impl MirrorOwner {
    fn as_str(&self) -> &str {
        match self {
            Self::Edge(edge) => edge,
            Self::Hub => HUB_MIRROR_PREFIX,
        }
    }
}

impl fmt::Display for MirrorOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `<owner>.<origin topic>`: the name of a mirror topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorName {
    topic: TopicName,
    owner: MirrorOwner,
}

impl MirrorName {
    /// The mirror `owner` keeps of its topic `origin`.
    pub fn new(owner: &MirrorOwner, origin: &str) -> Result<Self, LogError> {
        Ok(Self {
            topic: TopicName::new(format!("{owner}.{origin}"))?,
            owner: owner.clone(),
        })
    }

    /// A mirror topic's name read back: the owner is the part before the first dot.
    pub fn parse(topic: &TopicName) -> Option<Self> {
        let (owner, origin) = topic.as_str().split_once('.')?;
        if owner.is_empty() || origin.is_empty() {
            return None;
        }
        let owner = match owner {
            HUB_MIRROR_PREFIX => MirrorOwner::Hub,
            edge => MirrorOwner::Edge(edge.to_owned()),
        };
        Some(Self {
            topic: topic.clone(),
            owner,
        })
    }

    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    pub fn owner(&self) -> &MirrorOwner {
        &self.owner
    }

    /// The topic's name where it originates.
    pub fn origin(&self) -> &str {
        &self.topic.as_str()[self.owner.as_str().len() + 1..]
    }

    /// The edge whose topic this mirrors, on a hub.
    pub fn edge(&self) -> Option<&str> {
        match &self.owner {
            MirrorOwner::Edge(edge) => Some(edge),
            MirrorOwner::Hub => None,
        }
    }
}

impl fmt::Display for MirrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.topic.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_name_is_its_owner_and_origin() {
        let edge = MirrorOwner::Edge("plant-7".into());
        let name = MirrorName::new(&edge, "sensors.line-1").unwrap();
        assert_eq!(name.topic().as_str(), "plant-7.sensors.line-1");
        assert_eq!(name.origin(), "sensors.line-1");
        assert_eq!(name.edge(), Some("plant-7"));
        assert_eq!(MirrorName::parse(name.topic()), Some(name));
        let hub = MirrorName::new(&MirrorOwner::Hub, "commands").unwrap();
        assert_eq!(hub.to_string(), "hub.commands");
        assert_eq!(hub.edge(), None);
        assert_eq!(
            MirrorName::parse(hub.topic()).unwrap().owner(),
            &MirrorOwner::Hub
        );
        assert!(MirrorName::parse(&TopicName::new("plain").unwrap()).is_none());
        assert!(MirrorName::parse(&TopicName::new("edge.").unwrap()).is_none());
        assert!(MirrorName::new(&edge, "not valid").is_err());
    }
}
