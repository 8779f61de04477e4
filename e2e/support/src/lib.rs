//! Test support for thaw's integration and end-to-end tests: the local
//! cluster (started once, or attached to when already running), a namespace
//! per test, waiting on conditions with deadlines, and the fixtures that unit
//! and cluster tests share.

pub mod cluster;
pub mod fixtures;
pub mod functions;
pub mod http;
pub mod install;
pub mod kind;
pub mod load;
pub mod metrics;
pub mod plugin;
pub mod process;
pub mod relay;
pub mod wait;

pub use cluster::{Cluster, TestNamespace};
pub use process::{Activator, Operator};
pub use wait::wait_until;
