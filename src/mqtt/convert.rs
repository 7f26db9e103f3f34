//! Wire ↔ domain: ntex-mqtt packet types in, broker types out, and back.
//!
//! Pure functions, no I/O; the handlers in `v3`/`v5` and the pump call them.

use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ntex::util::{ByteString, Bytes};
use ntex_mqtt::{v3, v5};

use super::reason::{ConnectRefusal, SubscribeRefusal};
use crate::broker::{BrokerLimits, ConnectionId, SubscribeRequest, Will};
use crate::domain::{ClientId, SharedFilter, TopicLimits, TopicName};
use crate::domain::{Delivery, Message, MessageProps, QoS, RetainHandling, SubscriptionOptions};

pub(super) fn qos_in(qos: ntex_mqtt::QoS) -> QoS {
    match qos {
        ntex_mqtt::QoS::AtMostOnce => QoS::AtMostOnce,
        ntex_mqtt::QoS::AtLeastOnce => QoS::AtLeastOnce,
        ntex_mqtt::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(super) fn qos_out(qos: QoS) -> ntex_mqtt::QoS {
    match qos {
        QoS::AtMostOnce => ntex_mqtt::QoS::AtMostOnce,
        QoS::AtLeastOnce => ntex_mqtt::QoS::AtLeastOnce,
        QoS::ExactlyOnce => ntex_mqtt::QoS::ExactlyOnce,
    }
}

/// A client id for a client that sent none (v5 returns it as the assigned
/// client identifier). Unique per process via the connection id, and across
/// restarts via a random part, so it never resumes someone else's session.
pub(super) fn generated_client_id(conn: ConnectionId) -> ClientId {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(conn);
    if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    ClientId::new(format!("mapcast-{conn:x}-{:016x}", h.finish()))
}

/// Session expiry for 3.1.1: clean session ends with the connection, a
/// persistent one never expires (the router caps it by the limits).
pub(super) fn session_expiry_v3(clean_session: bool) -> u32 {
    if clean_session { 0 } else { u32::MAX }
}

/// A password as text for the authenticator (bearer tokens and secrets are text).
pub(super) fn password(raw: Option<&Bytes>) -> Option<crate::domain::Secret> {
    raw.map(|p| crate::domain::Secret::new(String::from_utf8_lossy(p).into_owned()))
}

fn will_message(
    topic: &ByteString,
    payload: &Bytes,
    qos: ntex_mqtt::QoS,
    retain: bool,
    client_id: &ClientId,
    limits: &BrokerLimits,
) -> Result<Message, ConnectRefusal> {
    let topic = TopicName::parse(topic.clone(), limits.topic_limits())
        .map_err(|_| ConnectRefusal::WillTopicInvalid)?;
    if payload.len() > limits.max_payload_bytes as usize {
        return Err(ConnectRefusal::WillTooLarge);
    }
    let mut msg = Message::new(topic, payload.clone(), qos_in(qos), retain);
    msg.publisher = Some(client_id.clone());
    Ok(msg)
}

pub(super) fn will_v3(
    will: &v3::codec::LastWill,
    client_id: &ClientId,
    limits: &BrokerLimits,
) -> Result<Will, ConnectRefusal> {
    let message =
        will_message(&will.topic, &will.message, will.qos, will.retain, client_id, limits)?;
    Ok(Will { message, delay_secs: 0 })
}

pub(super) fn will_v5(
    will: &v5::codec::LastWill,
    client_id: &ClientId,
    limits: &BrokerLimits,
) -> Result<Will, ConnectRefusal> {
    let mut message =
        will_message(&will.topic, &will.message, will.qos, will.retain, client_id, limits)?;
    let props = MessageProps {
        content_type: will.content_type.clone(),
        payload_is_utf8: will.is_utf8_payload.unwrap_or(false),
        response_topic: will.response_topic.clone(),
        correlation_data: will.correlation_data.clone(),
        user_properties: will.user_properties.clone(),
    };
    if let Some(rt) = &props.response_topic {
        TopicName::parse(rt.clone(), limits.topic_limits())
            .map_err(|_| ConnectRefusal::WillTopicInvalid)?;
    }
    message.props = (!props.is_empty()).then(|| Arc::new(props));
    // Counted from now: the router sends the will later (after the delay).
    message.expires_at = expiry_instant(will.message_expiry_interval, Instant::now());
    Ok(Will { message, delay_secs: will.will_delay_interval_sec.unwrap_or(0) })
}

fn expiry_instant(secs: Option<NonZeroU32>, now: Instant) -> Option<Instant> {
    secs.map(|s| now + Duration::from_secs(u64::from(s.get())))
}

/// The properties and expiry of an inbound v5 PUBLISH.
/// `Err` when the response topic is not a valid topic name.
pub(super) fn inbound_props_v5(
    p: &v5::codec::PublishProperties,
    limits: TopicLimits,
    now: Instant,
) -> Result<(Option<Arc<MessageProps>>, Option<Instant>), ()> {
    let expires_at = expiry_instant(p.message_expiry_interval, now);
    if p.content_type.is_none()
        && !p.is_utf8_payload
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
    {
        return Ok((None, expires_at));
    }
    if let Some(rt) = &p.response_topic {
        TopicName::parse(rt.clone(), limits).map_err(|_| ())?;
    }
    let props = MessageProps {
        content_type: p.content_type.clone(),
        payload_is_utf8: p.is_utf8_payload,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
    };
    Ok((Some(Arc::new(props)), expires_at))
}

/// Properties of an outbound v5 PUBLISH: the message's own, the remaining
/// expiry, and the subscription identifiers that matched.
pub(super) fn outbound_props_v5(d: &Delivery) -> v5::codec::PublishProperties {
    let mut out = v5::codec::PublishProperties::default();
    if let Some(p) = &d.msg.props {
        out.content_type = p.content_type.clone();
        out.is_utf8_payload = p.payload_is_utf8;
        out.response_topic = p.response_topic.clone();
        out.correlation_data = p.correlation_data.clone();
        out.user_properties = p.user_properties.clone();
    }
    if d.msg.expires_at.is_some() {
        out.message_expiry_interval =
            d.msg.remaining_expiry_secs(Instant::now()).and_then(NonZeroU32::new);
    }
    if !d.subscription_ids.is_empty() {
        out.subscription_ids =
            d.subscription_ids.iter().copied().filter_map(NonZeroU32::new).collect();
    }
    out
}

/// One SUBSCRIBE entry, parsed. `Err(None)` is a protocol error (close the
/// connection), `Err(Some(_))` refuses only this entry.
pub(super) fn subscribe_request(
    filter: &ByteString,
    options: SubscriptionOptions,
    limits: TopicLimits,
) -> Result<SubscribeRequest, Option<SubscribeRefusal>> {
    let filter = SharedFilter::parse(filter.clone(), limits)
        .map_err(|_| Some(SubscribeRefusal::FilterInvalid))?;
    if filter.group.is_some() && options.no_local {
        return Err(None);
    }
    Ok(SubscribeRequest { filter, options })
}

pub(super) fn subscription_options_v5(
    o: &v5::codec::SubscriptionOptions,
    id: Option<u32>,
) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: qos_in(o.qos),
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling: match o.retain_handling {
            v5::codec::RetainHandling::AtSubscribe => RetainHandling::SendAtSubscribe,
            v5::codec::RetainHandling::AtSubscribeNew => RetainHandling::SendAtSubscribeIfNew,
            v5::codec::RetainHandling::NoAtSubscribe => RetainHandling::DoNotSend,
        },
        subscription_id: id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BrokerLimits {
        BrokerLimits { max_payload_bytes: 8, ..BrokerLimits::default() }
    }

    fn cid() -> ClientId {
        ClientId::from("car-1")
    }

    #[test]
    fn qos_round_trips() {
        for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(qos_in(qos_out(q)), q);
        }
    }

    #[test]
    fn generated_client_ids_are_unique_and_marked() {
        let a = generated_client_id(7);
        let b = generated_client_id(7);
        assert!(a.as_str().starts_with("mapcast-7-"));
        assert_ne!(a, b);
    }

    #[test]
    fn v3_session_expiry_follows_clean_session() {
        assert_eq!(session_expiry_v3(true), 0);
        assert_eq!(session_expiry_v3(false), u32::MAX);
    }

    #[test]
    fn v3_wills_are_validated_and_carry_the_publisher() {
        let will = v3::codec::LastWill {
            qos: ntex_mqtt::QoS::AtLeastOnce,
            retain: true,
            topic: ByteString::from_static("devices/car-1/status"),
            message: Bytes::from_static(b"gone"),
        };
        let w = will_v3(&will, &cid(), &limits()).unwrap();
        assert_eq!(w.delay_secs, 0);
        assert_eq!(w.message.topic.as_str(), "devices/car-1/status");
        assert_eq!(w.message.qos, QoS::AtLeastOnce);
        assert!(w.message.retain);
        assert_eq!(w.message.publisher, Some(cid()));
        assert!(w.message.props.is_none());

        let bad = v3::codec::LastWill {
            topic: ByteString::from_static("devices/+/status"),
            ..will.clone()
        };
        assert_eq!(will_v3(&bad, &cid(), &limits()).unwrap_err(), ConnectRefusal::WillTopicInvalid);
        let big = v3::codec::LastWill { message: Bytes::from_static(b"far too large"), ..will };
        assert_eq!(will_v3(&big, &cid(), &limits()).unwrap_err(), ConnectRefusal::WillTooLarge);
    }

    #[test]
    fn v5_wills_keep_delay_properties_and_expiry() {
        let will = v5::codec::LastWill {
            qos: ntex_mqtt::QoS::AtMostOnce,
            retain: false,
            topic: ByteString::from_static("devices/car-1/status"),
            message: Bytes::from_static(b"{}"),
            will_delay_interval_sec: Some(30),
            correlation_data: None,
            message_expiry_interval: NonZeroU32::new(60),
            content_type: Some(ByteString::from_static("application/json")),
            user_properties: vec![(ByteString::from_static("k"), ByteString::from_static("v"))],
            is_utf8_payload: Some(true),
            response_topic: None,
        };
        let w = will_v5(&will, &cid(), &limits()).unwrap();
        assert_eq!(w.delay_secs, 30);
        let props = w.message.props.as_ref().unwrap();
        assert_eq!(props.content_type.as_deref(), Some("application/json"));
        assert!(props.payload_is_utf8);
        assert_eq!(props.user_properties.len(), 1);
        assert!(w.message.expires_at.is_some());

        let bad =
            v5::codec::LastWill { response_topic: Some(ByteString::from_static("a/#")), ..will };
        assert_eq!(will_v5(&bad, &cid(), &limits()).unwrap_err(), ConnectRefusal::WillTopicInvalid);
    }

    #[test]
    fn inbound_props_are_none_when_empty_and_expiry_is_relative() {
        let now = Instant::now();
        let mut p = v5::codec::PublishProperties::default();
        let (props, exp) = inbound_props_v5(&p, TopicLimits::default(), now).unwrap();
        assert!(props.is_none() && exp.is_none());

        p.message_expiry_interval = NonZeroU32::new(10);
        p.content_type = Some(ByteString::from_static("text/plain"));
        p.correlation_data = Some(Bytes::from_static(b"42"));
        let (props, exp) = inbound_props_v5(&p, TopicLimits::default(), now).unwrap();
        assert_eq!(exp, Some(now + Duration::from_secs(10)));
        let props = props.unwrap();
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.correlation_data.as_deref(), Some(&b"42"[..]));

        p.response_topic = Some(ByteString::from_static("replies/+"));
        assert!(inbound_props_v5(&p, TopicLimits::default(), now).is_err());
    }

    #[test]
    fn outbound_props_carry_remaining_expiry_and_subscription_ids() {
        let topic = TopicName::parse("map/version", TopicLimits::default()).unwrap();
        let mut msg = Message::new(topic, Bytes::from_static(b"1"), QoS::AtLeastOnce, false);
        msg.expires_at = Some(Instant::now() + Duration::from_secs(30));
        msg.props = Some(Arc::new(MessageProps {
            content_type: Some(ByteString::from_static("application/json")),
            ..MessageProps::default()
        }));
        let d = Delivery {
            seq: 1,
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![5, 0, 9],
            dup: false,
            packet_id: None,
            stored: false,
        };
        let p = outbound_props_v5(&d);
        let left = p.message_expiry_interval.unwrap().get();
        assert!((29..=30).contains(&left), "{left}");
        assert_eq!(
            p.subscription_ids,
            vec![NonZeroU32::new(5).unwrap(), NonZeroU32::new(9).unwrap()]
        );
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.topic_alias, None);
    }

    #[test]
    fn subscribe_requests_parse_filters_and_refuse_no_local_on_shared() {
        let opts = SubscriptionOptions::qos(QoS::AtLeastOnce);
        let r = subscribe_request(
            &ByteString::from_static("devices/+/location"),
            opts,
            TopicLimits::default(),
        )
        .unwrap();
        assert_eq!(r.filter.filter.as_str(), "devices/+/location");
        assert_eq!(
            subscribe_request(&ByteString::from_static("$share/g"), opts, TopicLimits::default())
                .unwrap_err(),
            Some(SubscribeRefusal::FilterInvalid)
        );
        let no_local = SubscriptionOptions { no_local: true, ..opts };
        assert!(
            subscribe_request(&ByteString::from_static("a/b"), no_local, TopicLimits::default())
                .is_ok()
        );
        assert_eq!(
            subscribe_request(
                &ByteString::from_static("$share/g/a/b"),
                no_local,
                TopicLimits::default()
            )
            .unwrap_err(),
            None
        );
    }

    #[test]
    fn v5_subscription_options_map_one_to_one() {
        let o = v5::codec::SubscriptionOptions {
            qos: ntex_mqtt::QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: v5::codec::RetainHandling::AtSubscribeNew,
        };
        let s = subscription_options_v5(&o, Some(7));
        assert_eq!(s.qos, QoS::ExactlyOnce);
        assert!(s.no_local && s.retain_as_published);
        assert_eq!(s.retain_handling, RetainHandling::SendAtSubscribeIfNew);
        assert_eq!(s.subscription_id, Some(7));
    }
}
