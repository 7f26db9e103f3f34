//! Who may publish to which topic and subscribe to which filter. Pure: the
//! [`Identity`] carries everything a decision needs (role, device id, owned
//! devices), so the same answer holds over MQTT and REST.
//!
//! Built-in rules:
//! - nobody publishes to `$SYS/#` or `map/#`: the server writes those;
//! - an admin may do everything else, and read `$SYS/#`;
//! - a device publishes and subscribes under `devices/{its id}/#` and
//!   `owntracks/{its id}/#` (an OwnTracks phone's own tree) and subscribes
//!   to `map/#`;
//! - a user reads `map/#` and reads and writes `devices/{id}/#` and
//!   `owntracks/{id}/#` of each device it owns;
//! - an anonymous client (only when anonymous access is allowed) may do
//!   everything (`all`) or only read `map/#` (`read_map`).
//!
//! Extra rules from the config (`[[auth.acl]]`) grant more (`effect =
//! "allow"`, the default) or refuse (`effect = "deny"`), per role. Deny rules
//! win: a publish to a topic a deny rule matches, or a subscription whose
//! filter can match a topic a deny rule matches, is refused whatever built-in
//! or allow rule grants it. The outcome does not depend on where a rule sits
//! in the file, so adding a grant later never undoes a refusal by accident,
//! and a refusal holds for admins too. No rule ever opens a write to a
//! server-owned topic.
//!
//! A subscription is granted only when *every* topic its filter can match is
//! readable: `devices/#` is refused to a user even though some of the topics
//! it matches are the user's own.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::{Identity, Role};
use crate::domain::{TopicError, TopicFilter, TopicLimits, TopicName, filter_matches};

/// The first topic level of device topics: `devices/{device id}/...`.
pub const DEVICES_ROOT: &str = "devices";
pub use crate::domain::MAP_ROOT;
use crate::phones::owntracks::ROOT as OWNTRACKS_ROOT;

/// What an anonymous client may do (`auth.anonymous_acl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnonymousAcl {
    /// Publish and subscribe anywhere except publishing to `$`-topics, like a
    /// Mosquitto broker without an ACL file.
    #[default]
    All,
    /// Subscribe to `map/#` only.
    ReadMap,
}

impl FromStr for AnonymousAcl {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "all" => Ok(Self::All),
            "read_map" => Ok(Self::ReadMap),
            _ => anyhow::bail!("expected `all` or `read_map`, got {s:?}"),
        }
    }
}

/// What an extra rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    Subscribe,
    Publish,
    Both,
}

impl AclAction {
    fn publish(self) -> bool {
        matches!(self, Self::Publish | Self::Both)
    }

    fn subscribe(self) -> bool {
        matches!(self, Self::Subscribe | Self::Both)
    }
}

/// Whether an extra rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclEffect {
    #[default]
    Allow,
    /// Refuses, whatever grants it (built-in or allow rules).
    Deny,
}

/// One `[[auth.acl]]` entry: `role` may (or, with `effect = "deny"`, may
/// not) `action` on topics matching `filter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub role: Role,
    pub action: AclAction,
    /// A topic filter; wildcards allowed (`public/#`).
    pub filter: String,
    #[serde(default)]
    pub effect: AclEffect,
}

impl AclRule {
    pub fn allow(role: Role, action: AclAction, filter: impl Into<String>) -> Self {
        Self { role, action, filter: filter.into(), effect: AclEffect::Allow }
    }

    pub fn deny(role: Role, action: AclAction, filter: impl Into<String>) -> Self {
        Self { role, action, filter: filter.into(), effect: AclEffect::Deny }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    role: Role,
    action: AclAction,
    filter: TopicFilter,
    effect: AclEffect,
}

impl Rule {
    fn denies(&self, who: &Identity) -> bool {
        self.effect == AclEffect::Deny && self.role == who.role
    }

    fn allows(&self, who: &Identity) -> bool {
        self.effect == AclEffect::Allow && self.role == who.role
    }
}

/// The built-in rules, the anonymous policy and the extra rules.
#[derive(Debug, Clone)]
pub struct AclPolicy {
    anonymous: AnonymousAcl,
    rules: Vec<Rule>,
}

impl AclPolicy {
    /// Fails when a rule's filter is not a valid topic filter.
    pub fn new(anonymous: AnonymousAcl, rules: &[AclRule]) -> Result<Self, TopicError> {
        let rules = rules
            .iter()
            .map(|r| {
                let filter = TopicFilter::parse(r.filter.clone(), TopicLimits::default())?;
                Ok(Rule { role: r.role, action: r.action, filter, effect: r.effect })
            })
            .collect::<Result<_, TopicError>>()?;
        Ok(Self { anonymous, rules })
    }

    pub fn can_publish(&self, who: &Identity, topic: &TopicName) -> bool {
        if topic.is_server_owned() {
            return false;
        }
        let t = topic.as_str();
        if self
            .rules
            .iter()
            .any(|r| r.denies(who) && r.action.publish() && filter_matches(r.filter.as_str(), t))
        {
            return false;
        }
        let built_in = match who.role {
            Role::Admin => true,
            Role::Device => who.device_id.as_deref().is_some_and(|id| in_device_tree(t, id)),
            Role::User => who.owned_devices.iter().any(|id| in_device_tree(t, id)),
            Role::Anonymous => self.anonymous == AnonymousAcl::All,
        };
        built_in
            || self.rules.iter().any(|r| {
                r.allows(who) && r.action.publish() && filter_matches(r.filter.as_str(), t)
            })
    }

    pub fn can_subscribe(&self, who: &Identity, filter: &TopicFilter) -> bool {
        let f = filter.as_str();
        // Refused as a whole when any topic it can match is denied: deliveries
        // are not checked one by one.
        if self
            .rules
            .iter()
            .any(|r| r.denies(who) && r.action.subscribe() && filters_overlap(r.filter.as_str(), f))
        {
            return false;
        }
        let built_in = match who.role {
            Role::Admin => true,
            Role::Device => {
                covers_root(f, MAP_ROOT)
                    || who.device_id.as_deref().is_some_and(|id| covers_device_tree(f, id))
            }
            Role::User => {
                covers_root(f, MAP_ROOT)
                    || who.owned_devices.iter().any(|id| covers_device_tree(f, id))
            }
            Role::Anonymous => match self.anonymous {
                AnonymousAcl::All => true,
                AnonymousAcl::ReadMap => covers_root(f, MAP_ROOT),
            },
        };
        built_in
            || self.rules.iter().any(|r| {
                r.allows(who) && r.action.subscribe() && filter_covers(r.filter.as_str(), f)
            })
    }
}

/// Is `topic` `devices/{id}` or `owntracks/{id}`, or below either?
fn in_device_tree(topic: &str, id: &str) -> bool {
    let mut levels = topic.split('/');
    matches!(levels.next(), Some(DEVICES_ROOT | OWNTRACKS_ROOT)) && levels.next() == Some(id)
}

/// Does every topic `filter` matches lie in `{root}/#`?
fn covers_root(filter: &str, root: &str) -> bool {
    filter.split('/').next() == Some(root)
}

/// Does every topic `filter` matches lie in `devices/{id}/#`?
fn covers_device_tree(filter: &str, id: &str) -> bool {
    // `id` never holds a wildcard (ids are generated or validated), so a
    // literal second level equal to it pins the tree.
    in_device_tree(filter, id)
}

/// Does `pattern` match every topic that `filter` matches? Both are valid
/// filters. Conservative: `false` when unsure.
pub fn filter_covers(pattern: &str, filter: &str) -> bool {
    // A first-level wildcard in the pattern never matches `$` topics; a filter
    // that can reach them (one starting with `$`) is covered only literally.
    if filter.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            // `#` matches whatever the rest of the filter can.
            (Some("#"), _) => return true,
            // `a/#` matches `a` itself too.
            (Some(_), None) => return false,
            (None, None) => return true,
            (None, Some(_)) => return false,
            // A `#` in the filter reaches any depth: only `#` covers it.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(_), Some("+")) => return false,
            (Some(pl), Some(fl)) if pl == fl => {}
            _ => return false,
        }
    }
}

/// Can some topic match both filters? Both are valid filters.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    // A first-level wildcard never matches `$` topics.
    let leading_wildcard = |f: &str| f.starts_with('+') || f.starts_with('#');
    if (a.starts_with('$') && leading_wildcard(b)) || (b.starts_with('$') && leading_wildcard(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            // `#` matches whatever the rest of the other can, its parent included.
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s.to_owned(), TopicLimits::default()).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s.to_owned(), TopicLimits::default()).unwrap()
    }

    fn admin() -> Identity {
        Identity::user("u0".into(), "root".into(), Role::Admin, vec![])
    }

    fn alice() -> Identity {
        Identity::user("u1".into(), "alice".into(), Role::User, vec!["car1".into(), "ph1".into()])
    }

    fn car1() -> Identity {
        Identity::device("car1".into())
    }

    fn policy(anonymous: AnonymousAcl) -> AclPolicy {
        AclPolicy::new(anonymous, &[]).unwrap()
    }

    #[test]
    fn publish_table() {
        let p = policy(AnonymousAcl::All);
        let cases: &[(&str, Identity, &str, bool)] = &[
            ("device in its tree", car1(), "devices/car1/location", true),
            ("device at its root", car1(), "devices/car1", true),
            ("device deep in its tree", car1(), "devices/car1/a/b/c", true),
            ("device in another tree", car1(), "devices/car2/location", false),
            ("device with a prefix-sharing id", car1(), "devices/car10/location", false),
            ("device in its OwnTracks tree", car1(), "owntracks/car1/pixel", true),
            ("device in another OwnTracks tree", car1(), "owntracks/car2/pixel", false),
            ("user to an owned OwnTracks tree", alice(), "owntracks/ph1/pixel", true),
            ("device to the map", car1(), "map/snapshot", false),
            ("device elsewhere", car1(), "chat", false),
            ("user to an owned device", alice(), "devices/car1/cmd", true),
            ("user to another owned device", alice(), "devices/ph1/cmd", true),
            ("user to a foreign device", alice(), "devices/car2/cmd", false),
            ("user to the map", alice(), "map/snapshot", false),
            ("admin anywhere", admin(), "devices/car2/cmd", true),
            ("admin to the map", admin(), "map/snapshot", false),
            ("admin to the map's root", admin(), "map", false),
            ("admin next to the map", admin(), "maps/x", true),
            ("admin to $SYS", admin(), "$SYS/broker/uptime", false),
            ("device to $SYS", car1(), "$SYS/x", false),
            ("anonymous (all) anywhere", Identity::anonymous(), "a/b", true),
            ("anonymous (all) to a client $-topic", Identity::anonymous(), "$foo", true),
        ];
        for (name, who, t, expected) in cases {
            assert_eq!(p.can_publish(who, &topic(t)), *expected, "{name}: {t}");
        }
        let read_map = policy(AnonymousAcl::ReadMap);
        assert!(!read_map.can_publish(&Identity::anonymous(), &topic("map/snapshot")));
        assert!(!p.can_publish(&Identity::anonymous(), &topic("map/snapshot")));
    }

    #[test]
    fn subscribe_table() {
        let p = policy(AnonymousAcl::All);
        let cases: &[(&str, Identity, &str, bool)] = &[
            ("device to its tree", car1(), "devices/car1/#", true),
            ("device to its commands", car1(), "devices/car1/cmd/+", true),
            ("device to the map", car1(), "map/#", true),
            ("device to the snapshot", car1(), "map/snapshot", true),
            ("device to another device", car1(), "devices/car2/#", false),
            ("device to all devices", car1(), "devices/+/location", false),
            ("device to everything", car1(), "#", false),
            ("user to the map", alice(), "map/#", true),
            ("user to the map root", alice(), "map", true),
            ("user to an owned device", alice(), "devices/car1/location", true),
            ("user to an owned tree", alice(), "devices/ph1/#", true),
            ("user to a foreign device", alice(), "devices/car2/location", false),
            ("user to all devices", alice(), "devices/#", false),
            ("user to every location", alice(), "devices/+/location", false),
            ("user to everything", alice(), "#", false),
            ("user to a single-level wildcard", alice(), "+/snapshot", false),
            ("user to $SYS", alice(), "$SYS/#", false),
            ("admin to everything", admin(), "#", true),
            ("admin to $SYS", admin(), "$SYS/#", true),
            ("anonymous (all) to everything", Identity::anonymous(), "#", true),
        ];
        for (name, who, f, expected) in cases {
            assert_eq!(p.can_subscribe(who, &filter(f)), *expected, "{name}: {f}");
        }
    }

    #[test]
    fn anonymous_read_map_reads_the_map_only() {
        let p = policy(AnonymousAcl::ReadMap);
        let anon = Identity::anonymous();
        assert!(p.can_subscribe(&anon, &filter("map/#")));
        assert!(p.can_subscribe(&anon, &filter("map/version")));
        assert!(!p.can_subscribe(&anon, &filter("#")));
        assert!(!p.can_subscribe(&anon, &filter("+/version")));
        assert!(!p.can_subscribe(&anon, &filter("devices/car1/location")));
        assert!(!p.can_publish(&anon, &topic("devices/car1/location")));
    }

    #[test]
    fn extra_rules_grant_per_role_and_action() {
        let rules = [
            AclRule::allow(Role::User, AclAction::Both, "public/#"),
            AclRule::allow(Role::Device, AclAction::Subscribe, "fleet/+"),
            AclRule::allow(Role::Anonymous, AclAction::Publish, "inbox"),
            AclRule::allow(Role::User, AclAction::Publish, "map/#"),
        ];
        let p = AclPolicy::new(AnonymousAcl::ReadMap, &rules).unwrap();
        assert!(p.can_publish(&alice(), &topic("public/chat")));
        assert!(p.can_subscribe(&alice(), &filter("public/#")));
        assert!(!p.can_subscribe(&alice(), &filter("#")), "a rule covers only its own filter");
        assert!(!p.can_publish(&car1(), &topic("public/chat")), "rules are per role");
        assert!(p.can_subscribe(&car1(), &filter("fleet/news")));
        assert!(!p.can_subscribe(&car1(), &filter("fleet/#")), "fleet/+ does not cover fleet/#");
        assert!(!p.can_publish(&car1(), &topic("fleet/news")), "subscribe-only rule");
        assert!(p.can_publish(&Identity::anonymous(), &topic("inbox")));
        assert!(!p.can_publish(&alice(), &topic("$SYS/x")), "rules never open $-topics to publish");
        assert!(!p.can_publish(&alice(), &topic("map/snapshot")), "nor the map");
    }

    #[test]
    fn invalid_rule_filters_are_rejected() {
        let bad = [AclRule::allow(Role::User, AclAction::Both, "a/#/b")];
        assert!(AclPolicy::new(AnonymousAcl::All, &bad).is_err());
        let bad = [AclRule::deny(Role::User, AclAction::Both, "a/#/b")];
        assert!(AclPolicy::new(AnonymousAcl::All, &bad).is_err());
    }

    #[test]
    fn deny_rules_win_over_built_in_and_allow_rules_in_any_order() {
        let allow = AclRule::allow(Role::User, AclAction::Both, "secret/#");
        let deny_sub = AclRule::deny(Role::Admin, AclAction::Subscribe, "secret/#");
        let deny_pub = AclRule::deny(Role::Admin, AclAction::Publish, "secret/+/keys");
        let deny_user = AclRule::deny(Role::User, AclAction::Both, "secret/vault");
        let deny_anon = AclRule::deny(Role::Anonymous, AclAction::Both, "devices/#");
        let rules = [allow, deny_sub, deny_pub, deny_user, deny_anon];
        let mut reversed = rules.clone();
        reversed.reverse();
        for rules in [&rules[..], &reversed[..]] {
            let p = AclPolicy::new(AnonymousAcl::All, rules).unwrap();
            // Admin: subscribing is refused wherever a denied topic can arrive.
            for f in ["secret/#", "secret/a", "+/a", "#", "secret/+/keys"] {
                assert!(!p.can_subscribe(&admin(), &filter(f)), "admin subscribes {f}");
            }
            for f in ["public/#", "secrets/a", "$SYS/#"] {
                assert!(p.can_subscribe(&admin(), &filter(f)), "admin subscribes {f}");
            }
            // Admin: only the denied publish topics are refused.
            assert!(!p.can_publish(&admin(), &topic("secret/x/keys")));
            assert!(p.can_publish(&admin(), &topic("secret/x/notes")));
            assert!(p.can_publish(&admin(), &topic("secret/keys")));
            // User: the allow rule grants the tree but not what is denied.
            assert!(p.can_publish(&alice(), &topic("secret/a")));
            assert!(p.can_subscribe(&alice(), &filter("secret/a")));
            assert!(!p.can_publish(&alice(), &topic("secret/vault")));
            assert!(!p.can_subscribe(&alice(), &filter("secret/vault")));
            assert!(!p.can_subscribe(&alice(), &filter("secret/#")), "reaches secret/vault");
            assert!(!p.can_subscribe(&alice(), &filter("secret/+")), "reaches secret/vault");
            // The user's own device tree is left alone by these rules.
            assert!(p.can_publish(&alice(), &topic("devices/car1/cmd")));
            // Anonymous (all): refused under devices/, free elsewhere.
            let anon = Identity::anonymous();
            assert!(!p.can_publish(&anon, &topic("devices/car1/location")));
            assert!(!p.can_subscribe(&anon, &filter("devices/car1/location")));
            assert!(!p.can_subscribe(&anon, &filter("#")));
            assert!(p.can_subscribe(&anon, &filter("map/#")));
            assert!(p.can_publish(&anon, &topic("chat")));
            // Other roles are not touched by these rules.
            assert!(p.can_subscribe(&car1(), &filter("devices/car1/#")));
        }
    }

    #[test]
    fn deny_rules_take_built_in_grants_away() {
        let rules = [AclRule::deny(Role::Device, AclAction::Publish, "devices/+/cmd/#")];
        let p = AclPolicy::new(AnonymousAcl::All, &rules).unwrap();
        assert!(!p.can_publish(&car1(), &topic("devices/car1/cmd/lock")));
        assert!(p.can_publish(&car1(), &topic("devices/car1/location")));
        assert!(p.can_subscribe(&car1(), &filter("devices/car1/cmd/#")), "publish only");
    }

    #[test]
    fn the_effect_defaults_to_allow_in_the_config() {
        let rule: AclRule =
            toml::from_str("role = \"user\"\naction = \"both\"\nfilter = \"a/#\"").unwrap();
        assert_eq!(rule.effect, AclEffect::Allow);
        let rule: AclRule = toml::from_str(
            "role = \"anonymous\"\naction = \"publish\"\nfilter = \"a/#\"\neffect = \"deny\"",
        )
        .unwrap();
        assert_eq!(rule, AclRule::deny(Role::Anonymous, AclAction::Publish, "a/#"));
        assert!(
            toml::from_str::<AclRule>(
                "role = \"user\"\naction = \"both\"\nfilter = \"a\"\neffect = \"maybe\""
            )
            .is_err()
        );
    }

    #[test]
    fn overlap_agrees_with_matching_on_sample_topics() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "a/b", "+/b", "a/+/c", "$SYS/#", "a/b/#", "+/+", "b/#",
            "$SYS/x", "+/#",
        ];
        let topics =
            ["a", "b", "a/b", "x/b", "a/b/c", "a/x/c", "$SYS/x", "a/b/c/d", "c", "b/b", "$SYS"];
        for x in filters {
            for y in filters {
                assert_eq!(filters_overlap(x, y), filters_overlap(y, x), "{x} {y} symmetric");
                let shared = topics.iter().any(|t| filter_matches(x, t) && filter_matches(y, t));
                if shared {
                    assert!(filters_overlap(x, y), "{x} and {y} share a topic");
                }
            }
        }
        assert!(!filters_overlap("a/b", "a/c"));
        assert!(!filters_overlap("a/+", "a"));
        assert!(!filters_overlap("#", "$SYS/x"));
        assert!(filters_overlap("$SYS/#", "$SYS/x"));
        assert!(filters_overlap("a", "a/#"));
    }

    #[test]
    fn filter_coverage_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("#", "a/b", true),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("+/#", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "a/+/c", true),
            ("a/#", "b/#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/b", "a/b", true),
            ("a/b", "a/+", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("+/b", "x/b", true),
            ("+/b", "+/b", true),
            ("+/b", "#", false),
        ];
        for (pattern, f, expected) in cases {
            assert_eq!(filter_covers(pattern, f), *expected, "{pattern} covers {f}");
        }
    }

    #[test]
    fn coverage_agrees_with_matching_on_sample_topics() {
        // If `pattern` covers `filter`, every sample topic `filter` matches,
        // `pattern` matches too.
        let filters = ["#", "+", "a", "a/#", "a/+", "a/b", "+/b", "a/+/c", "$SYS/#", "a/b/#"];
        let topics = ["a", "b", "a/b", "x/b", "a/b/c", "a/x/c", "$SYS/x", "a/b/c/d", "c"];
        for pattern in filters {
            for f in filters {
                if filter_covers(pattern, f) {
                    for t in topics {
                        assert!(
                            !filter_matches(f, t) || filter_matches(pattern, t),
                            "{pattern} claims to cover {f} but misses {t}"
                        );
                    }
                }
            }
        }
    }
}
