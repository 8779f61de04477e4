//! thaw's scaling core: the autoscaler's decisions as pure functions of
//! activator stats, pool state, a Function's scaling settings and the time
//! from an injectable clock. It depends on no Kubernetes or HTTP crate, so
//! every decision can be tested with simulated time.
//!
//! Not built yet: the autoscaler issue fills this crate.
