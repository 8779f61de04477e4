//! `testfn`: a knob-driven HTTP test function (sleep, bloat, prime, status,
//! echo, in-flight statistics). See `thaw_sample_functions::testfn`.

use std::process::ExitCode;
use std::sync::Arc;

use thaw_sample_functions::server;
use thaw_sample_functions::testfn::State;

fn main() -> ExitCode {
    server::run(|| async {
        let max_concurrency = server::env_parse::<u64>("MAX_CONCURRENCY")?;
        let state = Arc::new(State::new(&server::instance_name(), max_concurrency));
        server::serve_from_env(move |req| State::handle(Arc::clone(&state), req)).await
    })
}
