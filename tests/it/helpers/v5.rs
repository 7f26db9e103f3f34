//! An MQTT 5 test client: rumqttc's `v5::AsyncClient`, its event loop polled in
//! a task that forwards every packet the broker sends (and how the connection
//! ended) to the test.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::Transport;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, LastWillProperties, Packet,
    PubAck, PubRec, Publish, PublishProperties, SubAck, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::inbox::{Inbox, InboxEvent};
use super::{QUIET, RECV, text};

/// What the event-loop task reports.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few per test; boxing would only obscure the matches"
)]
pub enum V5Event {
    Packet(Packet),
    Closed(Closed),
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone)]
pub struct Closed {
    /// Reason code of the DISCONNECT the broker sent, if it sent one.
    pub server_reason: Option<DisconnectReasonCode>,
    /// CONNACK refusal, if the broker refused the connection.
    pub refused: Option<ConnectReturnCode>,
    #[allow(dead_code, reason = "shown through Debug in failure messages")]
    pub error: String,
}

impl InboxEvent for V5Event {
    fn is_closed(&self) -> bool {
        matches!(self, V5Event::Closed(_))
    }
}

/// Builder for a v5 connection.
pub struct V5Options {
    opts: MqttOptions,
}

impl V5Options {
    pub fn new(client_id: &str, addr: SocketAddr) -> Self {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_connection_timeout(5);
        Self { opts }
    }

    /// Connect over WebSocket to `url` (e.g. `ws://127.0.0.1:1234/mqtt`).
    pub fn new_ws(client_id: &str, url: &str, port: u16) -> Self {
        let mut opts = MqttOptions::new(client_id, url, port);
        opts.set_transport(Transport::Ws);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_connection_timeout(5);
        Self { opts }
    }

    /// Connect over TLS to `addr`, trusting only `ca` (DER).
    pub fn new_tls(client_id: &str, addr: SocketAddr, ca: &[u8]) -> Self {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_transport(super::tls_transport(ca));
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_connection_timeout(5);
        Self { opts }
    }

    pub fn clean_start(mut self, clean: bool) -> Self {
        self.opts.set_clean_start(clean);
        self
    }

    pub fn session_expiry(mut self, secs: Option<u32>) -> Self {
        self.opts.set_session_expiry_interval(secs);
        self
    }

    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.opts.set_credentials(user, password);
        self
    }

    /// A will message; `delay` is the v5 will delay interval in seconds.
    pub fn will(
        mut self,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
        delay: Option<u32>,
    ) -> Self {
        let props =
            delay.map(|d| LastWillProperties { delay_interval: Some(d), ..will_properties() });
        self.opts.set_last_will(LastWill::new(
            topic,
            payload.as_bytes().to_vec(),
            qos,
            retain,
            props,
        ));
        self
    }

    /// Acknowledge incoming QoS≥1 publishes only when the test calls [`V5Client::ack`].
    pub fn manual_acks(mut self) -> Self {
        self.opts.set_manual_acks(true);
        self
    }

    /// The client's maximum packet size, announced to the broker.
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.opts.set_max_packet_size(Some(bytes));
        self
    }

    pub fn keep_alive(mut self, secs: u64) -> Self {
        self.opts.set_keep_alive(Duration::from_secs(secs));
        self
    }

    /// Connect; panics with the reason if the broker refuses.
    pub async fn connect(self) -> V5Client {
        let id = self.opts.client_id();
        match self.try_connect().await {
            Ok(c) => c,
            Err(closed) => panic!("v5 client {id:?} could not connect: {closed:?}"),
        }
    }

    /// Connect, returning how it failed instead of panicking.
    pub async fn try_connect(self) -> Result<V5Client, Closed> {
        let (client, mut eventloop) = AsyncClient::new(self.opts, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PingResp(_))) | Ok(Event::Outgoing(_)) => {}
                    Ok(Event::Incoming(p)) => {
                        if tx.send(V5Event::Packet(p)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let server_reason = match &e {
                            ConnectionError::MqttState(StateError::ServerDisconnect {
                                reason_code,
                                ..
                            }) => Some(*reason_code),
                            _ => None,
                        };
                        let refused = match &e {
                            ConnectionError::ConnectionRefused(code) => Some(*code),
                            ConnectionError::MqttState(StateError::ConnFail { reason }) => {
                                Some(*reason)
                            }
                            _ => None,
                        };
                        let _ = tx.send(V5Event::Closed(Closed {
                            server_reason,
                            refused,
                            error: e.to_string(),
                        }));
                        // Never reconnect: a test opens a new client for that.
                        return;
                    }
                }
            }
        });
        let mut inbox = Inbox::new(rx);
        let first = inbox
            .next_where(RECV, |e| {
                matches!(e, V5Event::Packet(Packet::ConnAck(_)) | V5Event::Closed(_))
            })
            .await;
        let first = match first {
            Some(e) => Some(e),
            // A Closed event stays buffered; fetch it.
            None => inbox.next_where(Duration::ZERO, |e| e.is_closed()).await,
        };
        match first {
            Some(V5Event::Packet(Packet::ConnAck(connack))) => {
                Ok(V5Client { client, connack, inbox, task })
            }
            Some(V5Event::Closed(closed)) => {
                task.abort();
                Err(closed)
            }
            _ => {
                task.abort();
                Err(Closed {
                    server_reason: None,
                    refused: None,
                    error: "no CONNACK within timeout".into(),
                })
            }
        }
    }
}

pub struct V5Client {
    pub client: AsyncClient,
    pub connack: ConnAck,
    inbox: Inbox<V5Event>,
    task: JoinHandle<()>,
}

impl V5Client {
    pub fn session_present(&self) -> bool {
        self.connack.session_present
    }

    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Bytes>) {
        self.client.publish(topic, qos, retain, payload.into()).await.expect("queue publish");
    }

    pub async fn publish_with(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
        props: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload.into(), props)
            .await
            .expect("queue publish");
    }

    /// Publish at QoS 1 and wait for the broker's PUBACK.
    pub async fn publish_qos1(
        &mut self,
        topic: &str,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> PubAck {
        self.publish(topic, QoS::AtLeastOnce, retain, payload).await;
        self.recv_puback().await
    }

    /// Publish at QoS 2 and wait for the whole PUBREC/PUBREL/PUBCOMP exchange.
    pub async fn publish_qos2(
        &mut self,
        topic: &str,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> PubRec {
        self.publish(topic, QoS::ExactlyOnce, retain, payload).await;
        let rec = self.recv_pubrec().await;
        match self
            .inbox
            .next_where(RECV, |e| matches!(e, V5Event::Packet(Packet::PubComp(_))))
            .await
        {
            Some(_) => rec,
            None => panic!("no PUBCOMP within {RECV:?}; pending: {:?}", self.inbox.drain_now()),
        }
    }

    pub async fn recv_puback(&mut self) -> PubAck {
        match self.inbox.next_where(RECV, |e| matches!(e, V5Event::Packet(Packet::PubAck(_)))).await
        {
            Some(V5Event::Packet(Packet::PubAck(ack))) => ack,
            _ => panic!("no PUBACK within {RECV:?}; pending: {:?}", self.inbox.drain_now()),
        }
    }

    pub async fn recv_pubrec(&mut self) -> PubRec {
        match self.inbox.next_where(RECV, |e| matches!(e, V5Event::Packet(Packet::PubRec(_)))).await
        {
            Some(V5Event::Packet(Packet::PubRec(rec))) => rec,
            _ => panic!("no PUBREC within {RECV:?}; pending: {:?}", self.inbox.drain_now()),
        }
    }

    /// Subscribe and wait for the SUBACK; panics unless the subscription is granted.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe_with(Filter::new(filter, qos), None).await;
        assert!(
            matches!(codes.as_slice(), [SubscribeReasonCode::Success(_)]),
            "SUBSCRIBE {filter:?} refused: {codes:?}"
        );
    }

    /// Subscribe with full v5 options; returns the SUBACK reason codes.
    pub async fn subscribe_with(
        &mut self,
        filter: Filter,
        props: Option<SubscribeProperties>,
    ) -> Vec<SubscribeReasonCode> {
        match props {
            Some(p) => self.client.subscribe_many_with_properties([filter], p).await,
            None => self.client.subscribe_many([filter]).await,
        }
        .expect("queue subscribe");
        self.recv_suback().await.return_codes
    }

    pub async fn recv_suback(&mut self) -> SubAck {
        match self.inbox.next_where(RECV, |e| matches!(e, V5Event::Packet(Packet::SubAck(_)))).await
        {
            Some(V5Event::Packet(Packet::SubAck(ack))) => ack,
            _ => panic!("no SUBACK within {RECV:?}; pending: {:?}", self.inbox.drain_now()),
        }
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.expect("queue unsubscribe");
        if self
            .inbox
            .next_where(RECV, |e| matches!(e, V5Event::Packet(Packet::UnsubAck(_))))
            .await
            .is_none()
        {
            panic!("no UNSUBACK within {RECV:?}");
        }
    }

    /// The next PUBLISH from the broker, or `None` after `timeout`.
    pub async fn try_recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
        match self
            .inbox
            .next_where(timeout, |e| matches!(e, V5Event::Packet(Packet::Publish(_))))
            .await
        {
            Some(V5Event::Packet(Packet::Publish(p))) => Some(p),
            _ => None,
        }
    }

    /// The next PUBLISH from the broker; panics if none arrives in time.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.try_recv_publish(RECV).await {
            Some(p) => p,
            None => panic!("expected a PUBLISH within {RECV:?}; got {:?}", self.inbox.drain_now()),
        }
    }

    /// The next `n` publishes.
    pub async fn recv_publishes(&mut self, n: usize) -> Vec<Publish> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match self.try_recv_publish(RECV).await {
                Some(p) => out.push(p),
                None => panic!(
                    "expected {n} publishes, got {i}: {:?}",
                    out.iter().map(|p: &Publish| (topic(p), text(&p.payload))).collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    /// Panics if a PUBLISH arrives within `dur`.
    pub async fn expect_no_publish(&mut self, dur: Duration) {
        if let Some(p) = self.try_recv_publish(dur).await {
            panic!("unexpected PUBLISH on {:?}: {:?} ({p:?})", topic(&p), text(&p.payload));
        }
    }

    /// Panics if a PUBLISH arrives within [`QUIET`].
    pub async fn expect_quiet(&mut self) {
        self.expect_no_publish(QUIET).await
    }

    /// Every publish arriving within `dur`.
    pub async fn collect_publishes(&mut self, dur: Duration) -> Vec<Publish> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv_publish(left).await {
                Some(p) => out.push(p),
                None => return out,
            }
        }
    }

    /// Wait until the connection ends; panics if it is still open after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Closed {
        match self.inbox.next_where(timeout, |e| e.is_closed()).await {
            Some(V5Event::Closed(c)) => c,
            _ => panic!("connection still open after {timeout:?}"),
        }
    }

    /// How the connection ended, if it did within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> Option<Closed> {
        match self.inbox.next_where(timeout, |e| e.is_closed()).await {
            Some(V5Event::Closed(c)) => Some(c),
            _ => None,
        }
    }

    /// Send DISCONNECT (normal, will discarded) and wait for the broker to close.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue disconnect");
        let _ = self.inbox.next_where(Duration::from_secs(1), |e| e.is_closed()).await;
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Drop the TCP connection without DISCONNECT (a crash or network loss).
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// The set of distinct topics among `publishes`.
    pub fn topics(publishes: &[Publish]) -> HashSet<String> {
        publishes.iter().map(topic).collect()
    }
}

impl Drop for V5Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Will properties with nothing set (rumqttc has no `Default` for them).
pub fn will_properties() -> LastWillProperties {
    LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

/// A publish's topic as text.
pub fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}
