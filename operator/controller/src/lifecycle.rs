//! When a Function goes, everything the operator holds of it goes too.
//!
//! A Function's state lives in three places, each with one owner:
//! the controller's memory ([`crate::memory::FunctionMemory`], in
//! [`Context::memory`]), the autoscaler's state ([`thaw_core::Autoscaler`])
//! and the metric series labelled with it ([`crate::metrics::Metrics`]).
//! [`forget`] drops all three. It runs on two triggers, on every replica
//! (followers hold autoscaler state too):
//!
//! - a metadata watch of Functions: each `Delete` event (a Function deleted
//!   by itself or with its namespace) forgets it at once;
//! - a sweep every [`SWEEP_INTERVAL`]: every Function some owner still
//!   tracks but the watch's cache lacks is looked up in the API server, and
//!   forgotten if it is gone. It catches deletes missed while the operator
//!   was down or the watch was restarting, state a reconcile that was
//!   running during the delete wrote back, and reports activators sent
//!   until the Function's last pod was gone.
//!
//! `thaw_tracked_functions{owner}` counts what each owner tracks, computed
//! when scraped, so a test can see the state go.

use std::{
    collections::BTreeSet,
    sync::{Arc, Weak},
    time::Duration,
};

use futures::TryStreamExt;
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher::{self, Event, watcher},
    },
};
use prometheus::{
    IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use thaw_api::Function;
use thaw_core::FunctionKey;
use tracing::{debug, info, warn};

use crate::context::Context;

/// How often tracked state is checked against the Functions that exist.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Drops everything the operator holds of the Function `key`: the
/// controller's memory, the autoscaler's state and its metric series.
pub fn forget(ctx: &Context, key: &FunctionKey) {
    ctx.memory().remove(key);
    ctx.autoscaler().forget_function(key);
    ctx.metrics.forget_function(&key.namespace, &key.name);
}

/// Every Function some owner holds state of.
pub fn tracked(ctx: &Context) -> BTreeSet<FunctionKey> {
    let mut keys: BTreeSet<FunctionKey> = ctx.memory().keys().cloned().collect();
    keys.extend(ctx.autoscaler().functions());
    keys.extend(ctx.metrics.functions());
    keys
}

/// Starts forgetting deleted Functions (in `namespace`, or everywhere) for
/// as long as the process runs, and registers `thaw_tracked_functions`.
pub fn start(client: Client, namespace: Option<&str>, ctx: &Arc<Context>) -> anyhow::Result<()> {
    ctx.metrics
        .registry
        .register(Box::new(TrackedFunctions::new(Arc::downgrade(ctx))?))?;
    // Metadata only: cheap, and immune to Functions that do not decode.
    let api: Api<PartialObjectMeta<Function>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store::<PartialObjectMeta<Function>>();
    let watch = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(on_delete(watch, Arc::downgrade(ctx)));
    tokio::spawn(sweep(client, store, Arc::downgrade(ctx)));
    Ok(())
}

async fn on_delete(
    events: impl futures::Stream<Item = Result<Event<PartialObjectMeta<Function>>, watcher::Error>>,
    ctx: Weak<Context>,
) {
    futures::pin_mut!(events);
    loop {
        match events.try_next().await {
            Ok(Some(Event::Delete(function))) => {
                let (Some(namespace), Some(name)) =
                    (function.metadata.namespace, function.metadata.name)
                else {
                    continue;
                };
                let Some(ctx) = ctx.upgrade() else { return };
                let key = FunctionKey::new(namespace, name);
                info!(function = %key, "Function deleted: forgetting its state");
                forget(&ctx, &key);
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(error) => warn!(%error, "watching Functions for deletes"),
        }
    }
}

async fn sweep(client: Client, store: Store<PartialObjectMeta<Function>>, ctx: Weak<Context>) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        let missing: Vec<FunctionKey> = tracked(&ctx)
            .into_iter()
            .filter(|key| {
                store
                    .get(&ObjectRef::new(&key.name).within(&key.namespace))
                    .is_none()
            })
            .collect();
        // The cache may lag a Function just created: only the API server
        // says it is gone.
        for key in missing {
            let api: Api<Function> = Api::namespaced(client.clone(), &key.namespace);
            match api.get_metadata_opt(&key.name).await {
                Ok(None) => {
                    debug!(function = %key, "sweep: Function gone, forgetting its state");
                    forget(&ctx, &key);
                }
                Ok(Some(_)) => {}
                Err(error) => warn!(function = %key, %error, "sweep: looking up a Function"),
            }
        }
    }
}

/// `thaw_tracked_functions{owner}`: Functions each owner holds state of,
/// counted at scrape time.
struct TrackedFunctions {
    ctx: Weak<Context>,
    gauge: IntGaugeVec,
}

impl TrackedFunctions {
    fn new(ctx: Weak<Context>) -> Result<Self, prometheus::Error> {
        Ok(Self {
            ctx,
            gauge: IntGaugeVec::new(
                Opts::new(
                    "thaw_tracked_functions",
                    "Functions the operator holds state of, by owner: controller (memory), autoscaler (stats and scaler memory), metrics (series labelled with the Function).",
                ),
                &["owner"],
            )?,
        })
    }
}

impl Collector for TrackedFunctions {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(ctx) = self.ctx.upgrade() {
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            let memory = count(ctx.memory().len());
            let autoscaler = count(ctx.autoscaler().functions().len());
            // Before gathering, not during: the metrics' own locks.
            let metrics = count(ctx.metrics.functions().len());
            for (owner, n) in [
                ("controller", memory),
                ("autoscaler", autoscaler),
                ("metrics", metrics),
            ] {
                self.gauge.with_label_values(&[owner]).set(n);
            }
        }
        self.gauge.collect()
    }
}
