//! What a subscriber asked for, as the broker keeps and stores it.

use super::QoS;

/// v5 retain handling (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe,
    SendAtSubscribeIfNew,
    DoNotSend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    pub subscription_id: Option<u32>,
}

impl SubscriptionOptions {
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
            subscription_id: None,
        }
    }
}
