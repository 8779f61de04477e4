//! What the gate tells the operator about its instance: the wire type of
//! `GET /v1/state` on the admin port. Durations, never timestamps, so the
//! pod's clock and the operator's need not agree.

use serde::{Deserialize, Serialize};

/// Path of the state on the admin port.
pub const GATE_STATE_PATH: &str = "/v1/state";
/// The only state version this build reads and writes.
pub const GATE_STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateState {
    pub version: u32,
    /// The hard limit the gate enforces; 0 = unlimited.
    pub concurrency: u32,
    /// Requests on the function now.
    pub in_flight: u32,
    /// Requests held for a slot now.
    pub waiting: u32,
    /// Requests that reached the function since the instance started.
    pub started: u64,
    /// Time since the last request ended (or since the gate started, when
    /// no request ever came); absent while busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_for_ms: Option<u64>,
    /// `maxRequestsPerInstance` the gate enforces; 0 = unlimited.
    #[serde(default)]
    pub max_requests: u64,
    /// The instance has admitted `max_requests` requests and refuses every
    /// new one: it is done once nothing is in flight.
    #[serde(default)]
    pub exhausted: bool,
}

impl GateState {
    pub fn new(
        concurrency: u32,
        in_flight: u32,
        waiting: u32,
        started: u64,
        idle_for_ms: Option<u64>,
    ) -> Self {
        Self {
            version: GATE_STATE_VERSION,
            concurrency,
            in_flight,
            waiting,
            started,
            idle_for_ms,
            max_requests: 0,
            exhausted: false,
        }
    }

    /// Nothing in flight or held on the instance.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.waiting == 0 && self.idle_for_ms.is_some()
    }
}
