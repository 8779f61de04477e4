//! Test support for thaw integration and end-to-end tests.
