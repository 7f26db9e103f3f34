//! The PROXY protocol step in front of an MQTT listener (see
//! [`crate::proxy_protocol`]): only in the chain of a listener that has it
//! on. It reads the header from the connection's first bytes (what follows
//! stays buffered for TLS or MQTT), then adds an I/O layer that answers
//! every `PeerAddr` query with the client the balancer speaks for, so
//! admission, CONNECT handling and logs see that client.

use std::any::{Any, TypeId};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use ntex::io::types::PeerAddr;
use ntex::io::{Filter, FilterBuf, FilterLayer, Io, Layer};
use ntex::service::{ServiceFactory, fn_service};
use ntex::time::Millis;

use super::framing::pass_writes;
use crate::proxy_protocol::{HEADER_DEADLINE, Parsed, ProxyProtocol, Refusal};

/// The client a proxied connection stands for.
#[derive(Debug)]
pub(super) struct ProxiedPeer(SocketAddr);

impl FilterLayer for ProxiedPeer {
    fn query(&self, id: TypeId) -> Option<Box<dyn Any>> {
        (id == TypeId::of::<PeerAddr>()).then(|| Box::new(PeerAddr(self.0)) as Box<dyn Any>)
    }

    // Bytes pass unchanged (buffers are swapped, not copied).
    fn process_read_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        buf.with_read_buffers(|src, dst| {
            if let Some(src) = src {
                if dst.is_empty() {
                    std::mem::swap(src, dst);
                } else {
                    dst.extend_from_slice(src);
                    src.clear();
                }
            }
        });
        Ok(())
    }

    fn process_write_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        pass_writes(buf)
    }
}

/// The step: a trusted peer's header is read within [`HEADER_DEADLINE`] and
/// consumed; any other connection is closed (logged and counted).
pub(super) fn proxied<F: Filter, C>(
    policy: Arc<ProxyProtocol>,
) -> impl ServiceFactory<Io<F>, C, Response = Io<Layer<ProxiedPeer, F>>, Error = (), InitError = ()>
{
    fn_service(move |io: Io<F>| {
        let policy = policy.clone();
        async move {
            let peer = io.query::<PeerAddr>().as_ref().map(|p| p.0);
            let read = async {
                if !policy.trusts(peer) {
                    return Err(Refusal::Untrusted);
                }
                let deadline = Millis::from(HEADER_DEADLINE);
                match ntex::time::timeout(deadline, read_header(&io)).await {
                    Ok(read) => read,
                    Err(()) => Err(Refusal::Timeout),
                }
            };
            match (read.await, peer) {
                (Ok(source), Some(peer)) => Ok(io.add_filter(ProxiedPeer(source.unwrap_or(peer)))),
                (Err(why), _) => {
                    policy.refused(peer, why);
                    io.terminate();
                    Err(())
                }
                // `trusts` refuses a connection without a peer address.
                (Ok(_), None) => Err(()),
            }
        }
    })
}

/// Read until the buffer holds a whole header, consume it, and return the
/// client it names (`None`: the balancer speaks for nobody).
async fn read_header<F: Filter>(io: &Io<F>) -> Result<Option<SocketAddr>, Refusal> {
    loop {
        let parsed = io.with_read_buf(|buf| match crate::proxy_protocol::parse(buf) {
            Ok(Parsed::Complete { source, len }) => {
                buf.advance_to(len);
                Ok(Some(source))
            }
            Ok(Parsed::Incomplete { .. }) => Ok(None),
            Err(e) => Err(Refusal::Malformed(e)),
        })?;
        if let Some(source) = parsed {
            return Ok(source);
        }
        match io.read_ready().await {
            Ok(Some(())) => {}
            _ => return Err(Refusal::Closed),
        }
    }
}
