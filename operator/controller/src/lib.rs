//! thaw's controller: reconciles each Function into a pool of instance pods
//! that it creates and deletes one by one.

pub mod actions;
pub mod auth;
pub mod coldstart;
pub mod context;
pub mod error;
pub mod gate;
pub mod instance;
pub mod known;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod pod;
pub mod pod_index;
pub mod reconcile;
pub mod runtime_class;
pub mod security;
pub mod service;
pub mod status;
pub mod wake;
pub mod wallclock;

pub use context::{Config, Context};
pub use error::Error;
pub use reconcile::reconcile;
pub mod http;
pub mod run;
