//! Device ids and the `devices/{id}/location` topic that carries positions.

use std::fmt;

use ntex::util::ByteString;

use super::TopicName;

/// The first and last level of a location topic: `devices/{id}/location`.
const LOCATION_PREFIX: &str = "devices/";
const LOCATION_SUFFIX: &str = "/location";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id must be 1 to {} bytes long", DeviceId::MAX_LEN)]
    Length,
    #[error("device id must not contain '/', '+', '#', whitespace or control characters")]
    Characters,
}

/// A device's id: one topic level (no `/`, `+`, `#`), printable, not blank.
/// Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(ByteString);

impl DeviceId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: impl Into<ByteString>) -> Result<Self, DeviceIdError> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(DeviceIdError::Length);
        }
        if s.chars().any(|c| matches!(c, '/' | '+' | '#') || c.is_whitespace() || c.is_control()) {
            return Err(DeviceIdError::Characters);
        }
        Ok(Self(s))
    }

    /// The device whose location `topic` is, if it is `devices/{id}/location`.
    pub fn from_location_topic(topic: &TopicName) -> Option<Self> {
        let id = topic
            .as_str()
            .strip_prefix(LOCATION_PREFIX)?
            .strip_suffix(LOCATION_SUFFIX)
            .filter(|id| !id.contains('/'))?;
        // Share the topic's buffer instead of copying the id.
        let start = LOCATION_PREFIX.len();
        Self::parse(topic.as_bytestring().slice(start..start + id.len())).ok()
    }

    /// `devices/{id}/location`.
    pub fn location_topic(&self) -> String {
        format!("{LOCATION_PREFIX}{}{LOCATION_SUFFIX}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TopicLimits;

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s.to_owned(), TopicLimits::default()).unwrap()
    }

    #[test]
    fn device_ids_are_one_printable_topic_level() {
        assert!(DeviceId::parse("car-7").is_ok());
        assert!(DeviceId::parse("0b1c9a2e-5d1f-4c2e-9a61-7f1d2a3b4c5d").is_ok());
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Length));
        assert_eq!(DeviceId::parse("x".repeat(129)), Err(DeviceIdError::Length));
        for bad in ["a/b", "a+", "#", "a b", "a\tb", "a\u{0}b"] {
            assert_eq!(DeviceId::parse(bad), Err(DeviceIdError::Characters), "{bad:?}");
        }
    }

    #[test]
    fn location_topics_name_their_device() {
        let id = DeviceId::from_location_topic(&topic("devices/car-7/location")).unwrap();
        assert_eq!(id.as_str(), "car-7");
        assert_eq!(id.location_topic(), "devices/car-7/location");
        for other in [
            "devices/car-7/location/x",
            "devices/a/b/location",
            "devices//location",
            "devices/car-7/status",
            "device/car-7/location",
            "x/devices/car-7/location",
        ] {
            assert!(DeviceId::from_location_topic(&topic(other)).is_none(), "{other}");
        }
    }
}
