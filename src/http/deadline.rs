//! Request bodies arrive in time or not at all: a client that sends its
//! headers and a `Content-Length`, then stalls (or trickles a byte now and
//! then), would otherwise hold its connection, and a descriptor MQTT shares,
//! for as long as it likes. Every body gets one deadline from the moment its
//! headers are in; past it the reader sees a timed-out read, which the
//! extractors and [`crate::http::payload::read_body`] turn into a 408
//! problem that closes the connection.
//!
//! A body left unread (timed out, or not wanted because the request was
//! refused first) is held until the response is out: actix then closes the
//! connection instead of draining the rest, which for a chunked body a
//! stalling client would never send.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use bytes::Bytes;
use futures::Stream;

/// How long a request body may take, as app data for [`limit_body`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Middleware: the request's body stream ends in a timed-out read once the
/// [`BodyTimeout`] has passed.
pub async fn limit_body<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B, HoldingUnread>>, actix_web::Error> {
    // Most requests (map polls, reads) have no body: nothing to watch.
    let headers = req.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers.get(CONTENT_LENGTH).is_some_and(|n| n.as_bytes() != b"0");
    let Some(timeout) = req.app_data::<web::Data<BodyTimeout>>().map(|t| t.0).filter(|_| has_body)
    else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let inner = Rc::new(RefCell::new(req.take_payload()));
    let finished = Rc::new(Cell::new(false));
    let deadline = Deadline {
        inner: inner.clone(),
        finished: finished.clone(),
        sleep: Box::pin(tokio::time::sleep(timeout)),
        done: false,
    };
    let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(deadline);
    req.set_payload(Payload::from(stream));
    let res = next.call(req).await?;
    let unread = (!finished.get()).then_some(inner);
    Ok(res
        .map_body(|_, body| HoldingUnread { body: body.boxed(), _unread: unread })
        .map_into_right_body())
}

/// A response body that keeps the request's unread rest alive until the
/// response is out: actix decides then whether to drain it or close.
pub struct HoldingUnread {
    body: BoxBody,
    _unread: Option<Rc<RefCell<Payload>>>,
}

impl MessageBody for HoldingUnread {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// Whether a body read failed because the client ran out of time.
pub fn timed_out(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

struct Deadline {
    inner: Rc<RefCell<Payload>>,
    /// Set once the client sent the whole body (or it failed on its own).
    finished: Rc<Cell<bool>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut *self.inner.borrow_mut()).poll_next(cx);
        if let Poll::Ready(item) = polled {
            if !matches!(item, Some(Ok(_))) {
                self.finished.set(true);
            }
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
