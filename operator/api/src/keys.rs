//! Label and annotation keys shared by the controller, the activator and the
//! autoscaler. They are the contract between components: change them here
//! only.

/// Label on every instance pod and per-function Service: the Function's name.
pub const FUNCTION_LABEL: &str = "thaw.dev/function";

/// Label on every instance pod: the hash of the spec fields it was built
/// from, so a spec change is told from a scaling change.
pub const SPEC_HASH_LABEL: &str = "thaw.dev/spec-hash";

/// Annotation set on an instance pod when it starts draining (RFC 3339
/// time). Activators place no new requests on it; it is deleted once
/// nothing is in flight on it.
pub const DRAINING_SINCE_ANNOTATION: &str = "thaw.dev/draining-since";

/// Annotation: when the instance last became idle (RFC 3339), absent while busy.
pub const IDLE_SINCE_ANNOTATION: &str = "thaw.dev/idle-since";

/// Annotation: when the instance will be destroyed if no request arrives
/// (idle-since plus keep-alive, RFC 3339), absent while busy.
pub const EXPIRES_AT_ANNOTATION: &str = "thaw.dev/expires-at";

/// Name of the function's container in an instance pod.
pub const FUNCTION_CONTAINER: &str = "function";

/// Name of the gate sidecar in an instance pod (`thaw gate`): activators send
/// requests to its port, named `thaw-gate`, which holds the hard limit.
pub const GATE_CONTAINER: &str = "thaw-gate";

/// Name of the gate's request port on its container.
pub const GATE_PORT_NAME: &str = "thaw-gate";

/// Name of the gate's admin port (state, readiness) on its container.
pub const GATE_ADMIN_PORT_NAME: &str = "thaw-gate-admin";

/// Annotation written once an instance is ready: its cold-start breakdown
/// (decision to scheduled, to process started, to ready), as the controller
/// observed it.
pub const COLD_START_ANNOTATION: &str = "thaw.dev/cold-start";

/// Annotation on an idle instance that will not expire for now, saying what
/// keeps it (for example `kept by minInstances`).
pub const KEPT_ANNOTATION: &str = "thaw.dev/kept";
