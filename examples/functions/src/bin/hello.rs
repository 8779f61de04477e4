//! `hello`: a minimal HTTP function for benchmarks.
//! See `thaw_sample_functions::server` for the environment it reads.

use std::process::ExitCode;

use thaw_sample_functions::hello::Hello;
use thaw_sample_functions::server;

fn main() -> ExitCode {
    server::run(|| async {
        let hello = Hello::new(&server::instance_name());
        server::serve_from_env(move |req| hello.respond(req)).await
    })
}
