//! The `thaw.dev/v1alpha1` Function API: the types, their defaults, the CEL
//! validation the API server enforces, and the generated CRD.
//!
//! Every other crate talks about Functions through these types, and every
//! label or annotation key that crosses a component boundary lives in
//! [`keys`], so the contract between controller, activator and autoscaler is
//! written down once.

pub mod crd;
pub mod duration;
pub mod function;
pub mod hash;
pub mod keys;

pub use duration::GoDuration;
pub use function::settings::{MAX_CONCURRENCY, UNLIMITED_SOFT_TARGET};
pub use function::{
    Function, FunctionSpec, FunctionStatus, InstanceCounts, PodTemplate, PodTemplateMetadata,
    Queue, Scaling,
};
pub use hash::spec_hash;
