//! An MQTT 3.1.1 test client: rumqttc's `AsyncClient`, its event loop polled in
//! a task that forwards every packet the broker sends (and how the connection
//! ended) to the test.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet,
    PubAck, Publish, QoS, SubscribeReasonCode, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::inbox::{Inbox, InboxEvent};
use super::{QUIET, RECV, text};

#[derive(Debug)]
pub enum V3Event {
    Packet(Packet),
    Closed(Closed),
}

#[derive(Debug, Clone)]
pub struct Closed {
    /// CONNACK refusal, if the broker refused the connection.
    pub refused: Option<ConnectReturnCode>,
    #[allow(dead_code, reason = "shown through Debug in failure messages")]
    pub error: String,
}

impl InboxEvent for V3Event {
    fn is_closed(&self) -> bool {
        matches!(self, V3Event::Closed(_))
    }
}

pub struct V3Options {
    opts: MqttOptions,
}

impl V3Options {
    pub fn new(client_id: &str, addr: SocketAddr) -> Self {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        Self { opts }
    }

    /// Connect over WebSocket to `url` (e.g. `ws://127.0.0.1:1234/mqtt`).
    pub fn new_ws(client_id: &str, url: &str, port: u16) -> Self {
        let mut opts = MqttOptions::new(client_id, url, port);
        opts.set_transport(Transport::Ws);
        opts.set_keep_alive(Duration::from_secs(30));
        Self { opts }
    }

    /// Connect over TLS to `addr`, trusting only `ca` (DER).
    pub fn new_tls(client_id: &str, addr: SocketAddr, ca: &[u8]) -> Self {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_transport(super::tls_transport(ca));
        opts.set_keep_alive(Duration::from_secs(30));
        Self { opts }
    }

    pub fn clean_session(mut self, clean: bool) -> Self {
        self.opts.set_clean_session(clean);
        self
    }

    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.opts.set_credentials(user, password);
        self
    }

    pub fn will(mut self, topic: &str, payload: &str, qos: QoS, retain: bool) -> Self {
        self.opts.set_last_will(LastWill::new(topic, payload.as_bytes().to_vec(), qos, retain));
        self
    }

    pub fn manual_acks(mut self) -> Self {
        self.opts.set_manual_acks(true);
        self
    }

    pub async fn connect(self) -> V3Client {
        let id = self.opts.client_id();
        match self.try_connect().await {
            Ok(c) => c,
            Err(closed) => panic!("v3 client {id:?} could not connect: {closed:?}"),
        }
    }

    pub async fn try_connect(self) -> Result<V3Client, Closed> {
        let (client, mut eventloop) = AsyncClient::new(self.opts, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PingResp)) | Ok(Event::Outgoing(_)) => {}
                    Ok(Event::Incoming(p)) => {
                        if tx.send(V3Event::Packet(p)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let refused = match &e {
                            ConnectionError::ConnectionRefused(code) => Some(*code),
                            _ => None,
                        };
                        let _ = tx.send(V3Event::Closed(Closed { refused, error: e.to_string() }));
                        return;
                    }
                }
            }
        });
        let mut inbox = Inbox::new(rx);
        let first = match inbox
            .next_where(RECV, |e| {
                matches!(e, V3Event::Packet(Packet::ConnAck(_)) | V3Event::Closed(_))
            })
            .await
        {
            Some(e) => Some(e),
            None => inbox.next_where(Duration::ZERO, |e| e.is_closed()).await,
        };
        match first {
            Some(V3Event::Packet(Packet::ConnAck(connack))) => {
                Ok(V3Client { client, connack, inbox, task })
            }
            Some(V3Event::Closed(closed)) => {
                task.abort();
                Err(closed)
            }
            _ => {
                task.abort();
                Err(Closed { refused: None, error: "no CONNACK within timeout".into() })
            }
        }
    }
}

pub struct V3Client {
    pub client: AsyncClient,
    pub connack: ConnAck,
    inbox: Inbox<V3Event>,
    task: JoinHandle<()>,
}

impl V3Client {
    pub fn session_present(&self) -> bool {
        self.connack.session_present
    }

    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Bytes>) {
        self.client.publish(topic, qos, retain, payload.into()).await.expect("queue publish");
    }

    /// Publish at QoS 1 and wait for the broker's PUBACK.
    pub async fn publish_qos1(
        &mut self,
        topic: &str,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> PubAck {
        self.publish(topic, QoS::AtLeastOnce, retain, payload).await;
        match self.inbox.next_where(RECV, |e| matches!(e, V3Event::Packet(Packet::PubAck(_)))).await
        {
            Some(V3Event::Packet(Packet::PubAck(ack))) => ack,
            _ => panic!("no PUBACK within {RECV:?}; pending: {:?}", self.inbox.drain_now()),
        }
    }

    /// Publish at QoS 2 and wait for the whole PUBREC/PUBREL/PUBCOMP exchange.
    pub async fn publish_qos2(&mut self, topic: &str, retain: bool, payload: impl Into<Bytes>) {
        self.publish(topic, QoS::ExactlyOnce, retain, payload).await;
        if self
            .inbox
            .next_where(RECV, |e| matches!(e, V3Event::Packet(Packet::PubComp(_))))
            .await
            .is_none()
        {
            panic!("no PUBCOMP within {RECV:?}; pending: {:?}", self.inbox.drain_now());
        }
    }

    /// Subscribe and wait for the SUBACK; panics unless granted.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe_codes(filter, qos).await;
        assert!(
            matches!(codes.as_slice(), [SubscribeReasonCode::Success(_)]),
            "SUBSCRIBE {filter:?} refused: {codes:?}"
        );
    }

    pub async fn subscribe_codes(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.expect("queue subscribe");
        match self.inbox.next_where(RECV, |e| matches!(e, V3Event::Packet(Packet::SubAck(_)))).await
        {
            Some(V3Event::Packet(Packet::SubAck(ack))) => ack.return_codes,
            _ => panic!("no SUBACK within {RECV:?}; pending: {:?}", self.inbox.drain_now()),
        }
    }

    pub async fn try_recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
        match self
            .inbox
            .next_where(timeout, |e| matches!(e, V3Event::Packet(Packet::Publish(_))))
            .await
        {
            Some(V3Event::Packet(Packet::Publish(p))) => Some(p),
            _ => None,
        }
    }

    pub async fn recv_publish(&mut self) -> Publish {
        match self.try_recv_publish(RECV).await {
            Some(p) => p,
            None => panic!("expected a PUBLISH within {RECV:?}; got {:?}", self.inbox.drain_now()),
        }
    }

    pub async fn recv_publishes(&mut self, n: usize) -> Vec<Publish> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match self.try_recv_publish(RECV).await {
                Some(p) => out.push(p),
                None => panic!(
                    "expected {n} publishes, got {i}: {:?}",
                    out.iter()
                        .map(|p: &Publish| (p.topic.clone(), text(&p.payload)))
                        .collect::<Vec<_>>()
                ),
            }
        }
        out
    }

    pub async fn expect_no_publish(&mut self, dur: Duration) {
        if let Some(p) = self.try_recv_publish(dur).await {
            panic!("unexpected PUBLISH on {:?}: {:?}", p.topic, text(&p.payload));
        }
    }

    pub async fn expect_quiet(&mut self) {
        self.expect_no_publish(QUIET).await
    }

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

    pub async fn wait_closed(&mut self, timeout: Duration) -> Closed {
        match self.inbox.next_where(timeout, |e| e.is_closed()).await {
            Some(V3Event::Closed(c)) => c,
            _ => panic!("connection still open after {timeout:?}"),
        }
    }

    /// Send DISCONNECT (will discarded) and wait for the broker to close.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue disconnect");
        let _ = self.inbox.next_where(Duration::from_secs(1), |e| e.is_closed()).await;
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Drop the TCP connection without DISCONNECT.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for V3Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
