//! The PROXY protocol step in front of the API listener (see
//! [`crate::proxy_protocol`]): only in the chain when it is on. The header
//! is read with exact reads (the parser never asks for a byte past it), so
//! the socket is handed on untouched, with the client the balancer speaks
//! for as the connection's peer address: `HttpRequest::peer_addr` is that
//! client everywhere (throttles, lockouts, SSE caps, logs).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_rt::net::{ActixStream, Ready, TcpStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::proxy_protocol::header::{V1_MAX, V2_MAX_PAYLOAD};
use crate::proxy_protocol::{HEADER_DEADLINE, Parsed, ProxyProtocol, Refusal};

/// The longest header the parser accepts.
const MAX_HEADER: usize = if V1_MAX > 16 + V2_MAX_PAYLOAD { V1_MAX } else { 16 + V2_MAX_PAYLOAD };

/// Check the peer, read and consume its header: the client address, or
/// `None` once the connection is refused (logged and counted; dropping the
/// socket closes it).
pub(super) async fn accept(io: &mut TcpStream, policy: &ProxyProtocol) -> Option<SocketAddr> {
    let peer = io.peer_addr().ok();
    let read = async {
        if !policy.trusts(peer) {
            return Err(Refusal::Untrusted);
        }
        tokio::time::timeout(HEADER_DEADLINE, read_header(io))
            .await
            .unwrap_or(Err(Refusal::Timeout))
    };
    match read.await {
        Ok(source) => source.or(peer),
        Err(why) => {
            policy.refused(peer, why);
            None
        }
    }
}

async fn read_header(io: &mut TcpStream) -> Result<Option<SocketAddr>, Refusal> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut len = 0;
    loop {
        match crate::proxy_protocol::parse(&buf[..len]) {
            Ok(Parsed::Complete { source, .. }) => return Ok(source),
            Ok(Parsed::Incomplete { at_least }) => {
                let end = len + at_least;
                // The parser bounds every header below MAX_HEADER.
                let into = buf.get_mut(len..end).ok_or(Refusal::Closed)?;
                io.read_exact(into).await.map_err(|_| Refusal::Closed)?;
                len = end;
            }
            Err(e) => return Err(Refusal::Malformed(e)),
        }
    }
}

/// A TCP stream whose header has been read, carrying its client address
/// through the TLS handshake (for the HTTPS listener).
pub(super) struct ProxiedStream {
    pub(super) io: TcpStream,
    pub(super) client: Option<SocketAddr>,
}

impl AsyncRead for ProxiedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProxiedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl ActixStream for ProxiedStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_read_ready(&self.io, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_write_ready(&self.io, cx)
    }
}
