//! thaw's controller: reconciles each Function into a pool of instance pods
//! that it creates and deletes one by one.
//!
//! Not built yet: the operator issue fills this crate.
