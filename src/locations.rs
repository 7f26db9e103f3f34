//! Where positions enter: the [`PublishHook`] every publish passes through,
//! whichever way it came (MQTT, REST). It
//!
//! - validates `devices/{id}/location` payloads ([`Location::parse`]), and
//!   OwnTracks locations on `owntracks/{id}/{device}` ([`owntracks`]), and
//!   refuses invalid ones (MQTT v5 PUBACK 0x99, REST 400/422), so they are
//!   neither routed nor stored; so is a fix whose `ts` is too far ahead of
//!   the server clock or implausibly old (`[locations]`);
//! - adds the device's latest position and the history rows to the
//!   publish's own store batch (a QoS≥1 acknowledgement covers them);
//! - once the publish is accepted, hands the position to the map updater
//!   through the [`PositionFeed`] — no database query per map tick.
//!
//! It runs on the publisher's thread; only wills, published by the broker
//! itself when a client goes away, pass it on the router's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::broker::{Inspection, PublishError, PublishHook};
use crate::config::LocationSettings;
use crate::domain::Message;
use crate::domain::WriteOp;
use crate::domain::time::millis;
use crate::domain::{
    DeviceId, Location, LocationError, Position, TopicFilter, TopicLimits, TopicName,
};
use crate::phones::owntracks;

/// The topic filters with history enabled (`history.topics`).
#[derive(Debug, Clone)]
pub struct HistoryTopics(Arc<[TopicFilter]>);

impl HistoryTopics {
    /// Filters as configured (validated by the settings loader).
    pub fn parse(filters: &[String], limits: TopicLimits) -> anyhow::Result<Self> {
        let parsed = filters
            .iter()
            .map(|f| TopicFilter::parse(f.clone(), limits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(parsed.into()))
    }

    /// Whether messages on `topic` are kept.
    pub fn matches(&self, topic: &TopicName) -> bool {
        self.0.iter().any(|f| f.matches(topic))
    }
}

/// Positions accepted since the map updater last looked, newest per device.
///
/// A std `Mutex`: publishers hold it for one map insert, the updater for a
/// `mem::take`; neither crosses an `.await`.
#[derive(Debug, Default)]
pub struct PositionFeed {
    pending: Mutex<HashMap<DeviceId, Position>>,
}

impl PositionFeed {
    pub fn record(&self, device: DeviceId, position: Position) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get(&device) {
            Some(kept) if !position.supersedes(kept) => {}
            _ => {
                pending.insert(device, position);
            }
        }
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> HashMap<DeviceId, Position> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The hook: location validation, latest position, history.
pub struct LocationHook {
    history: HistoryTopics,
    feed: Arc<PositionFeed>,
    /// `[locations]` in milliseconds, converted once (checked per publish).
    max_future_skew_ms: i64,
    /// `None`: any age is believed.
    max_age_ms: Option<i64>,
}

impl LocationHook {
    pub fn new(history: HistoryTopics, feed: Arc<PositionFeed>, clock: LocationSettings) -> Self {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            history,
            feed,
            max_future_skew_ms: ms(clock.max_future_skew_secs),
            max_age_ms: (clock.max_age_secs > 0).then(|| ms(clock.max_age_secs)),
        }
    }

    /// Is a fix taken at `ts_ms` believable when it arrives at `received_ms`?
    fn check_clock(&self, ts_ms: i64, received_ms: i64) -> Result<(), LocationError> {
        if ts_ms > received_ms.saturating_add(self.max_future_skew_ms) {
            return Err(LocationError::TsInFuture);
        }
        if self.max_age_ms.is_some_and(|age| ts_ms < received_ms.saturating_sub(age)) {
            return Err(LocationError::TsTooOld);
        }
        Ok(())
    }
}

impl LocationHook {
    /// `location` becomes `device`'s latest position once `msg` is accepted.
    fn position(
        &self,
        device: DeviceId,
        location: Location,
        msg: &Message,
        inspection: &mut Inspection,
    ) -> Result<(), PublishError> {
        let received_at_ms = millis(msg.received_at);
        self.check_clock(location.ts_ms, received_at_ms).map_err(PublishError::InvalidPayload)?;
        let position = Position { location, received_at_ms };
        inspection.ops.push(WriteOp::UpsertLocation {
            device_id: device.clone(),
            position: position.clone(),
        });
        let feed = self.feed.clone();
        inspection.on_accepted = Some(Box::new(move || feed.record(device, position)));
        Ok(())
    }
}

impl PublishHook for LocationHook {
    fn inspect(&self, msg: &Message) -> Result<Inspection, PublishError> {
        let mut inspection = Inspection::default();
        // An empty retained publish clears the retained value: nothing to check or keep.
        if msg.payload.is_empty() {
            if msg.retain || DeviceId::from_location_topic(&msg.topic).is_none() {
                return Ok(inspection);
            }
            return Err(PublishError::InvalidPayload(crate::domain::LocationError::NotJson));
        }
        if let Some(device) = DeviceId::from_location_topic(&msg.topic) {
            let location = Location::parse(&msg.payload).map_err(PublishError::InvalidPayload)?;
            self.position(device, location, msg, &mut inspection)?;
        } else if let Some(device) = owntracks::device_of(&msg.topic) {
            if msg.payload.is_empty() {
                return Err(PublishError::InvalidPayload(LocationError::NotJson));
            }
            if let Some(location) =
                owntracks::parse(&msg.payload).map_err(PublishError::InvalidPayload)?
            {
                // The trail is kept where every other device's is, as GeoJSON.
                let topic = TopicName::parse(device.location_topic(), TopicLimits::default()).ok();
                if let Some(topic) = topic.filter(|t| self.history.matches(t)) {
                    inspection.ops.push(WriteOp::AppendHistory {
                        topic,
                        payload: location.to_feature_json().into(),
                        content_type: None,
                        received_at: msg.received_at,
                    });
                }
                self.position(device, location, msg, &mut inspection)?;
            }
        }
        if self.history.matches(&msg.topic) {
            inspection.ops.push(WriteOp::AppendHistory {
                topic: msg.topic.clone(),
                payload: msg.payload.clone(),
                content_type: msg.props.as_ref().and_then(|p| p.content_type.clone()),
                received_at: msg.received_at,
            });
        }
        Ok(inspection)
    }
}

#[cfg(test)]
mod tests {
    use ntex::util::Bytes;

    use super::*;
    use crate::domain::QoS;

    /// A fix stamped `ts`, received at [`RECEIVED`].
    fn fix(ts: i64) -> Message {
        let mut m = msg(
            "devices/car-1/location",
            &format!(
                r#"{{"type":"Feature","geometry":{{"type":"Point","coordinates":[1,2]}},"properties":{{"ts":{ts}}}}}"#
            ),
            false,
        );
        m.received_at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(RECEIVED);
        m
    }
    const RECEIVED: u64 = 1_800_000_000_000;
    const GOOD_TS: i64 = RECEIVED as i64 - 5;

    fn hook(history: &[&str]) -> (LocationHook, Arc<PositionFeed>) {
        let feed = Arc::new(PositionFeed::default());
        let topics: Vec<String> = history.iter().map(|s| s.to_string()).collect();
        let history = HistoryTopics::parse(&topics, TopicLimits::default()).unwrap();
        (LocationHook::new(history, feed.clone(), LocationSettings::default()), feed)
    }

    fn msg(topic: &str, payload: &str, retain: bool) -> Message {
        let topic = TopicName::parse(topic.to_owned(), TopicLimits::default()).unwrap();
        Message::new(topic, Bytes::from(payload.to_owned()), QoS::AtLeastOnce, retain)
    }

    #[test]
    fn fixes_from_a_wrong_clock_are_refused() {
        let (hook, feed) = hook(&[]);
        let skew = 300_000;
        let age = 30 * 24 * 3600 * 1000;
        let received = RECEIVED as i64;
        let cases = [
            (received + skew, None),
            (received + skew + 1, Some(LocationError::TsInFuture)),
            (received - age, None),
            (received - age - 1, Some(LocationError::TsTooOld)),
            (0, Some(LocationError::TsTooOld)),
        ];
        for (ts, refused) in cases {
            let got = hook.inspect(&fix(ts)).err();
            let got = got.map(|e| match e {
                PublishError::InvalidPayload(l) => l,
                other => panic!("{other}"),
            });
            assert_eq!(got, refused, "ts {ts}");
        }
        assert!(feed.take().is_empty());
    }

    #[test]
    fn a_valid_location_is_stored_and_fed_to_the_map_once_accepted() {
        let (hook, feed) = hook(&["devices/+/location"]);
        let inspection = hook.inspect(&fix(GOOD_TS)).unwrap();
        assert!(matches!(inspection.ops[0], WriteOp::UpsertLocation { .. }));
        assert!(matches!(inspection.ops[1], WriteOp::AppendHistory { .. }));
        assert!(feed.take().is_empty(), "nothing is fed before the broker accepts it");
        (inspection.on_accepted.unwrap())();
        let fed = feed.take();
        assert_eq!(fed.len(), 1);
        assert_eq!(fed.values().next().unwrap().location.ts_ms, GOOD_TS);
    }

    #[test]
    fn an_invalid_location_is_refused_with_its_reason() {
        let (hook, _) = hook(&[]);
        let err = hook.inspect(&msg("devices/car-1/location", "{}", false)).err().unwrap();
        assert!(matches!(err, PublishError::InvalidPayload(LocationError::NotFeature)));
        let err = hook.inspect(&msg("devices/car-1/location", "", false)).err().unwrap();
        assert!(matches!(err, PublishError::InvalidPayload(LocationError::NotJson)));
    }

    #[test]
    fn clearing_a_retained_location_and_other_topics_pass_unchecked() {
        let (hook, _) = hook(&["cmd/#"]);
        assert!(hook.inspect(&msg("devices/car-1/location", "", true)).unwrap().ops.is_empty());
        assert!(
            hook.inspect(&msg("devices/car-1/status", "not json", false)).unwrap().ops.is_empty()
        );
        let kept = hook.inspect(&msg("cmd/car-1", "honk", false)).unwrap();
        assert!(matches!(kept.ops.as_slice(), [WriteOp::AppendHistory { .. }]));
    }

    #[test]
    fn an_owntracks_location_moves_its_device_and_keeps_a_geojson_trail() {
        let (hook, feed) = hook(&["devices/+/location"]);
        let tst = RECEIVED / 1000 - 1;
        let mut m = msg(
            "owntracks/ph-1/pixel",
            &format!(r#"{{"_type":"location","lat":52.5,"lon":13.4,"tst":{tst},"tid":"px"}}"#),
            true,
        );
        m.received_at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(RECEIVED);
        let inspection = hook.inspect(&m).unwrap();
        let WriteOp::AppendHistory { topic, payload, .. } = &inspection.ops[0] else { panic!() };
        assert_eq!(topic.as_str(), "devices/ph-1/location");
        assert_eq!(Location::parse(payload).unwrap().lat, 52.5);
        assert!(
            matches!(&inspection.ops[1], WriteOp::UpsertLocation { device_id, .. } if device_id.as_str() == "ph-1")
        );
        (inspection.on_accepted.unwrap())();
        assert_eq!(feed.take().len(), 1);

        let lwt = msg("owntracks/ph-1/pixel", r#"{"_type":"lwt","tst":1}"#, false);
        assert!(hook.inspect(&lwt).unwrap().ops.is_empty());
        let bad = msg("owntracks/ph-1/pixel", r#"{"_type":"location","lon":1,"tst":1}"#, false);
        assert!(matches!(
            hook.inspect(&bad).err().unwrap(),
            PublishError::InvalidPayload(LocationError::PhoneNoLatLon)
        ));
    }

    #[test]
    fn the_feed_keeps_the_newest_fix_per_device() {
        let feed = PositionFeed::default();
        let id = DeviceId::parse("d").unwrap();
        let at = |ts| {
            Position { location: Location::parse(format!(r#"{{"type":"Feature","geometry":{{"type":"Point","coordinates":[1,2]}},"properties":{{"ts":{ts}}}}}"#).as_bytes()).unwrap(), received_at_ms: 20 }
        };
        feed.record(id.clone(), at(10));
        feed.record(id.clone(), at(5));
        assert_eq!(feed.take()[&id].location.ts_ms, 10);
    }
}
