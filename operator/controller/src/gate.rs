//! The last word before an instance goes: its own gate.
//!
//! The autoscaler decides from activator reports, which can be late, lost
//! or missing (an activator cut off from the operator still serves). Before
//! the controller drains an idle instance or deletes a drained one, it asks
//! the instance's gate (`GET /v1/state` on its admin port): a request in
//! flight or held there, or an idle time shorter than the keep-alive, vetoes
//! the action and the reconcile comes back when it could be allowed. The
//! verdicts are pure functions of the gate's answer; only [`GateClient`]
//! does I/O.

use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use k8s_openapi::api::core::v1::Pod;
use thaw_api::keys::{GATE_ADMIN_PORT_NAME, GATE_CONTAINER};
use thaw_core::{Action, Decision, Reason};
use thaw_gate::{GATE_STATE_PATH, GateState};
use tracing::debug;

/// Longest one state request may take.
const STATE_TIMEOUT: Duration = Duration::from_secs(1);
/// When to look again at an instance busy now.
pub const BUSY_RECHECK: Duration = Duration::from_secs(1);
/// Largest state body accepted.
const MAX_STATE_BYTES: usize = 4096;

/// What the gate said, or why it could not say.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The pod has no gate (built by an older operator) or no address yet:
    /// nothing can run behind a gate on it.
    NoGate,
    State(GateState),
    /// The gate did not answer in time or answered nonsense.
    Unreachable(String),
}

/// Whether an action on an instance may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Not now; look again after this long.
    Wait(Duration),
}

/// May an instance the autoscaler found idle for its keep-alive be drained?
/// Only if its gate holds nothing and has been idle that long itself.
pub fn may_reap(answer: &Answer, keep_alive: Duration) -> Verdict {
    match answer {
        Answer::NoGate => Verdict::Go,
        Answer::State(state) => match state.idle_for_ms {
            _ if !state.is_idle() => Verdict::Wait(BUSY_RECHECK),
            Some(idle_ms) => {
                let idle = Duration::from_millis(idle_ms);
                if idle >= keep_alive {
                    Verdict::Go
                } else {
                    Verdict::Wait(keep_alive - idle)
                }
            }
            None => Verdict::Wait(BUSY_RECHECK),
        },
        // Unknown is not idle: the instance stays until its gate answers.
        Answer::Unreachable(_) => Verdict::Wait(BUSY_RECHECK),
    }
}

/// May an instance that served its maxRequestsPerInstance be drained? Only
/// once its gate holds nothing (it may have admitted a request no activator
/// has reported yet); its idle time does not matter.
pub fn may_retire(answer: &Answer) -> Verdict {
    match answer {
        Answer::NoGate => Verdict::Go,
        Answer::State(state) if state.is_idle() => Verdict::Go,
        Answer::State(_) | Answer::Unreachable(_) => Verdict::Wait(BUSY_RECHECK),
    }
}

/// May a draining instance be deleted? Only once its gate holds nothing.
/// `timed_out`: it has drained past the request timeout plus margin, so an
/// unreachable gate no longer blocks (nothing placed before the drain can
/// still run, and the gate cannot be asked).
pub fn may_delete(answer: &Answer, timed_out: bool) -> Verdict {
    match answer {
        Answer::NoGate => Verdict::Go,
        Answer::State(state) if state.is_idle() => Verdict::Go,
        Answer::State(_) => Verdict::Wait(BUSY_RECHECK),
        Answer::Unreachable(_) if timed_out => Verdict::Go,
        Answer::Unreachable(_) => Verdict::Wait(BUSY_RECHECK),
    }
}

/// The gate's admin address of an instance pod, if it has a gate and an IP.
pub fn admin_address(pod: &Pod) -> Option<(IpAddr, u16)> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let port = pod
        .spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .filter(|c| c.name == GATE_CONTAINER)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(GATE_ADMIN_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())?;
    Some((ip, port))
}

/// Asks gates for their state.
#[derive(Clone)]
pub struct GateClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for GateClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(STATE_TIMEOUT));
        connector.enforce_http(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        }
    }
}

impl GateClient {
    pub async fn ask(&self, pod: &Pod) -> Answer {
        let Some((ip, port)) = admin_address(pod) else {
            return Answer::NoGate;
        };
        match tokio::time::timeout(STATE_TIMEOUT, self.fetch(ip, port)).await {
            Ok(Ok(state)) => Answer::State(state),
            Ok(Err(error)) => Answer::Unreachable(error),
            Err(_) => Answer::Unreachable(format!("no answer within {STATE_TIMEOUT:?}")),
        }
    }

    async fn fetch(&self, ip: IpAddr, port: u16) -> Result<GateState, String> {
        let host = match ip {
            IpAddr::V4(ip) => format!("{ip}:{port}"),
            IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        };
        let uri: http::Uri = format!("http://{host}{GATE_STATE_PATH}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let response = self
            .client
            .get(uri)
            .await
            .map_err(|e| format!("asking the gate: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("the gate answered {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_STATE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the gate's state: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("decoding the gate's state: {e}"))
    }
}

/// The decision's drains and deletes that the instances' gates allow, and
/// when to look again at those they vetoed.
pub struct Vetted<'a> {
    pub drain: Vec<&'a Action>,
    pub delete: Vec<&'a Action>,
    pub recheck: Option<Duration>,
}

/// Asks the gate of every instance the decision would reap or delete (all at
/// once) and keeps the actions their answers allow. Drains for a rollout
/// are not asked about: draining only stops new requests.
pub async fn vet<'a>(gates: &GateClient, pods: &[Arc<Pod>], decision: &'a Decision) -> Vetted<'a> {
    let pod = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .cloned()
    };
    let ask = |action: &'a Action| {
        let pod = pod(&action.instance);
        async move {
            let answer = match pod {
                Some(pod) => gates.ask(&pod).await,
                None => Answer::NoGate,
            };
            (action, answer)
        }
    };
    let drains = join_all(decision.drain.iter().map(ask));
    let deletes = join_all(decision.delete.iter().map(ask));
    let (drains, deletes) = futures::join!(drains, deletes);
    let mut vetted = Vetted {
        drain: Vec::new(),
        delete: Vec::new(),
        recheck: None,
    };
    let mut wait = |verdict: Verdict| match verdict {
        Verdict::Go => true,
        Verdict::Wait(after) => {
            vetted.recheck = Some(vetted.recheck.map_or(after, |r| r.min(after)));
            false
        }
    };
    let mut drain = Vec::new();
    for (action, answer) in drains {
        let verdict = match &action.reason {
            Reason::KeepAlive { keep_alive, .. } => may_reap(&answer, *keep_alive),
            Reason::Exhausted { .. } => may_retire(&answer),
            _ => Verdict::Go,
        };
        if let Answer::Unreachable(why) = &answer {
            debug!(instance = %action.instance, %why, "gate unreachable: not reaping");
        }
        if wait(verdict) {
            drain.push(action);
        }
    }
    let mut delete = Vec::new();
    for (action, answer) in deletes {
        let timed_out = matches!(action.reason, Reason::DrainTimeout { .. });
        if wait(may_delete(&answer, timed_out)) {
            delete.push(action);
        }
    }
    vetted.drain = drain;
    vetted.delete = delete;
    vetted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(in_flight: u32, waiting: u32, idle_for_ms: Option<u64>) -> Answer {
        Answer::State(GateState::new(1, in_flight, waiting, 3, idle_for_ms))
    }

    #[test]
    fn reaping_needs_an_idle_gate_for_the_whole_keep_alive() {
        let keep = Duration::from_secs(10);
        assert_eq!(may_reap(&state(0, 0, Some(10_000)), keep), Verdict::Go);
        assert_eq!(
            may_reap(&state(0, 0, Some(7_500)), keep),
            Verdict::Wait(Duration::from_millis(2_500))
        );
        assert_eq!(
            may_reap(&state(1, 0, None), keep),
            Verdict::Wait(BUSY_RECHECK)
        );
        assert_eq!(
            may_reap(&state(0, 1, Some(60_000)), keep),
            Verdict::Wait(BUSY_RECHECK),
            "a held request counts"
        );
        assert_eq!(
            may_reap(&Answer::Unreachable("x".into()), keep),
            Verdict::Wait(BUSY_RECHECK)
        );
        assert_eq!(may_reap(&Answer::NoGate, keep), Verdict::Go);
    }

    #[test]
    fn deleting_needs_an_empty_gate_until_the_drain_times_out() {
        assert_eq!(may_delete(&state(0, 0, Some(1)), false), Verdict::Go);
        assert_eq!(
            may_delete(&state(2, 0, None), true),
            Verdict::Wait(BUSY_RECHECK)
        );
        let unreachable = Answer::Unreachable("refused".into());
        assert_eq!(may_delete(&unreachable, false), Verdict::Wait(BUSY_RECHECK));
        assert_eq!(may_delete(&unreachable, true), Verdict::Go);
    }

    #[test]
    fn a_spent_instance_is_retired_once_its_gate_is_empty_whatever_its_idle_time() {
        assert_eq!(may_retire(&state(0, 0, Some(1))), Verdict::Go);
        assert_eq!(may_retire(&state(1, 0, None)), Verdict::Wait(BUSY_RECHECK));
        assert_eq!(
            may_retire(&state(0, 1, Some(5))),
            Verdict::Wait(BUSY_RECHECK),
            "a held request counts"
        );
        assert_eq!(
            may_retire(&Answer::Unreachable("x".into())),
            Verdict::Wait(BUSY_RECHECK)
        );
    }
}
