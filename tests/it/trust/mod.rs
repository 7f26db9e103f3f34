//! Attacks a stranger on the internet can try, each run from outside against
//! the real server: one module per attack.

mod admin_routes;
mod clock;
mod crash_files;
mod encoded_bodies;
mod hashing;
mod hijack;
mod invalid_utf8;
mod lockout;
mod malformed_requests;
mod reserved_topics;
mod revocation;
mod slow_requests;
mod sse_streams;
mod strangers;
mod visibility;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mapcast_bench::wire::{Connect, Packet, Version, decode, encode_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A loopback source address (all of 127/8 is local): a stand-in for one
/// host on the internet.
pub fn host(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A REST client whose requests come from `source`.
pub fn http_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a reqwest client")
}

/// Connect from `source` and send a clean CONNECT with `username` and
/// `password`; the socket and the CONNACK code (`None`: closed without one).
pub async fn connect_from(
    source: IpAddr,
    broker: SocketAddr,
    version: Version,
    client_id: &str,
    username: &str,
    password: &str,
) -> (TcpStream, Option<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(broker).await.expect("TCP connect");
    stream.set_nodelay(true).unwrap();
    let mut packet = Vec::new();
    let connect = Connect {
        version,
        client_id,
        keep_alive_secs: 60,
        clean: true,
        username: Some(username),
        password: Some(password),
    };
    encode_connect(&mut packet, &connect);
    stream.write_all(&packet).await.unwrap();
    let mut buf = Vec::new();
    let code = loop {
        if let Ok(Some((Packet::ConnAck { code, .. }, _))) = decode(&buf, version) {
            break Some(code);
        }
        let mut chunk = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no CONNACK and no close within 30 s"),
        }
    };
    (stream, code)
}
