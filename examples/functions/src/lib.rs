//! Shared code for thaw's sample functions.
//!
//! * [`server`]: environment handling, the HTTP/1.1 (+h2c) accept loop with
//!   graceful shutdown on SIGTERM/SIGINT, and the instance name.
//! * [`hello`]: the benchmark function (`hello from <instance>`).
//! * [`testfn`]: the knob-driven test function (sleep, bloat, prime, status,
//!   echo, in-flight/overlap statistics).
//!
//! The binaries in `src/bin/` are thin wrappers around these modules.

pub mod hello;
pub mod server;
pub mod testfn;
