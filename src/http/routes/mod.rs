//! One file per resource; `configure` mounts them all.

mod health;

use actix_web::web::ServiceConfig;

pub fn configure(cfg: &mut ServiceConfig) {
    health::configure(cfg);
}
