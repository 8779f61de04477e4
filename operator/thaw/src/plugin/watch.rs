//! `kubectl thaw status -w`: watches the selected Functions and their
//! instance pods (kube watchers into reflector stores), asks the gates again
//! every second, and prints the report again whenever something other than
//! a clock moved (a state, a count, a hold, an instance coming or going).

use std::{collections::BTreeMap, time::Duration};

use futures::{FutureExt, StreamExt, stream::BoxStream};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use thaw_api::{Function, keys::FUNCTION_LABEL};

use super::{
    cluster::{Selection, ask_gates, by_function, sorted},
    render::{Format, render},
    report::{FunctionReport, build},
};

/// How often the gates' numbers are read again.
const GATE_REFRESH: Duration = Duration::from_secs(1);

/// Runs until interrupted (or a watch ends for good), printing with `print`.
pub async fn watch(
    client: &Client,
    selection: &Selection,
    format: Format,
    mut print: impl FnMut(&str),
) -> anyhow::Result<()> {
    let (functions, pods) = apis(client, selection);
    let (function_store, function_writer) = reflector::store();
    let (pod_store, pod_writer) = reflector::store();
    let function_config = match selection {
        Selection::One { name, .. } => {
            watcher::Config::default().fields(&format!("metadata.name={name}"))
        }
        _ => watcher::Config::default(),
    };
    let pod_config = watcher::Config::default().labels(&match selection {
        Selection::One { name, .. } => format!("{FUNCTION_LABEL}={name}"),
        _ => FUNCTION_LABEL.to_owned(),
    });
    // Each change says which watch it came from and whether that watch has
    // now listed everything (its store is complete from then on).
    let mut changes: BoxStream<'static, (Source, anyhow::Result<bool>)> = futures::stream::select(
        reflector(function_writer, watcher(functions, function_config))
            .default_backoff()
            .map(|e| (Source::Functions, listed(e))),
        reflector(pod_writer, watcher(pods, pod_config))
            .default_backoff()
            .map(|e| (Source::Pods, listed(e))),
    )
    .boxed();
    let (mut functions_listed, mut pods_listed) = (false, false);
    let mut tick = tokio::time::interval(GATE_REFRESH);
    let mut shown: Option<Vec<FunctionReport>> = None;
    loop {
        let mut change = tokio::select! {
            change = changes.next() => change,
            _ = tick.tick() => Some((Source::Tick, Ok(false))),
        };
        // A burst of events (a listing, a pod's status updates) makes one report.
        loop {
            match change {
                Some((Source::Functions, Ok(done))) => functions_listed |= done,
                Some((Source::Pods, Ok(done))) => pods_listed |= done,
                Some((Source::Tick, _)) => {}
                Some((_, Err(e))) => tracing::warn!("watch: {e:#}"),
                None => return Ok(()),
            }
            match changes.next().now_or_never() {
                Some(next) => change = next,
                None => break,
            }
        }
        if !(functions_listed && pods_listed) {
            continue;
        }
        let functions = sorted(
            function_store
                .state()
                .iter()
                .map(|f| (**f).clone())
                .collect(),
        );
        let pods = by_function(pod_store.state().iter().map(|p| (**p).clone()).collect());
        let reports = reports(client, &functions, &pods, Timestamp::now()).await;
        let material: Vec<FunctionReport> = reports.iter().map(without_clocks).collect();
        if shown.as_ref() != Some(&material) {
            let single = matches!(selection, Selection::One { .. });
            let separator = if shown.is_some() && format == Format::Text {
                "\n"
            } else {
                ""
            };
            print(&format!("{separator}{}", render(&reports, format, single)?));
            shown = Some(material);
        }
    }
}

#[derive(Clone, Copy)]
enum Source {
    Functions,
    Pods,
    Tick,
}

/// Whether a watch event completes the initial listing.
fn listed<K>(event: Result<watcher::Event<K>, watcher::Error>) -> anyhow::Result<bool> {
    Ok(matches!(event?, watcher::Event::InitDone))
}

fn apis(client: &Client, selection: &Selection) -> (Api<Function>, Api<Pod>) {
    match selection {
        Selection::One { namespace, .. } | Selection::Namespace(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
        ),
        Selection::All => (Api::all(client.clone()), Api::all(client.clone())),
    }
}

/// Reports on `functions`, each gate asked now.
pub async fn reports(
    client: &Client,
    functions: &[Function],
    pods: &BTreeMap<(String, String), Vec<Pod>>,
    now: Timestamp,
) -> Vec<FunctionReport> {
    let gates = ask_gates(client, pods.values().flatten()).await;
    functions
        .iter()
        .map(|f| {
            let key = (
                f.metadata.namespace.clone().unwrap_or_default(),
                f.metadata.name.clone().unwrap_or_default(),
            );
            build(f, pods.get(&key).map_or(&[], Vec::as_slice), &gates, now)
        })
        .collect()
}

/// The report with every figure that moves with the clock alone zeroed (not
/// removed: a figure appearing or going is a change).
pub fn without_clocks(report: &FunctionReport) -> FunctionReport {
    let mut r = report.clone();
    r.last_request_seconds_ago = r.last_request_seconds_ago.map(|_| 0);
    for i in &mut r.instances {
        i.age_seconds = i.age_seconds.map(|_| 0);
        i.idle_for_ms = i.idle_for_ms.map(|_| Duration::ZERO);
        i.expires_in_seconds = i.expires_in_seconds.map(|s| s.signum());
    }
    r
}
