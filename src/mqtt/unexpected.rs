//! Packets a connected client must never send (a second CONNECT, CONNACK,
//! SUBACK, UNSUBACK, PINGRESP, a SUBSCRIBE or UNSUBSCRIBE without topic
//! filters): refused in front of ntex-mqtt 8.2.1's MQTT 5.0 dispatcher, which
//! would silently ignore or answer them, and by the 3.1.1 loop (`direct`).
//! Each is a protocol error: v5 gets DISCONNECT 0x82, 3.1.1 a closed
//! connection.

use std::sync::atomic::Ordering::Relaxed;

use ntex::service::cfg::SharedCfg;
use ntex::service::{Middleware, Service, ServiceCtx};
use ntex_mqtt::error::DispatcherError;
use ntex_mqtt::{v3, v5};

use super::reason::{self, ConnError};
use super::session::Conn;
use crate::telemetry::names::{CLIENT_ID, MQTT_REASON_CODE};

/// What is wrong with a packet, if anything.
fn v5_verdict(pkt: &v5::codec::Packet) -> Option<&'static str> {
    use v5::codec::Packet as P;
    match pkt {
        P::Connect(_) => Some("second CONNECT"),
        P::ConnectAck(_) | P::SubscribeAck(_) | P::UnsubscribeAck(_) | P::PingResponse => {
            Some("packet only a server may send")
        }
        P::Subscribe(s) if s.topic_filters.is_empty() => Some("SUBSCRIBE without topic filters"),
        P::Unsubscribe(u) if u.topic_filters.is_empty() => {
            Some("UNSUBSCRIBE without topic filters")
        }
        _ => None,
    }
}

pub(super) fn v3_verdict(pkt: &v3::codec::Packet) -> Option<&'static str> {
    use v3::codec::Packet as P;
    match pkt {
        P::Connect(_) => Some("second CONNECT"),
        P::ConnectAck(_) | P::SubscribeAck { .. } | P::UnsubscribeAck { .. } | P::PingResponse => {
            Some("packet only a server may send")
        }
        P::Subscribe { topic_filters, .. } if topic_filters.is_empty() => {
            Some("SUBSCRIBE without topic filters")
        }
        P::Unsubscribe { topic_filters, .. } if topic_filters.is_empty() => {
            Some("UNSUBSCRIBE without topic filters")
        }
        _ => None,
    }
}

/// Count, log and turn into the error that ends the connection.
pub(super) fn refused(conn: &Conn, why: &'static str) -> ConnError {
    let err = reason::unexpected_packet(why);
    conn.broker.stats().protocol_errors.fetch_add(1, Relaxed);
    tracing::warn!(
        parent: &conn.span,
        { { CLIENT_ID } = %conn.client_id, { MQTT_REASON_CODE } = u8::from(err.code) },
        "protocol error: {why}"
    );
    err
}

fn refuse(conn: &Conn, why: &'static str) -> DispatcherError<ConnError> {
    DispatcherError::Service(refused(conn, why))
}

/// The v5 middleware.
pub(super) struct UnexpectedV5;

impl<S> Middleware<S, (SharedCfg, v5::Session<Conn>)> for UnexpectedV5 {
    type Service = UnexpectedService<S>;

    fn create(&self, inner: S, (_, session): (SharedCfg, v5::Session<Conn>)) -> Self::Service {
        UnexpectedService { inner, conn: (*session).clone() }
    }
}

pub(super) struct UnexpectedService<S> {
    inner: S,
    conn: Conn,
}

/// A decoded packet of either protocol level, judged by its verdict.
pub(super) trait Judged {
    fn verdict(&self) -> Option<&'static str>;
}

impl Judged for v5::codec::Decoded {
    fn verdict(&self) -> Option<&'static str> {
        match self {
            v5::codec::Decoded::Packet(pkt, _) => v5_verdict(pkt),
            _ => None,
        }
    }
}

impl<S, R> Service<R> for UnexpectedService<S>
where
    R: Judged,
    S: Service<R, Error = DispatcherError<ConnError>>,
{
    type Response = S::Response;
    type Error = DispatcherError<ConnError>;

    ntex::forward_ready!(inner);
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(&self, req: R, ctx: ServiceCtx<'_, Self>) -> Result<S::Response, Self::Error> {
        if let Some(why) = req.verdict() {
            return Err(refuse(&self.conn, why));
        }
        // The dispatcher checked the whole chain's readiness just before.
        ctx.call_nowait(&self.inner, req).await
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;

    #[test]
    fn server_only_packets_and_empty_subscriptions_are_protocol_errors() {
        use v3::codec::Packet as P3;
        use v5::codec::Packet as P5;
        let id = NonZeroU16::new(1).unwrap();
        assert_eq!(v5_verdict(&P5::PingResponse), Some("packet only a server may send"));
        assert_eq!(v5_verdict(&P5::PingRequest), None);
        let empty = v5::codec::Subscribe {
            packet_id: id,
            id: None,
            user_properties: Vec::new(),
            topic_filters: Vec::new(),
        };
        assert_eq!(v5_verdict(&P5::Subscribe(empty)), Some("SUBSCRIBE without topic filters"));
        assert_eq!(
            v3_verdict(&P3::Unsubscribe { packet_id: id, topic_filters: Vec::new() }),
            Some("UNSUBSCRIBE without topic filters")
        );
        assert_eq!(
            v3_verdict(&P3::Unsubscribe { packet_id: id, topic_filters: vec!["a".into()] }),
            None
        );
        assert_eq!(v3_verdict(&P3::PingRequest), None);
    }
}
