//! Kept publishes of an instance that does not come back. An instance
//! keeps each acknowledged publish in PostgreSQL until Redis has it, and a
//! later run of its `cluster.node_id` passes on what is left; when no run
//! of that id is alive, a survivor does, standing in for the id under the
//! same lease rule, so a run of it that does start meanwhile waits.

use std::time::Duration;

use rand_core::{OsRng, RngCore};

use super::ownership::NODE_LEASE;
use super::redis_fabric::{Appender, FabricHealth, FabricSettings};
use crate::broker::ports::SharedDurability;
use crate::store::{Store, node_lease};
use crate::telemetry::names;

/// How often an instance looks for kept publishes nobody alive passes on.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// Longest a stand-in passes on before letting go (its lease runs
/// [`NODE_LEASE`]; the rest waits for the next look).
const PASS_ON_WAIT: Duration = Duration::from_secs(5);

/// Every [`LOOK_EVERY`], pass on the kept publishes of node ids without a
/// live run, other than `settings.node_id`.
pub async fn pass_on_orphans(
    settings: FabricSettings,
    store: Store,
    writer: SharedDurability,
    health: FabricHealth,
) {
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if !health.is_up() {
            continue;
        }
        let ids = match store.fabric_outbox_nodes().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!({ names::ERROR_MESSAGE } = %e, "kept publishes of other instances not looked for");
                continue;
            }
        };
        for id in ids.into_iter().filter(|id| *id != settings.node_id) {
            stand_in(&settings, &store, &writer, &id).await;
        }
    }
}

/// Pass on `id`'s kept publishes if no run of it is alive.
async fn stand_in(settings: &FabricSettings, store: &Store, writer: &SharedDurability, id: &str) {
    // A run name of `id` (so a run of it that starts now waits for this
    // one), on the stream as the sender of what it passes on: every
    // instance, this one included, routes those to its subscribers.
    let run = format!("{id}/{}/{:08x}", std::process::id(), OsRng.next_u32());
    match store.hold_node_run(id, &run, None, NODE_LEASE).await {
        Ok(None) => {}
        Ok(Some(_alive)) => return,
        Err(e) => {
            tracing::warn!({ names::ERROR_MESSAGE } = %e, node_id = id, "kept publishes of another instance not taken");
            return;
        }
    }
    let left = match store.fabric_outbox_last(id).await {
        Ok(left) => left,
        Err(e) => {
            tracing::warn!({ names::ERROR_MESSAGE } = %e, node_id = id, "kept publishes of another instance not read");
            0
        }
    };
    let as_id = FabricSettings { node: run.clone(), node_id: id.to_owned(), ..settings.clone() };
    if left > 0
        && let Some(mut appender) = Appender::new(as_id, writer.clone())
    {
        match tokio::time::timeout(PASS_ON_WAIT, appender.append_left(store, left)).await {
            Ok(count) => {
                if count > 0 {
                    crate::telemetry::metrics::global()
                        .cluster_orphans_passed_on
                        .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        node_id = id,
                        count,
                        "publishes kept by an instance that did not come back passed to the others"
                    );
                }
            }
            Err(_) => tracing::warn!(
                node_id = id,
                "kept publishes of another instance not all passed on in time; the rest at the next look"
            ),
        }
        appender.forget();
    }
    if let Err(e) = store.release_lease(&node_lease(&run), &run).await {
        tracing::warn!({ names::ERROR_MESSAGE } = %e, node_id = id, "stand-in lease not given up; it lapses by itself");
    }
}
