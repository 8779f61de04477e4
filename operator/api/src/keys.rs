//! Label and annotation keys shared by the controller, the activator and the
//! autoscaler. They are the contract between components: change them here
//! only.

/// Label on every instance pod and per-function Service: the Function's name.
pub const FUNCTION_LABEL: &str = "thaw.dev/function";
