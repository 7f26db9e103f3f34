//! Request bodies arrive in time or not at all: a client that sends its
//! headers and a `Content-Length`, then stalls (or trickles a byte now and
//! then), would otherwise hold its connection, and a descriptor MQTT shares,
//! for as long as it likes. Every body gets one deadline from the moment its
//! headers are in; past it the reader sees a timed-out read, which the
//! extractors and [`crate::http::payload::read_body`] turn into a 408
//! problem that closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use bytes::Bytes;
use futures::Stream;

/// How long a request body may take, as app data for [`limit_body`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Middleware: the request's body stream ends in a timed-out read once the
/// [`BodyTimeout`] has passed.
pub async fn limit_body(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(timeout) = req.app_data::<web::Data<BodyTimeout>>().map(|t| t.0) {
        let inner = req.take_payload();
        let deadline =
            Deadline { inner, sleep: Box::pin(tokio::time::sleep(timeout)), done: false };
        let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(deadline);
        req.set_payload(Payload::from(stream));
    }
    next.call(req).await
}

/// Whether a body read failed because the client ran out of time.
pub fn timed_out(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

struct Deadline {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            let e = io::Error::new(io::ErrorKind::TimedOut, "the request body took too long");
            return Poll::Ready(Some(Err(PayloadError::Io(e))));
        }
        Poll::Pending
    }
}
