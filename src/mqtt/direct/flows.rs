//! Outbound QoS ≥ 1 deliveries on the wire, by packet id, and how many more
//! the client takes.
//!
//! Packet ids are the session's: the outbox picks one when it queues a
//! delivery and keeps it through redeliveries, so a DUP resend carries the
//! id of the first attempt [MQTT-4.4.0-1], on any connection and after a
//! restart. A QoS 2 exchange holds its id from PUBLISH to PUBCOMP; past
//! PUBREC the session holds it too, so a later connection resends PUBREL
//! rather than the message ([`Flows::resume`]).

use std::num::NonZeroU16;
use std::sync::Arc;

use ntex::util::HashMap;

use crate::broker::Outbox;
use crate::domain::{Delivery, QoS};
use crate::telemetry::names::MQTT_TOPIC;

pub(super) struct Flows {
    outbox: Arc<Outbox>,
    on_wire: HashMap<u16, Flow>,
    /// Deliveries the client takes unacknowledged: `limits.max_inflight`,
    /// or less when the client says so (MQTT 5 receive maximum).
    max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// QoS 1, waiting for PUBACK; the outbox's sequence number.
    Ack(u64),
    /// QoS 2, waiting for PUBREC.
    Rec(u64),
    /// PUBREC arrived; PUBREL goes out once that is stored.
    Releasing,
    /// PUBREL went out; waiting for PUBCOMP.
    Comp,
}

/// What a PUBREC asks for.
pub(super) enum Receipt {
    /// Store that the delivery with this outbox sequence number arrived
    /// ([`Outbox::outgoing_qos2_received_durably`]), then send PUBREL.
    Store(u64),
    /// Send PUBREL (again).
    Release,
    /// Nothing: its PUBREL is on its way.
    Nothing,
}

impl Flows {
    pub(super) fn new(outbox: Arc<Outbox>, max: usize) -> Self {
        Self { outbox, on_wire: HashMap::default(), max }
    }

    /// How many more QoS ≥ 1 deliveries may go out now.
    pub(super) fn credit(&self) -> usize {
        self.max.saturating_sub(self.on_wire.len())
    }

    /// The exchanges an earlier connection of the session left after PUBREC:
    /// this connection sends their PUBRELs before any delivery.
    pub(super) fn resume(&mut self) -> Vec<NonZeroU16> {
        let ids: Vec<_> =
            self.outbox.pending_releases().into_iter().filter_map(NonZeroU16::new).collect();
        for id in &ids {
            self.on_wire.insert(id.get(), Flow::Comp);
        }
        ids
    }

    /// `d` goes out now under the packet id its outbox gave it; `None` for a
    /// delivery without one, which is dropped.
    pub(super) fn send(&mut self, d: &Delivery) -> Option<NonZeroU16> {
        let Some(id) = d.packet_id else {
            tracing::error!({ MQTT_TOPIC } = %d.msg.topic, "message dropped: no packet id");
            self.outbox.ack(d.seq);
            return None;
        };
        let flow = if d.qos == QoS::ExactlyOnce { Flow::Rec(d.seq) } else { Flow::Ack(d.seq) };
        self.on_wire.insert(id.get(), flow);
        Some(id)
    }

    /// `d` could not be encoded for this client (larger than it takes): the
    /// outbox forgets it rather than redeliver it forever.
    pub(super) fn undeliverable(&mut self, id: NonZeroU16, d: &Delivery) {
        self.on_wire.remove(&id.get());
        self.outbox.ack(d.seq);
    }

    /// PUBACK: delivered, the id is free. `false` for an id not waiting for one.
    pub(super) fn acked(&mut self, id: NonZeroU16) -> bool {
        match self.on_wire.get(&id.get()) {
            Some(&Flow::Ack(seq)) => {
                self.on_wire.remove(&id.get());
                self.outbox.ack(seq);
                true
            }
            _ => false,
        }
    }

    /// PUBREC: delivered, the exchange goes on (in the session too, should
    /// this connection drop before PUBCOMP). `None` for an id not in a QoS 2
    /// exchange.
    pub(super) fn received(&mut self, id: NonZeroU16) -> Option<Receipt> {
        let flow = self.on_wire.get_mut(&id.get())?;
        match *flow {
            Flow::Rec(seq) => {
                *flow = Flow::Releasing;
                Some(Receipt::Store(seq))
            }
            Flow::Releasing => Some(Receipt::Nothing),
            Flow::Comp => Some(Receipt::Release),
            Flow::Ack(_) => None,
        }
    }

    /// The PUBREL for `id` went out.
    pub(super) fn released(&mut self, id: NonZeroU16) {
        if let Some(flow) = self.on_wire.get_mut(&id.get()) {
            *flow = Flow::Comp;
        }
    }

    /// PUBCOMP: the exchange is over, the id is free. `false` for an id not
    /// waiting for one.
    pub(super) fn completed(&mut self, id: NonZeroU16) -> bool {
        if self.on_wire.get(&id.get()) != Some(&Flow::Comp) {
            return false;
        }
        self.on_wire.remove(&id.get());
        self.outbox.outgoing_qos2_completed(id.get());
        true
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;

    use super::*;
    use crate::broker::ports::memory::Kept;
    use crate::broker::{OverflowPolicy, Stats};
    use crate::domain::{ClientId, Message, TopicLimits, TopicName};
    use ntex::util::Bytes;

    fn outbox() -> Arc<Outbox> {
        let stats = Arc::new(Stats::default());
        let outbox =
            Outbox::new(ClientId::new("c"), 8, OverflowPolicy::default(), stats, Kept::shared());
        let outbox = Arc::new(outbox);
        outbox.attach(1);
        outbox
    }

    /// A delivery as the router queues it, taken by the connection.
    fn delivery(outbox: &Outbox, qos: QoS) -> Delivery {
        let topic = TopicName::parse("a/b", TopicLimits::default()).unwrap();
        outbox.push(Delivery {
            seq: 1,
            msg: Arc::new(Message::new(topic, Bytes::from_static(b"x"), qos, false)),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            dup: false,
            packet_id: outbox.reserve_packet_id(),
            stored: false,
        });
        let mut out = Vec::new();
        outbox.next(1, &mut out, 1).now_or_never().unwrap();
        out.pop().unwrap()
    }

    #[test]
    fn a_qos1_delivery_holds_credit_until_its_puback() {
        let outbox = outbox();
        let mut flows = Flows::new(outbox.clone(), 2);
        let d = delivery(&outbox, QoS::AtLeastOnce);
        let id = flows.send(&d).unwrap();
        assert_eq!(flows.credit(), 1);
        assert!(flows.received(id).is_none(), "a PUBREC for a QoS 1 delivery");
        assert!(flows.acked(id));
        assert_eq!(flows.credit(), 2);
        assert!(!flows.acked(id), "acknowledged twice");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_qos2_delivery_is_released_once_stored_and_ends_with_pubcomp() {
        let outbox = outbox();
        let mut flows = Flows::new(outbox.clone(), 2);
        let d = delivery(&outbox, QoS::ExactlyOnce);
        let id = flows.send(&d).unwrap();
        assert!(!flows.acked(id), "a PUBACK for a QoS 2 delivery");
        assert!(!flows.completed(id), "PUBCOMP before PUBREL");
        let Some(Receipt::Store(seq)) = flows.received(id) else { panic!("not stored") };
        assert!(matches!(flows.received(id), Some(Receipt::Nothing)), "PUBREC again");
        outbox.outgoing_qos2_received_durably(seq, id.get()).now_or_never().unwrap().unwrap();
        assert_eq!(outbox.pending_releases(), vec![id.get()]);
        flows.released(id);
        assert!(matches!(flows.received(id), Some(Receipt::Release)), "PUBREC after PUBREL");
        assert_eq!(flows.credit(), 1);
        assert!(flows.completed(id));
        assert_eq!(flows.credit(), 2);
        assert!(outbox.pending_releases().is_empty());
    }

    #[test]
    fn a_new_connection_resumes_released_exchanges() {
        let outbox = outbox();
        let mut flows = Flows::new(outbox.clone(), 4);
        let d = delivery(&outbox, QoS::ExactlyOnce);
        let id = flows.send(&d).unwrap();
        let Some(Receipt::Store(seq)) = flows.received(id) else { panic!("not stored") };
        outbox.outgoing_qos2_received_durably(seq, id.get()).now_or_never().unwrap().unwrap();

        let mut next = Flows::new(outbox.clone(), 4);
        assert_eq!(next.resume(), vec![id]);
        assert_eq!(next.credit(), 3);
        assert!(next.completed(id));
        assert!(outbox.pending_releases().is_empty());
    }
}
