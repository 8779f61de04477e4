//! thaw's scaling core: the autoscaler's decisions as pure functions of
//! activator stats, pool state, a Function's scaling settings and the time
//! from an injectable clock. It depends on no Kubernetes or HTTP crate, so
//! every decision can be tested with simulated time.
//!
//! Modules, each depending only on the ones before it:
//! - [`stats`]: the versioned report every activator replica sends (wire).
//! - [`view`]: [`FunctionView`], what is known of one Function at one
//!   instant, and the autoscaler's constants ([`Tuning`]).
//! - [`decide()`]: how many instances a Function wants and which instances go,
//!   with when each idle one will be destroyed.
//! - [`autoscaler`]: [`Autoscaler`], the one owner of every Function's
//!   autoscaler state (merged stats and scaler memory).
//! - [`clock`]: [`Clock`], real and simulated.
//! - [`vet`]: a report checked against the cluster before it is merged.
//!
//! The rule it exists to keep: an instance is destroyed once it has been
//! idle — nothing in flight on any activator — for the Function's
//! `keepAlive`; never before, never while busy. `docs/autoscaler.md`
//! describes the algorithm.

pub mod autoscaler;
pub mod clock;
pub mod decide;
pub mod duration;
pub mod stats;
pub mod vet;
pub mod view;

pub use autoscaler::{Autoscaler, Ingested};
pub use clock::{Clock, ManualClock, SystemClock};
pub use decide::{
    Action, Counts, DEFAULT_TARGET, Decision, Expiry, Hold, Instance, Phase, Reason, Settings,
    decide, per_instance_target,
};
pub use duration::{GoStyle, format_duration};
pub use stats::{ActivatorReport, FunctionReport, InstanceReport, REPORT_VERSION, StatsError};
pub use vet::{KnownFunction, Vetting, vet_report};
pub use view::{
    ActivatorView, FunctionKey, FunctionView, PanicState, SOFT_TARGET, ScalerMemory, Tuning,
};
