//! Every MQTT reason code the adapter sends, chosen in one place.
//!
//! Handlers describe *what* went wrong with the domain enums below (or the
//! broker's own errors); this module decides *how* each protocol level says
//! it: a v5 reason code on CONNACK/PUBACK/SUBACK/UNSUBACK/DISCONNECT, or the
//! closest MQTT 3.1.1 behaviour (a CONNACK return code, a SUBACK failure, an
//! ack without routing, or closing the connection). Causes stay in the logs;
//! clients only see the code and, for v5, a short fixed reason string.

use ntex_mqtt::error::ProtocolError;
use ntex_mqtt::{v3, v5};
use v5::codec::{ConnectAckReason, DisconnectReasonCode, PublishAckReason, SubscribeAckReason};

use crate::broker::auth::AuthError;
use crate::broker::{KickReason, PublishError, PublishOutcome, SubscribeError};
use crate::domain::QoS;
use crate::domain::StoreError;
use crate::domain::TopicError;

/// An error that ends one connection. v5 clients get a DISCONNECT with
/// `code` (when the connection is still writable); v3 connections just close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (reason code {})", u8::from(*.code))]
pub(crate) struct ConnError {
    pub code: DisconnectReasonCode,
    pub reason: &'static str,
}

impl ConnError {
    pub(crate) const fn new(code: DisconnectReasonCode, reason: &'static str) -> Self {
        Self { code, reason }
    }

    pub(crate) const fn protocol(reason: &'static str) -> Self {
        Self::new(DisconnectReasonCode::ProtocolError, reason)
    }

    /// The v5 DISCONNECT that tells the client why.
    pub(crate) fn disconnect(&self) -> v5::codec::Disconnect {
        v5::codec::Disconnect::new(self.code).reason_string(Some(self.reason.into()))
    }
}

/// ntex-mqtt asks whether a publish handler error can become a PUBACK; ours
/// never can: handlers return rejections as acks themselves, errors close.
impl TryFrom<ConnError> for v5::PublishAck {
    type Error = ConnError;

    fn try_from(err: ConnError) -> Result<Self, Self::Error> {
        Err(err)
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectRefusal {
    /// Empty client id with a persistent session (3.1.1 §3.1.3-8).
    ClientIdRejected,
    Auth(AuthError),
    WillTopicInvalid,
    WillTooLarge,
    WillNotAuthorized,
    /// The client id starts with a prefix the server keeps for itself.
    ClientIdReserved,
    /// The client id's session belongs to another identity.
    SessionOwnedByOther,
    /// The will's payload fails the topic's validation (e.g. a bad location).
    WillPayloadInvalid,
    /// v5 enhanced authentication (AUTH method) is not supported.
    BadAuthMethod,
    /// The broker core is shutting down.
    Unavailable,
    /// A later CONNECT with the same client id, on this or another
    /// instance, claimed the session first (0x8E is not a CONNACK code).
    Superseded,
}

impl ConnectRefusal {
    pub(crate) fn v5(self) -> ConnectAckReason {
        match self {
            Self::ClientIdRejected | Self::ClientIdReserved => {
                ConnectAckReason::ClientIdentifierNotValid
            }
            Self::Auth(AuthError::BadCredentials) => ConnectAckReason::BadUserNameOrPassword,
            Self::Auth(AuthError::NotAuthorized)
            | Self::WillNotAuthorized
            | Self::SessionOwnedByOther => ConnectAckReason::NotAuthorized,
            Self::Auth(AuthError::Unavailable) | Self::Unavailable => {
                ConnectAckReason::ServerUnavailable
            }
            // 0x9F "connection rate exceeded", not 0x86: the credentials were
            // not checked and may be right, so the client must not be told
            // they are wrong (a device would give up or ask for a new
            // secret); it should back off and retry later, which is what
            // 0x9F asks of it. 0x87 would read as a permanent ACL refusal.
            Self::Auth(AuthError::TooManyAttempts) => ConnectAckReason::ConnectionRateExceeded,
            Self::Auth(AuthError::Busy) | Self::Superseded => ConnectAckReason::ServerBusy,
            Self::WillTopicInvalid => ConnectAckReason::TopicNameInvalid,
            Self::WillPayloadInvalid => ConnectAckReason::PayloadFormatInvalid,
            Self::WillTooLarge => ConnectAckReason::PacketTooLarge,
            Self::BadAuthMethod => ConnectAckReason::BadAuthenticationMethod,
        }
    }

    /// `None`: 3.1.1 has no fitting return code, close without CONNACK
    /// (what Mosquitto does for a malformed will).
    pub(crate) fn v3(self) -> Option<v3::codec::ConnectAckReason> {
        use v3::codec::ConnectAckReason as R;
        match self {
            Self::ClientIdRejected | Self::ClientIdReserved => Some(R::IdentifierRejected),
            Self::Auth(AuthError::BadCredentials) => Some(R::BadUserNameOrPassword),
            Self::Auth(AuthError::NotAuthorized)
            | Self::WillNotAuthorized
            | Self::SessionOwnedByOther => Some(R::NotAuthorized),
            Self::Auth(AuthError::Unavailable | AuthError::Busy)
            | Self::Unavailable
            | Self::Superseded => Some(R::ServiceUnavailable),
            // 3.1.1 has no rate code; "not authorized" without claiming the
            // password is wrong.
            Self::Auth(AuthError::TooManyAttempts) => Some(R::NotAuthorized),
            Self::WillTopicInvalid
            | Self::WillTooLarge
            | Self::WillPayloadInvalid
            | Self::BadAuthMethod => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ClientIdRejected => "empty client id requires a clean session",
            Self::Auth(AuthError::BadCredentials) => "bad user name or password",
            Self::Auth(AuthError::NotAuthorized) => "not authorized",
            Self::Auth(AuthError::Unavailable) => "authentication backend unavailable",
            Self::Auth(AuthError::TooManyAttempts) => "too many failed sign-ins; retry later",
            Self::Auth(AuthError::Busy) => "server busy: password checking is saturated",
            Self::WillTopicInvalid => "will topic invalid",
            Self::WillPayloadInvalid => "will payload invalid for its topic",
            Self::WillTooLarge => "will payload too large",
            Self::WillNotAuthorized => "will topic not authorized",
            Self::ClientIdReserved => "client id prefix reserved by the server",
            Self::SessionOwnedByOther => "client id in use by another identity",
            Self::BadAuthMethod => "enhanced authentication is not supported",
            Self::Unavailable => "server unavailable",
            Self::Superseded => "a later connection with this client id took the session",
        }
    }
}

/// Why an inbound PUBLISH was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishRejection {
    TopicInvalid,
    PayloadTooLarge,
    NotAuthorized,
    Busy,
    /// The database does not take writes (down or unreachable).
    Storage,
    /// The disk under the database is full.
    StorageFull,
    ShuttingDown,
    /// The payload failed validation (an invalid location); the reason names why.
    PayloadFormatInvalid(&'static str),
    /// The topic name holds U+0000: a malformed packet [MQTT-1.5.4-2].
    Malformed,
}

impl From<&TopicError> for PublishRejection {
    fn from(_: &TopicError) -> Self {
        Self::TopicInvalid
    }
}

impl From<&PublishError> for PublishRejection {
    fn from(err: &PublishError) -> Self {
        match err {
            PublishError::Busy => Self::Busy,
            PublishError::Storage(StoreError::Full) => Self::StorageFull,
            PublishError::Storage(_) => Self::Storage,
            PublishError::ShuttingDown => Self::ShuttingDown,
            PublishError::InvalidPayload(e) => Self::PayloadFormatInvalid(e.as_str()),
        }
    }
}

/// What a v5 connection does with a rejected publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V5Verdict {
    /// Negative PUBACK/PUBREC (QoS ≥ 1) with a reason string.
    Ack(PublishAckReason, &'static str),
    /// QoS 0: drop it (logged and counted).
    Drop,
    /// Close with DISCONNECT.
    Disconnect(ConnError),
}

/// What a 3.1.1 connection does with a rejected publish. 3.1.1 has no negative
/// acks: either ack and drop (so the client does not hang, as Mosquitto does)
/// or close without acking (the client resends after reconnecting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V3Verdict {
    AckAndDrop,
    Close(ConnError),
}

impl PublishRejection {
    pub(crate) fn v5(self, qos: QoS) -> V5Verdict {
        let acked = qos != QoS::AtMostOnce;
        match self {
            Self::TopicInvalid if acked => {
                V5Verdict::Ack(PublishAckReason::TopicNameInvalid, "topic name invalid")
            }
            Self::TopicInvalid => V5Verdict::Disconnect(ConnError::new(
                DisconnectReasonCode::TopicNameInvalid,
                "topic name invalid",
            )),
            // 0x95 is not a PUBACK reason code; 0x97 "quota exceeded" is the
            // closest one a client understands without reconnect loops.
            Self::PayloadTooLarge if acked => {
                V5Verdict::Ack(PublishAckReason::QuotaExceeded, "payload too large")
            }
            Self::PayloadTooLarge => V5Verdict::Disconnect(ConnError::new(
                DisconnectReasonCode::PacketTooLarge,
                "payload too large",
            )),
            Self::NotAuthorized if acked => {
                V5Verdict::Ack(PublishAckReason::NotAuthorized, "not authorized")
            }
            Self::NotAuthorized => V5Verdict::Drop,
            // 0x89 "server busy" is not a PUBACK reason code either.
            Self::Busy if acked => V5Verdict::Ack(PublishAckReason::QuotaExceeded, "server busy"),
            Self::Busy => V5Verdict::Drop,
            // No PUBACK code says "try again later"; 0x80 with a reason
            // string is honest (0x83 would claim the content is unwelcome).
            Self::Storage if acked => {
                V5Verdict::Ack(PublishAckReason::UnspecifiedError, "storage unavailable")
            }
            // A full disk is an exceeded resource limit: 0x97 "quota exceeded".
            Self::StorageFull if acked => {
                V5Verdict::Ack(PublishAckReason::QuotaExceeded, "storage full")
            }
            Self::Storage | Self::StorageFull => V5Verdict::Drop,
            Self::ShuttingDown => V5Verdict::Disconnect(shutting_down()),
            Self::PayloadFormatInvalid(why) if acked => {
                V5Verdict::Ack(PublishAckReason::PayloadFormatInvalid, why)
            }
            Self::PayloadFormatInvalid(_) => V5Verdict::Drop,
            Self::Malformed => V5Verdict::Disconnect(NUL_IN_STRING),
        }
    }

    pub(crate) fn v3(self) -> V3Verdict {
        match self {
            // Dropped, counted and logged; acked so the client does not resend it.
            Self::NotAuthorized | Self::PayloadFormatInvalid(_) => V3Verdict::AckAndDrop,
            Self::TopicInvalid => V3Verdict::Close(ConnError::new(
                DisconnectReasonCode::TopicNameInvalid,
                "topic name invalid",
            )),
            Self::PayloadTooLarge => V3Verdict::Close(ConnError::new(
                DisconnectReasonCode::PacketTooLarge,
                "payload too large",
            )),
            // Never ack what was not routed or stored; the client retries.
            Self::Busy => {
                V3Verdict::Close(ConnError::new(DisconnectReasonCode::ServerBusy, "server busy"))
            }
            Self::Storage => V3Verdict::Close(ConnError::new(
                DisconnectReasonCode::UnspecifiedError,
                "storage unavailable",
            )),
            Self::StorageFull => V3Verdict::Close(ConnError::new(
                DisconnectReasonCode::QuotaExceeded,
                "storage full",
            )),
            Self::ShuttingDown => V3Verdict::Close(shutting_down()),
            Self::Malformed => V3Verdict::Close(NUL_IN_STRING),
        }
    }
}

/// The v5 PUBACK for a routed publish.
pub(crate) fn publish_routed_v5(outcome: PublishOutcome) -> PublishAckReason {
    if outcome.unheard() {
        PublishAckReason::NoMatchingSubscribers
    } else {
        PublishAckReason::Success
    }
}

/// Why one entry of a SUBSCRIBE is refused before it reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeRefusal {
    FilterInvalid,
    NotAuthorized,
}

impl SubscribeRefusal {
    pub(crate) fn v5(self) -> SubscribeAckReason {
        match self {
            Self::FilterInvalid => SubscribeAckReason::TopicFilterInvalid,
            Self::NotAuthorized => SubscribeAckReason::NotAuthorized,
        }
    }
}

/// SUBACK reason for a subscription the broker refused.
pub(crate) fn suback_v5(err: SubscribeError) -> SubscribeAckReason {
    match err {
        SubscribeError::QuotaExceeded => SubscribeAckReason::QuotaExceeded,
        SubscribeError::NotAuthorized => SubscribeAckReason::NotAuthorized,
        SubscribeError::FilterInvalid => SubscribeAckReason::TopicFilterInvalid,
        SubscribeError::NoSession => SubscribeAckReason::UnspecifiedError,
    }
}

/// No Local on a shared subscription is a protocol error (MQTT 5 §3.8.3.1).
/// A string with U+0000 makes its packet malformed [MQTT-1.5.4-2]: the
/// connection is closed (v5: DISCONNECT 0x81).
pub(crate) const NUL_IN_STRING: ConnError =
    ConnError::new(DisconnectReasonCode::MalformedPacket, "U+0000 in a string");

pub(crate) const NO_LOCAL_ON_SHARED: ConnError =
    ConnError::protocol("no local on a shared subscription");

pub(crate) const fn shutting_down() -> ConnError {
    ConnError::new(DisconnectReasonCode::ServerShuttingDown, "server shutting down")
}

/// The DISCONNECT sent when the broker asks a connection to go away.
pub(crate) fn kicked(reason: KickReason) -> ConnError {
    match reason {
        KickReason::SessionTakenOver => {
            ConnError::new(DisconnectReasonCode::SessionTakenOver, "session taken over")
        }
        KickReason::ServerShuttingDown => shutting_down(),
        KickReason::Revoked => {
            ConnError::new(DisconnectReasonCode::AdministrativeAction, "credentials revoked")
        }
    }
}

/// The DISCONNECT for a protocol error ntex-mqtt detected. ntex reports a
/// wildcard in a PUBLISH topic and a topic alias above the maximum as generic
/// protocol errors (0x82); MQTT 5 names them 0x90 and 0x94.
pub(crate) fn protocol_error(err: &ProtocolError) -> v5::codec::Disconnect {
    if let ProtocolError::ProtocolViolation(v) = err {
        let (code, why) = match v.message() {
            m if m.starts_with("[MQTT-3.3.2-2]") => {
                (DisconnectReasonCode::TopicNameInvalid, "topic name contains a wildcard")
            }
            m if m.starts_with("[MQTT-3.2.2-17]") || m.starts_with("[MQTT-3.1.2-26]") => {
                (DisconnectReasonCode::TopicAliasInvalid, "topic alias above the maximum")
            }
            _ => return v5::codec::Disconnect::from_proto_error(err),
        };
        return v5::codec::Disconnect::new(code).reason_string(Some(why.into()));
    }
    // A packet that does not decode is malformed (0x81) [MQTT-4.13.1], not
    // ntex's "implementation specific" 0x83.
    if let ProtocolError::Decode(e) = err
        && !matches!(e, ntex_mqtt::error::DecodeError::MaxSizeExceeded { .. })
    {
        return v5::codec::Disconnect::new(DisconnectReasonCode::MalformedPacket);
    }
    v5::codec::Disconnect::from_proto_error(err)
}

/// Why a connection is turned away before its CONNECT is handled (`admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overload {
    /// `broker.max_connections` connections are open.
    MaxConnections,
    /// The source address is over `broker.max_connect_rate_per_ip`.
    ConnectRate,
}

impl Overload {
    pub(crate) fn v5(self) -> ConnectAckReason {
        match self {
            Self::MaxConnections => ConnectAckReason::QuotaExceeded,
            Self::ConnectRate => ConnectAckReason::ConnectionRateExceeded,
        }
    }

    /// 3.1.1 has one code for both: come back later.
    pub(crate) fn v3(self) -> v3::codec::ConnectAckReason {
        v3::codec::ConnectAckReason::ServiceUnavailable
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "too many connections",
            Self::ConnectRate => "connection rate exceeded",
        }
    }
}

/// A packet a client must not send once connected: a second CONNECT
/// [MQTT-3.1.0-2], a packet only servers send, or a SUBSCRIBE / UNSUBSCRIBE
/// without topic filters [MQTT-3.8.3-2] [MQTT-3.10.3-2]. A protocol error
/// (0x82); ntex-mqtt would ignore or acknowledge them.
pub(crate) const fn unexpected_packet(why: &'static str) -> ConnError {
    ConnError::protocol(why)
}

#[cfg(test)]
mod tests {
    use ntex_mqtt::error::SpecViolation;

    use super::*;

    #[test]
    fn undecodable_packets_are_malformed_but_oversized_ones_too_large() {
        use ntex_mqtt::error::DecodeError;
        let malformed = protocol_error(&ProtocolError::Decode(DecodeError::MalformedPacket));
        assert_eq!(malformed.reason_code, DisconnectReasonCode::MalformedPacket);
        let big = protocol_error(&ProtocolError::Decode(DecodeError::MaxSizeExceeded {
            size: 10,
            max_size: 5,
        }));
        assert_eq!(big.reason_code, DisconnectReasonCode::PacketTooLarge);
    }

    #[test]
    fn connect_refusals_map_to_v5_and_v3_codes() {
        assert_eq!(
            ConnectRefusal::Auth(AuthError::BadCredentials).v5(),
            ConnectAckReason::BadUserNameOrPassword
        );
        assert_eq!(
            ConnectRefusal::Auth(AuthError::NotAuthorized).v5(),
            ConnectAckReason::NotAuthorized
        );
        assert_eq!(
            ConnectRefusal::Auth(AuthError::Unavailable).v5(),
            ConnectAckReason::ServerUnavailable
        );
        assert_eq!(u8::from(ConnectRefusal::Auth(AuthError::BadCredentials).v5()), 0x86);
        assert_eq!(u8::from(ConnectRefusal::Auth(AuthError::TooManyAttempts).v5()), 0x9F);
        assert_eq!(u8::from(ConnectRefusal::Auth(AuthError::Busy).v5()), 0x89);
        assert_eq!(
            ConnectRefusal::Auth(AuthError::Busy).v3(),
            Some(v3::codec::ConnectAckReason::ServiceUnavailable)
        );
        assert_eq!(
            ConnectRefusal::Auth(AuthError::TooManyAttempts).v3(),
            Some(v3::codec::ConnectAckReason::NotAuthorized)
        );
        assert_eq!(u8::from(ConnectRefusal::WillTopicInvalid.v5()), 0x90);
        assert_eq!(
            ConnectRefusal::Auth(AuthError::BadCredentials).v3(),
            Some(v3::codec::ConnectAckReason::BadUserNameOrPassword)
        );
        assert_eq!(
            ConnectRefusal::ClientIdRejected.v3(),
            Some(v3::codec::ConnectAckReason::IdentifierRejected)
        );
        assert_eq!(
            ConnectRefusal::Unavailable.v3(),
            Some(v3::codec::ConnectAckReason::ServiceUnavailable)
        );
        assert_eq!(ConnectRefusal::WillTopicInvalid.v3(), None);
    }

    #[test]
    fn v5_publish_rejections_ack_qos1_and_disconnect_or_drop_qos0() {
        use PublishRejection as R;
        assert_eq!(
            R::TopicInvalid.v5(QoS::AtLeastOnce),
            V5Verdict::Ack(PublishAckReason::TopicNameInvalid, "topic name invalid")
        );
        assert!(matches!(
            R::TopicInvalid.v5(QoS::AtMostOnce),
            V5Verdict::Disconnect(ConnError { code: DisconnectReasonCode::TopicNameInvalid, .. })
        ));
        assert!(matches!(
            R::PayloadTooLarge.v5(QoS::AtMostOnce),
            V5Verdict::Disconnect(ConnError { code: DisconnectReasonCode::PacketTooLarge, .. })
        ));
        assert!(matches!(
            R::NotAuthorized.v5(QoS::ExactlyOnce),
            V5Verdict::Ack(PublishAckReason::NotAuthorized, _)
        ));
        assert_eq!(R::NotAuthorized.v5(QoS::AtMostOnce), V5Verdict::Drop);
        assert!(matches!(
            R::Storage.v5(QoS::AtLeastOnce),
            V5Verdict::Ack(PublishAckReason::UnspecifiedError, "storage unavailable")
        ));
        assert_eq!(
            R::StorageFull.v5(QoS::AtLeastOnce),
            V5Verdict::Ack(PublishAckReason::QuotaExceeded, "storage full")
        );
        assert_eq!(
            R::from(&PublishError::Storage(StoreError::Full)),
            R::StorageFull,
            "a full disk is told apart from an outage"
        );
        assert!(matches!(
            R::Busy.v5(QoS::AtLeastOnce),
            V5Verdict::Ack(PublishAckReason::QuotaExceeded, _)
        ));
        assert_eq!(
            R::PayloadFormatInvalid("properties.ts is required").v5(QoS::AtLeastOnce),
            V5Verdict::Ack(PublishAckReason::PayloadFormatInvalid, "properties.ts is required")
        );
        assert_eq!(u8::from(PublishAckReason::PayloadFormatInvalid), 0x99);
        assert_eq!(R::PayloadFormatInvalid("x").v5(QoS::AtMostOnce), V5Verdict::Drop);
        assert!(matches!(
            R::ShuttingDown.v5(QoS::AtLeastOnce),
            V5Verdict::Disconnect(ConnError { code: DisconnectReasonCode::ServerShuttingDown, .. })
        ));
    }

    #[test]
    fn v3_never_acks_what_was_not_stored() {
        use PublishRejection as R;
        assert_eq!(R::NotAuthorized.v3(), V3Verdict::AckAndDrop);
        assert_eq!(R::PayloadFormatInvalid("x").v3(), V3Verdict::AckAndDrop);
        for r in [
            R::TopicInvalid,
            R::PayloadTooLarge,
            R::Busy,
            R::Storage,
            R::StorageFull,
            R::ShuttingDown,
        ] {
            assert!(matches!(r.v3(), V3Verdict::Close(_)), "{r:?}");
        }
    }

    #[test]
    fn routed_publishes_report_missing_subscribers() {
        let routed = |matched, shared| publish_routed_v5(PublishOutcome { matched, shared });
        assert_eq!(routed(0, false), PublishAckReason::NoMatchingSubscribers);
        assert_eq!(routed(3, false), PublishAckReason::Success);
        // Other instances' subscribers are not counted here.
        assert_eq!(routed(0, true), PublishAckReason::Success);
    }

    #[test]
    fn subscribe_errors_map_to_suback_codes() {
        assert_eq!(suback_v5(SubscribeError::QuotaExceeded), SubscribeAckReason::QuotaExceeded);
        assert_eq!(suback_v5(SubscribeError::NotAuthorized), SubscribeAckReason::NotAuthorized);
        assert_eq!(u8::from(suback_v5(SubscribeError::FilterInvalid)), 0x8F);
        assert_eq!(SubscribeRefusal::NotAuthorized.v5(), SubscribeAckReason::NotAuthorized);
    }

    #[test]
    fn kicks_and_protocol_errors_get_their_disconnect_codes() {
        assert_eq!(
            kicked(KickReason::SessionTakenOver).code,
            DisconnectReasonCode::SessionTakenOver
        );
        assert_eq!(u8::from(kicked(KickReason::ServerShuttingDown).code), 0x8B);
        let wildcard = ProtocolError::spec(SpecViolation::Pub_3_3_2_2);
        assert_eq!(protocol_error(&wildcard).reason_code, DisconnectReasonCode::TopicNameInvalid);
        let alias = ProtocolError::spec(SpecViolation::Connack_3_2_2_17);
        assert_eq!(protocol_error(&alias).reason_code, DisconnectReasonCode::TopicAliasInvalid);
        let other = ProtocolError::spec(SpecViolation::Subs_4_7_1);
        assert_eq!(protocol_error(&other).reason_code, DisconnectReasonCode::ProtocolError);
    }

    #[test]
    fn overloads_map_to_connack_codes() {
        assert_eq!(u8::from(Overload::MaxConnections.v5()), 0x97);
        assert_eq!(u8::from(Overload::ConnectRate.v5()), 0x9F);
        assert_eq!(u8::from(Overload::ConnectRate.v3()), 0x03);
        assert_eq!(u8::from(unexpected_packet("second CONNECT").code), 0x82);
    }

    #[test]
    fn conn_errors_carry_their_reason_into_the_disconnect() {
        let d = NO_LOCAL_ON_SHARED.disconnect();
        assert_eq!(d.reason_code, DisconnectReasonCode::ProtocolError);
        assert_eq!(d.reason_string.as_deref(), Some("no local on a shared subscription"));
        assert_eq!(
            NO_LOCAL_ON_SHARED.to_string(),
            "no local on a shared subscription (reason code 130)"
        );
    }
}
