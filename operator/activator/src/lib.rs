//! thaw's activator: the data plane every request to a function passes
//! through. It routes by Host or path, holds requests in a bounded FIFO
//! queue while instances cold-start, never puts more than `concurrency`
//! requests on one instance, packs requests so surplus instances go idle and
//! expire, and reports what is in flight where to the autoscaler.
//!
//! The core is pure and synchronous, tested without a cluster or a network:
//!
//! - [`route`]: which function a request is for.
//! - [`place`]: which instance takes it.
//! - [`throttle`]: one function's throttle: its instances and their slots,
//!   its queue, its stats.
//! - [`registry`]: the registry of functions and the RAII [`registry::Lease`]
//!   and [`registry::Waiter`] requests hold.
//!
//! Thin adapters connect it to the world: [`watch`] (Kubernetes reflectors),
//! [`probe`] (readiness), [`proxy`] with [`body`], [`headers`] and [`conn`]
//! (HTTP), [`report`] (stats to the autoscaler, with the [`token`]), [`admin`] and [`metrics`].
//! [`run`] puts them together. `docs/activator.md` describes the design.

pub mod admin;
pub mod body;
pub mod conn;
pub mod fresh;
pub mod headers;
pub mod metrics;
pub mod overload;
pub mod place;
pub mod probe;
pub mod proxy;
pub mod registry;
pub mod report;
pub mod route;
pub mod run;
pub mod throttle;
pub mod token;
pub mod upstream;
pub mod watch;

pub use proxy::ProxyOptions;
pub use run::{Options, StaticFunction, run};
pub use token::DEFAULT_TOKEN_FILE;
