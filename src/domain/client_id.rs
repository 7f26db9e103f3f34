use std::fmt;

use ntex::util::ByteString;

/// An MQTT client identifier. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(ByteString);

impl ClientId {
    pub fn new(id: impl Into<ByteString>) -> Self {
        Self(id.into())
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
