//! thaw's activator: the data plane every request to a function passes
//! through. It holds requests while instances cold-start, never puts more than
//! `concurrency` requests on one instance, and reports what is in flight where.
//!
//! Not built yet: the activator issue fills this crate.
