//! One file per resource; `configure` mounts them all.
//!
//! Mounting goes through `utoipa_actix_web`'s `ServiceConfig`: `service(..)`
//! takes only handlers with a `#[utoipa::path]`, so every route is in
//! `/openapi.json` (checked by the route test in `http::openapi`).

mod debug;
mod devices;
mod flags;
// cargo-fuzz sets `cfg(fuzzing)`; the release binary does not carry it.
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod history;
mod lockouts;
mod map;
mod metrics;
mod page;
pub(crate) mod phones;
mod position;
mod sessions;
mod shares;
mod subscribe;
mod topics;
mod users;

pub use page::PageSettings;
use utoipa_actix_web::service_config::ServiceConfig;

/// Named in responses the derive cannot register: `/openapi.json` adds it.
pub(super) use topics::Published;

pub fn configure(cfg: &mut ServiceConfig) {
    health::configure(cfg);
    metrics::configure(cfg);
    debug::configure(cfg);
    users::configure(cfg);
    sessions::configure(cfg);
    lockouts::configure(cfg);
    devices::configure(cfg);
    topics::configure(cfg);
    history::configure(cfg);
    subscribe::configure(cfg);
    map::configure(cfg);
    phones::configure(cfg);
    position::configure(cfg);
    flags::configure(cfg);
    shares::configure(cfg);
    page::configure(cfg);
    super::openapi::configure(cfg);
}
