//! Opening benchmark connections: TCP with `TCP_NODELAY`, CONNECT → CONNACK,
//! SUBSCRIBE → SUBACK. What happens after that is the scenario's business.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::TargetArgs;
use super::wire::{self, Connect, Packet, QoS, Version};

/// How long CONNECT → CONNACK and SUBSCRIBE → SUBACK may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Read buffer capacity per connection.
pub const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("TCP connect failed: {0}")]
    Tcp(std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker refused the connection (code {0:#04x})")]
    Refused(u8),
    #[error("the broker refused the subscription (code {0:#04x})")]
    SubscribeRefused(u8),
    #[error("the broker closed the connection")]
    Closed,
    #[error("timed out waiting for the broker")]
    Timeout,
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A short stable label for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Tcp(_) => "tcp_connect",
            ClientError::Io(_) => "io",
            ClientError::Refused(_) => "refused",
            ClientError::SubscribeRefused(_) => "subscribe_refused",
            ClientError::Closed => "closed",
            ClientError::Timeout => "timeout",
            ClientError::Protocol(_) => "protocol",
        }
    }
}

/// An MQTT session that completed its CONNECT.
pub struct Connection {
    pub stream: TcpStream,
    pub version: Version,
    /// Bytes read past the CONNACK/SUBACK (the broker may send early).
    pub read_buf: BytesMut,
    /// The broker's v5 Receive Maximum, if it sent one.
    pub receive_maximum: Option<u16>,
}

impl Connection {
    pub async fn open(target: &TargetArgs, client_id: &str) -> Result<Self, ClientError> {
        let stream = connect(target).await.map_err(ClientError::Tcp)?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream,
            version: target.mqtt_version,
            read_buf: BytesMut::with_capacity(READ_BUFFER),
            receive_maximum: None,
        };
        let mut out = Vec::with_capacity(64);
        wire::encode_connect(
            &mut out,
            &Connect {
                version: target.mqtt_version,
                client_id,
                keep_alive_secs: target.keep_alive,
                clean: true,
                username: target.username.as_deref(),
                password: target.password.as_deref(),
            },
        );
        conn.stream.write_all(&out).await?;
        match conn.next_packet(|p| matches!(p, Packet::ConnAck { .. })).await? {
            Reply::ConnAck { code: 0, receive_maximum } => {
                conn.receive_maximum = receive_maximum;
                Ok(conn)
            }
            Reply::ConnAck { code, .. } => Err(ClientError::Refused(code)),
            Reply::SubAck(_) => unreachable!("waited for a CONNACK"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(16 + filter.len());
        wire::encode_subscribe(&mut out, self.version, 1, filter, qos);
        self.stream.write_all(&out).await?;
        match self.next_packet(|p| matches!(p, Packet::SubAck { .. })).await? {
            Reply::SubAck(code) if code < 0x80 => Ok(()),
            Reply::SubAck(code) => Err(ClientError::SubscribeRefused(code)),
            Reply::ConnAck { .. } => unreachable!("waited for a SUBACK"),
        }
    }

    /// Read until a packet `wanted` accepts arrives; leave later bytes buffered.
    async fn next_packet(
        &mut self,
        wanted: impl Fn(&Packet<'_>) -> bool,
    ) -> Result<Reply, ClientError> {
        let read = async {
            loop {
                while let Some((packet, used)) = wire::decode(&self.read_buf, self.version)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?
                {
                    let reply = match &packet {
                        p if !wanted(p) => None,
                        Packet::ConnAck { code, receive_maximum, .. } => {
                            Some(Reply::ConnAck { code: *code, receive_maximum: *receive_maximum })
                        }
                        Packet::SubAck { codes, .. } => {
                            Some(Reply::SubAck(codes.first().copied().unwrap_or(0x80)))
                        }
                        _ => None,
                    };
                    if let Packet::Disconnect { code } = packet {
                        return Err(ClientError::Protocol(format!(
                            "the broker sent DISCONNECT (code {code:#04x})"
                        )));
                    }
                    let _ = self.read_buf.split_to(used);
                    if let Some(reply) = reply {
                        return Ok(reply);
                    }
                }
                if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await.map_err(|_| ClientError::Timeout)?
    }
}

/// TCP to the broker, from the next of `--source-addresses` loopback
/// addresses in turn when there are several.
async fn connect(target: &TargetArgs) -> std::io::Result<TcpStream> {
    static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);
    let loopback = target.host.parse::<Ipv4Addr>().is_ok_and(|ip| ip == Ipv4Addr::LOCALHOST);
    if target.source_addresses <= 1 || !loopback {
        return TcpStream::connect((target.host.as_str(), target.port)).await;
    }
    let k = NEXT_SOURCE.fetch_add(1, Relaxed) % usize::from(target.source_addresses);
    let source = Ipv4Addr::new(127, 0, 0, 1 + k as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    socket.connect(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, target.port))).await
}

enum Reply {
    ConnAck { code: u8, receive_maximum: Option<u16> },
    SubAck(u8),
}
