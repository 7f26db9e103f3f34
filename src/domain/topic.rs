//! Topic names and topic filters (MQTT 5.0 §4.7), parsed once at the edge.

use std::fmt;

use ntex::util::ByteString;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("topic has more than {max} levels")]
    TooDeep { max: usize },
    #[error("topic name contains a wildcard ('+' or '#')")]
    WildcardInName,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("'#' must be the last level and stand alone")]
    MisplacedMultiLevel,
    #[error("'+' must stand alone in its level")]
    MisplacedSingleLevel,
    #[error("malformed shared subscription; expected $share/{{group}}/{{filter}}")]
    BadShare,
}

/// Bounds applied when parsing, from the broker limits.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_len: usize,
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self { max_len: 65_535, max_levels: 128 }
    }
}

fn check_common(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > limits.max_len {
        return Err(TopicError::TooLong { max: limits.max_len });
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    if s.split('/').count() > limits.max_levels {
        return Err(TopicError::TooDeep { max: limits.max_levels });
    }
    Ok(())
}

/// A topic a message is published to: no wildcards, not empty.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicName(ByteString);

impl TopicName {
    pub fn parse(s: impl Into<ByteString>, limits: TopicLimits) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s, limits)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytestring(&self) -> &ByteString {
        &self.0
    }

    /// The same name in storage of its own (see [`Message::compacted`]).
    ///
    /// [`Message::compacted`]: super::Message::compacted
    pub fn compacted(&self) -> Self {
        Self(ByteString::from(self.as_str()))
    }

    pub fn into_bytestring(self) -> ByteString {
        self.0
    }

    /// `$SYS` topics are published by the broker alone; clients may not.
    /// (Every `$` topic escapes first-level wildcards [MQTT-4.7.2-1].)
    pub fn is_broker_reserved(&self) -> bool {
        in_tree(&self.0, "$SYS")
    }

    /// Topics only the server writes: `$SYS/#` and the map (`map/#`), which
    /// phones read as the truth. No client publishes, retains or leaves a
    /// will there, admins included.
    pub fn is_server_owned(&self) -> bool {
        self.is_broker_reserved() || in_tree(&self.0, MAP_ROOT)
    }
}

/// The first level of the map's topics (`map/snapshot`, `map/version`, ...).
pub const MAP_ROOT: &str = "map";

/// Is `topic` `root` itself or below it?
fn in_tree(topic: &str, root: &str) -> bool {
    topic.strip_prefix(root).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A subscription filter, wildcards allowed, without any `$share` prefix.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(ByteString);

impl TopicFilter {
    pub fn parse(s: impl Into<ByteString>, limits: TopicLimits) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s, limits)?;
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(TopicError::MisplacedMultiLevel);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::MisplacedSingleLevel);
            }
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    pub fn has_wildcards(&self) -> bool {
        self.0.contains(['+', '#'])
    }

    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(&self.0, topic.as_str())
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A subscription as written by the client: a plain filter or a shared one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedFilter {
    /// `Some(group)` for `$share/{group}/{filter}`.
    pub group: Option<ByteString>,
    pub filter: TopicFilter,
}

impl SharedFilter {
    pub fn parse(s: impl Into<ByteString>, limits: TopicLimits) -> Result<Self, TopicError> {
        let s: ByteString = s.into();
        if let Some(rest) = s.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            let filter = TopicFilter::parse(filter.to_owned(), limits)?;
            Ok(Self { group: Some(ByteString::from(group.to_owned())), filter })
        } else {
            Ok(Self { group: None, filter: TopicFilter::parse(s, limits)? })
        }
    }

    /// The text the client subscribed with (the key of the subscription).
    pub fn to_wire(&self) -> String {
        match &self.group {
            Some(g) => format!("$share/{g}/{}", self.filter),
            None => self.filter.to_string(),
        }
    }
}

/// Does `filter` match `topic`? Both are assumed valid.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // Wildcards at the first level do not match `$` topics [MQTT-4.7.2-1].
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<TopicName, TopicError> {
        TopicName::parse(s.to_owned(), TopicLimits::default())
    }

    fn filter(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::parse(s.to_owned(), TopicLimits::default())
    }

    #[test]
    fn topic_names_reject_wildcards_empty_and_nul() {
        assert!(name("a/b/c").is_ok());
        assert!(name("/").is_ok());
        assert_eq!(name(""), Err(TopicError::Empty));
        assert_eq!(name("a/+/c"), Err(TopicError::WildcardInName));
        assert_eq!(name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(name("a\0b"), Err(TopicError::Nul));
    }

    #[test]
    fn limits_bound_length_and_depth() {
        let limits = TopicLimits { max_len: 8, max_levels: 3 };
        assert!(TopicName::parse("a/b/c", limits).is_ok());
        assert_eq!(TopicName::parse("a/b/c/d", limits), Err(TopicError::TooDeep { max: 3 }));
        assert_eq!(TopicName::parse("abcdefghi", limits), Err(TopicError::TooLong { max: 8 }));
    }

    #[test]
    fn filters_place_wildcards_correctly() {
        for ok in ["#", "+", "a/+/c", "a/#", "+/+", "/+", "sport/tennis/#"] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(filter("a/#/c"), Err(TopicError::MisplacedMultiLevel));
        assert_eq!(filter("a#"), Err(TopicError::MisplacedMultiLevel));
        assert_eq!(filter("a+/b"), Err(TopicError::MisplacedSingleLevel));
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(filter_matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(filter_matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!filter_matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("#", "a/b"));
    }

    #[test]
    fn only_sys_topics_are_reserved_for_the_broker() {
        assert!(name("$SYS/broker/uptime").unwrap().is_broker_reserved());
        assert!(name("$SYS").unwrap().is_broker_reserved());
        assert!(!name("$SYSTEM/x").unwrap().is_broker_reserved());
        assert!(!name("$TopicA/B").unwrap().is_broker_reserved());
    }

    #[test]
    fn the_map_and_sys_are_server_owned() {
        for owned in ["map", "map/snapshot", "map/snapshot.gz", "map/x/y", "$SYS", "$SYS/a"] {
            assert!(name(owned).unwrap().is_server_owned(), "{owned}");
        }
        for free in ["maps", "mapx/snapshot", "devices/map/x", "a/map", "$SYSTEM"] {
            assert!(!name(free).unwrap().is_server_owned(), "{free}");
        }
    }

    #[test]
    fn wildcards_at_the_first_level_skip_dollar_topics() {
        assert!(!filter_matches("#", "$SYS/broker/uptime"));
        assert!(!filter_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/broker/+", "$SYS/broker/uptime"));
    }

    #[test]
    fn shared_subscriptions_parse_group_and_filter() {
        let s = SharedFilter::parse("$share/g1/cars/+/location", TopicLimits::default()).unwrap();
        assert_eq!(s.group.as_deref(), Some("g1"));
        assert_eq!(s.filter.as_str(), "cars/+/location");
        assert_eq!(s.to_wire(), "$share/g1/cars/+/location");
        assert_eq!(
            SharedFilter::parse("$share/g1", TopicLimits::default()),
            Err(TopicError::BadShare)
        );
        assert_eq!(
            SharedFilter::parse("$share//a", TopicLimits::default()),
            Err(TopicError::BadShare)
        );
        assert!(SharedFilter::parse("a/b", TopicLimits::default()).unwrap().group.is_none());
    }
}
