//! `make bench-activator`: the sample `hello` function reached directly and
//! through `thaw activator`, on loopback, by one load generator, in one run:
//! latency p50/p99 and throughput at concurrency 1 and 64.
//!
//! The activator runs with `--static-function`: the same routing, admission,
//! placement, queue, proxying and metrics as in a cluster, with the one
//! instance given on the command line instead of learned from watches.
//!
//! Needs release builds of `thaw` and `hello` (the make target builds them).
//! Environment: `BENCH_SECONDS` (per measurement, default 10),
//! `BENCH_WARMUP_SECONDS` (default 2), `BENCH_CONCURRENCY` (default `1,64`),
//! `BENCH_ACTIVATOR_THREADS` (the activator's tokio worker threads; default
//! one per core).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn start_hello() -> (Process, SocketAddr) {
    let binary = target_dir().join("release/hello");
    let mut child = Command::new(&binary)
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("POD_NAME", "hello-bench")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e} (run `make bench-activator`)",
                binary.display()
            )
        });
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    // Keep reading, so hello's last words at shutdown find an open pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("hello said {line:?}"))
        .parse()
        .unwrap();
    (Process(child), addr)
}

fn start_activator(upstream: SocketAddr) -> (Process, SocketAddr, Vec<String>) {
    let binary = target_dir().join("release/thaw");
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = vec![
        "activator".to_owned(),
        "--static-function".to_owned(),
        format!("bench/hello={upstream}"),
        "--http-addr".to_owned(),
        http.to_string(),
        "--admin-addr".to_owned(),
        admin.to_string(),
    ];
    let mut command = Command::new(&binary);
    if let Ok(threads) = std::env::var("BENCH_ACTIVATOR_THREADS") {
        command.env("TOKIO_WORKER_THREADS", threads);
    }
    let child = command
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e} (run `make bench-activator`)",
                binary.display()
            )
        });
    (Process(child), http, args)
}

/// One measurement.
struct Result {
    target: &'static str,
    concurrency: usize,
    requests: usize,
    errors: usize,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Result {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// `concurrency` keep-alive connections, each sending GETs back to back.
async fn load(
    addr: SocketAddr,
    host: &'static str,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> (Vec<u32>, usize, f64) {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0;
            tokio::time::sleep_until(start.into()).await;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let request = Request::get("/")
                    .header("host", host)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if sent >= measure_from {
                    if ok {
                        let us = sent.elapsed().as_micros();
                        latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
                if !ok {
                    break;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    (all, errors, measure.as_secs_f64())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)])
}

async fn wait_serving(addr: SocketAddr, host: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(stream) = TcpStream::connect(addr).await
            && let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        {
            tokio::spawn(conn);
            let request = Request::get("/")
                .header("host", host)
                .body(Empty::<Bytes>::new())
                .unwrap();
            if let Ok(response) = sender.send_request(request).await
                && response.status() == 200
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} did not serve within 10 s");
}

fn main() {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let warmup: u64 = env_or("BENCH_WARMUP_SECONDS", 2);
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let (_hello, hello) = start_hello();
    let (_activator, activator, args) = start_activator(hello);
    // One load-generator thread: the machine's other core is for the
    // servers (hello alone directly; the activator and hello through it).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let direct_host = "hello";
    let proxied_host = "hello.bench.svc.cluster.local";
    runtime.block_on(wait_serving(hello, direct_host));
    runtime.block_on(wait_serving(activator, proxied_host));
    println!(
        "hello at {hello}; thaw {} ; {seconds} s per measurement after {warmup} s warm-up; {} cores",
        args.join(" "),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    let mut results = Vec::new();
    for &concurrency in &levels {
        for (target, addr, host) in [
            ("direct", hello, direct_host),
            ("activator", activator, proxied_host),
        ] {
            let (mut latencies, errors, measured) = runtime.block_on(load(
                addr,
                host,
                concurrency,
                Duration::from_secs(warmup),
                Duration::from_secs(seconds),
            ));
            latencies.sort_unstable();
            let result = Result {
                target,
                concurrency,
                requests: latencies.len(),
                errors,
                seconds: measured,
                p50_us: percentile(&latencies, 50.0),
                p99_us: percentile(&latencies, 99.0),
            };
            println!(
                "  {:<9} c={:<3} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  ({} requests, {} errors)",
                result.target,
                result.concurrency,
                result.rps(),
                result.p50_us,
                result.p99_us,
                result.requests,
                result.errors
            );
            results.push(result);
        }
    }
    println!();
    println!("| concurrency | target | req/s | p50 | p99 |");
    println!("|---:|---|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {:.0} | {:.0} µs | {:.0} µs |",
            r.concurrency,
            r.target,
            r.rps(),
            r.p50_us,
            r.p99_us
        );
    }
    println!();
    println!(
        "| concurrency | p50 ratio (aim ≤ 1.5) | p99 ratio (aim ≤ 2) | throughput ratio (aim ≥ 0.6) |"
    );
    println!("|---:|---:|---:|---:|");
    for pair in results.chunks(2) {
        if let [direct, proxied] = pair {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} |",
                direct.concurrency,
                proxied.p50_us / direct.p50_us,
                proxied.p99_us / direct.p99_us,
                proxied.rps() / direct.rps()
            );
        }
    }
}
