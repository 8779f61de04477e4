//! thaw's scaling core: the autoscaler's decisions as pure functions of
//! activator stats, pool state, a Function's scaling settings and the time
//! from an injectable clock. It depends on no Kubernetes or HTTP crate, so
//! every decision can be tested with simulated time.
//!
//! - [`stats`]: the versioned report every activator replica sends.
//! - [`merge`]: [`StatsStore`], which merges the reports of every replica
//!   into windowed concurrency and per-instance activity.
//! - [`decide()`]: how many instances a Function wants and which instances go,
//!   with when each idle one will be destroyed.
//! - [`clock`]: [`Clock`], real and simulated.
//! - [`vet`]: a report checked against the cluster before it is merged.
//!
//! The rule it exists to keep: an instance is destroyed once it has been
//! idle — nothing in flight on any activator — for the Function's
//! `keepAlive`; never before, never while busy. `docs/autoscaler.md`
//! describes the algorithm.

pub mod clock;
pub mod decide;
pub mod duration;
pub mod merge;
pub mod stats;
pub mod vet;

pub use clock::{Clock, ManualClock, SystemClock};
pub use decide::{
    Action, Counts, Decision, Expiry, Hold, Instance, PanicState, Phase, Reason, ScalerMemory,
    Settings, decide,
};
pub use duration::{GoStyle, format_duration};
pub use merge::{ActivatorView, FunctionKey, FunctionView, Ingested, StatsStore, Tuning};
pub use stats::{ActivatorReport, FunctionReport, InstanceReport, REPORT_VERSION, StatsError};
pub use vet::{KnownFunction, Vetting, vet_report};
