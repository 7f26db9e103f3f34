use std::fmt;

use ntex::util::ByteString;

/// An MQTT client identifier. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(ByteString);

/// Prefixes of the client ids the server gives its own sessions (SSE
/// streams, REST publishes). An MQTT client may not use them.
pub const INTERNAL_PREFIXES: [&str; 2] = ["sse:", "rest:"];

impl ClientId {
    pub fn new(id: impl Into<ByteString>) -> Self {
        Self(id.into())
    }

    /// Whether this is one of the server's own ids ([`INTERNAL_PREFIXES`]).
    pub fn is_internal(&self) -> bool {
        INTERNAL_PREFIXES.iter().any(|p| self.0.starts_with(p))
    }

    /// An SSE stream's session.
    pub fn is_sse(&self) -> bool {
        self.0.starts_with(INTERNAL_PREFIXES[0])
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytestring(&self) -> &ByteString {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        Self(ByteString::from(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_prefixes_are_internal() {
        for id in ["sse:1", "sse:", "rest:u1", "rest:anonymous"] {
            assert!(ClientId::from(id).is_internal(), "{id}");
        }
        for id in ["car-1", "sse", "Sse:1", "x-sse:1", "restless"] {
            assert!(!ClientId::from(id).is_internal(), "{id}");
        }
    }
}
