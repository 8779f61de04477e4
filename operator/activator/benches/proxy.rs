//! `make bench-activator` and `make bench-dataplane`: the sample `hello`
//! function reached directly, through haproxy, through `thaw activator`, and
//! through the activator and `thaw gate` (the real data path), on loopback,
//! by one load generator, in one run.
//!
//! - `BENCH_MODE=closed` (default, `make bench-activator`): closed-loop
//!   keep-alive clients (one connection each, requests back to back) at
//!   concurrency 1 and 64, against the immediate handler (`/`) and a 10 ms one
//!   (`/?sleep=10`), repeated and interleaved; medians of latency p50/p99,
//!   throughput and each process's CPU per request (utime + stime from
//!   `/proc/<pid>/stat`), as ratios to direct and to haproxy.
//! - `BENCH_MODE=dataplane` (`make bench-dataplane`): Knative's
//!   dataplane-probe shape, an open-loop constant rate (1,000 req/s for 60 s)
//!   at a 100 ms handler; each latency runs from the request's scheduled send
//!   time, so a stalled generator or proxy is not hidden (no coordinated
//!   omission).
//!
//! The activator runs with `--static-function`: the same routing, admission,
//! placement, queue, proxying and metrics as in a cluster, with the instance
//! given on the command line instead of learned from watches.
//!
//! Needs release builds of `thaw` and `hello` and a `haproxy` on the PATH
//! (the make targets see to both). Environment, closed mode:
//! `BENCH_SECONDS` (per measurement, default 5), `BENCH_WARMUP_SECONDS`
//! (default 1), `BENCH_REPS` (interleaved repetitions, default 3),
//! `BENCH_CONCURRENCY` (default `1,64`), `BENCH_HANDLERS` (`0,10`: sleep in
//! ms), `BENCH_ACTIVATOR_WORKERS` (the activator's `--proxy-workers`;
//! default one per core), `BENCH_BASELINE_THAW` (another `thaw` binary,
//! measured as one more target: a change against its predecessor,
//! interleaved), `BENCH_FLOORS` (the hyper floors of `floor.rs`,
//! comma-separated: `pool`, `percore`, `affine`, `affine-mt`; default the
//! first three, none in dataplane mode). Dataplane mode: `BENCH_RATE` (1000), `BENCH_SECONDS` (60),
//! `BENCH_WARMUP_SECONDS` (5), `BENCH_SLEEP_MS` (100).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod floor;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
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

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

fn free_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A child process killed when dropped.
struct Process(Child);

impl Process {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn spawn(binary: &str, args: &[String], env: &[(&str, String)], stdout: Stdio) -> Child {
    let mut command = Command::new(binary);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    command.spawn().unwrap_or_else(|e| {
        panic!("starting {binary}: {e} (run `make bench-activator`)");
    })
}

fn release(binary: &str) -> String {
    target_dir()
        .join("release")
        .join(binary)
        .to_string_lossy()
        .into_owned()
}

fn start_hello() -> (Process, SocketAddr) {
    let env = [
        ("PORT", "0".to_owned()),
        ("BIND_ADDR", "127.0.0.1".to_owned()),
        ("POD_NAME", "hello-bench".to_owned()),
    ];
    let mut child = spawn(&release("hello"), &[], &env, Stdio::piped());
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

/// `thaw gate` in front of hello, unlimited (`--concurrency 0`), so it
/// holds nothing and only its per-request cost shows.
fn start_gate(hello: SocketAddr) -> (Process, SocketAddr) {
    let (port, admin) = (free_addr().port(), free_addr().port());
    let args = [
        "gate".to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--admin-port".to_owned(),
        admin.to_string(),
        "--upstream-port".to_owned(),
        hello.port().to_string(),
        "--concurrency".to_owned(),
        "0".to_owned(),
    ];
    let child = spawn(
        &release("thaw"),
        &args,
        &[("RUST_LOG", "warn".to_owned())],
        Stdio::null(),
    );
    (Process(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One activator (the `thaw` binary at `binary`) serving `bench/hello`
/// (hello itself) and `bench/gated` (hello behind the gate).
fn start_activator(
    binary: &str,
    hello: SocketAddr,
    gate: SocketAddr,
) -> (Process, SocketAddr, Vec<String>) {
    let http = free_addr();
    let mut args = vec![
        "activator".to_owned(),
        "--static-function".to_owned(),
        format!("bench/hello={hello}"),
        "--static-function".to_owned(),
        format!("bench/gated={gate}"),
        "--http-addr".to_owned(),
        http.to_string(),
        "--admin-addr".to_owned(),
        free_addr().to_string(),
    ];
    let env = [("RUST_LOG", "warn".to_owned())];
    if let Ok(workers) = std::env::var("BENCH_ACTIVATOR_WORKERS") {
        args.extend(["--proxy-workers".to_owned(), workers]);
    }
    let child = spawn(binary, &args, &env, Stdio::null());
    (Process(child), http, args)
}

/// A floor proxy (`floor.rs`): this bench binary again, in the role asked.
fn start_floor(role: &str, hello: SocketAddr) -> (Process, SocketAddr) {
    let listen = free_addr();
    let binary = std::env::current_exe().unwrap();
    let env = [
        ("BENCH_ROLE", role.to_owned()),
        ("BENCH_LISTEN", listen.to_string()),
        ("BENCH_UPSTREAM", hello.to_string()),
    ];
    let child = spawn(&binary.to_string_lossy(), &[], &env, Stdio::null());
    (Process(child), listen)
}

/// haproxy as users would run it in front of a keep-alive backend: two
/// threads, server connections reused, `X-Forwarded-For` added (the
/// activator adds forwarding headers too), no logging.
fn start_haproxy(hello: SocketAddr) -> (Process, SocketAddr, String, tempdir::Dir) {
    let listen = free_addr();
    let config = format!(
        "global
    nbthread 2
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 2s
    timeout client 90s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 90s

frontend bench
    bind {listen}
    default_backend hello

backend hello
    server hello {hello}
"
    );
    let dir = tempdir::Dir::new("thaw-bench-haproxy");
    let path = dir.0.join("haproxy.cfg");
    std::fs::write(&path, &config).unwrap();
    let version = Command::new("haproxy")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_else(|e| panic!("haproxy: {e} (run `make bench-activator`, which installs it)"));
    let args = [
        "-db".to_owned(),
        "-f".to_owned(),
        path.display().to_string(),
    ];
    let child = spawn("haproxy", &args, &[], Stdio::null());
    (Process(child), listen, version, dir)
}

mod tempdir {
    use std::path::PathBuf;

    /// A directory removed when dropped.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Self {
            let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// CPU time: a process's user + system time from `/proc/<pid>/stat`, in
/// clock ticks, and the whole machine's busy time from `/proc/stat`.
mod cpu {
    use std::process::Command;

    /// Clock ticks per second (`getconf CLK_TCK`, 100 nearly everywhere).
    pub fn ticks_per_second() -> f64 {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    }

    /// utime + stime of `pid`, in ticks.
    pub fn process(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name (which may hold spaces): the
        // third one is the state, utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
        field(11) + field(12)
    }

    /// The machine's non-idle ticks over every core.
    pub fn machine() -> u64 {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat.lines().next() else {
            return 0;
        };
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is in user).
        values
            .iter()
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, v)| v)
            .sum()
    }
}

/// Where requests go, and which processes serve them there.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    host: &'static str,
    /// The proxies on this path (their CPU is the "proxy CPU" column).
    proxies: Vec<u32>,
}

/// CPU ticks at one instant.
#[derive(Clone, Copy, Default)]
struct Ticks {
    proxies: u64,
    hello: u64,
    machine: u64,
}

fn ticks(target: &Target, hello: u32) -> Ticks {
    Ticks {
        proxies: target.proxies.iter().map(|&pid| cpu::process(pid)).sum(),
        hello: cpu::process(hello),
        machine: cpu::machine(),
    }
}

/// One measurement.
#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: usize,
    /// CPU µs per request: the proxies on the path, hello, the machine.
    proxy_cpu_us: f64,
    hello_cpu_us: f64,
    machine_cpu_us: f64,
}

fn request(uri: &Uri, host: &str) -> Request<Empty<Bytes>> {
    Request::get(uri.clone())
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap()
}

/// `concurrency` keep-alive connections, each sending GETs back to back;
/// CPU is read at the start and the end of the measured window.
async fn closed_loop(
    target: &Target,
    hello_pid: u32,
    path: &'static str,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    tick: f64,
) -> Sample {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let uri: Uri = path.parse().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (addr, host, uri) = (target.addr, target.host, uri.clone());
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
                let ok = match sender.send_request(request(&uri, host)).await {
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
    tokio::time::sleep_until(measure_from.into()).await;
    let before = ticks(target, hello_pid);
    tokio::time::sleep_until(end.into()).await;
    let after = ticks(target, hello_pid);
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    all.sort_unstable();
    let requests = all.len().max(1) as f64;
    let per_request = |ticks: u64| ticks as f64 * 1e6 / tick / requests;
    Sample {
        rps: all.len() as f64 / measure.as_secs_f64(),
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        errors,
        proxy_cpu_us: per_request(after.proxies - before.proxies),
        hello_cpu_us: per_request(after.hello - before.hello),
        machine_cpu_us: per_request(after.machine - before.machine),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)])
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

async fn wait_serving(addr: SocketAddr, host: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let uri: Uri = "/".parse().unwrap();
    while Instant::now() < deadline {
        if let Ok(stream) = TcpStream::connect(addr).await
            && let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        {
            tokio::spawn(conn);
            if let Ok(response) = sender.send_request(request(&uri, host)).await
                && response.status() == 200
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} did not serve within 10 s");
}

/// Everything under test, started once for the whole run.
struct Setup {
    _processes: Vec<Process>,
    _haproxy_dir: tempdir::Dir,
    hello_pid: u32,
    targets: Vec<Target>,
}

fn setup(runtime: &tokio::runtime::Runtime) -> Setup {
    let (hello, hello_addr) = start_hello();
    let (gate, gate_addr) = start_gate(hello_addr);
    let (activator, activator_addr, args) =
        start_activator(&release("thaw"), hello_addr, gate_addr);
    let (haproxy, haproxy_addr, haproxy_version, haproxy_dir) = start_haproxy(hello_addr);
    let mut targets = vec![
        Target {
            name: "direct",
            addr: hello_addr,
            host: "hello",
            proxies: vec![],
        },
        Target {
            name: "haproxy",
            addr: haproxy_addr,
            host: "hello",
            proxies: vec![haproxy.pid()],
        },
        Target {
            name: "activator",
            addr: activator_addr,
            host: "hello.bench.svc.cluster.local",
            proxies: vec![activator.pid()],
        },
        Target {
            name: "activator + gate",
            addr: activator_addr,
            host: "gated.bench.svc.cluster.local",
            proxies: vec![activator.pid(), gate.pid()],
        },
    ];
    let mut processes = vec![activator, gate, haproxy];
    // hyper's own floor, informative: `BENCH_FLOORS` (default all three in
    // closed mode, none in the dataplane probe).
    let dataplane = std::env::var("BENCH_MODE").is_ok_and(|m| m == "dataplane");
    let floors = if dataplane { "" } else { "pool,percore,affine" };
    for floor in std::env::var("BENCH_FLOORS")
        .unwrap_or_else(|_| floors.into())
        .split(',')
        .filter(|f| !f.is_empty())
    {
        let (name, role): (&'static str, &str) = match floor {
            "pool" => ("hyper floor: pool", "floor-pool"),
            "percore" => ("hyper floor: per core", "floor-percore"),
            "affine" => ("hyper floor: per core, affine", "floor-affine"),
            "affine-mt" => ("hyper floor: affine", "floor-affine-mt"),
            other => panic!("BENCH_FLOORS: unknown floor {other}"),
        };
        let (process, addr) = start_floor(role, hello_addr);
        targets.push(Target {
            name,
            addr,
            host: "hello",
            proxies: vec![process.pid()],
        });
        processes.push(process);
    }
    // Another build of thaw side by side, to measure a change interleaved.
    if let Ok(binary) = std::env::var("BENCH_BASELINE_THAW") {
        let (baseline, addr, _) = start_activator(&binary, hello_addr, gate_addr);
        println!("baseline activator: {binary}");
        targets.push(Target {
            name: "baseline activator",
            addr,
            host: "hello.bench.svc.cluster.local",
            proxies: vec![baseline.pid()],
        });
        processes.push(baseline);
    }
    for target in &targets {
        runtime.block_on(wait_serving(target.addr, target.host));
    }
    println!("hello at {hello_addr}; thaw {}", args.join(" "));
    println!("gate at {gate_addr} (--concurrency 0); {haproxy_version}");
    println!(
        "{} cores; load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Setup {
        hello_pid: hello.pid(),
        _processes: {
            processes.push(hello);
            processes
        },
        _haproxy_dir: haproxy_dir,
        targets,
    }
}

fn handler_path(sleep_ms: u64) -> &'static str {
    match sleep_ms {
        0 => "/",
        ms => Box::leak(format!("/?sleep={ms}").into_boxed_str()),
    }
}

fn handler_name(sleep_ms: u64) -> String {
    match sleep_ms {
        0 => "immediate".into(),
        ms => format!("{ms} ms"),
    }
}

fn main() {
    floor::run_if_asked();
    // One load-generator thread: the machine's other core is for the
    // servers (hello alone directly; the proxy and hello through one).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let setup = setup(&runtime);
    match std::env::var("BENCH_MODE").as_deref() {
        Ok("dataplane") => dataplane(&runtime, &setup),
        Ok("closed") | Err(_) => closed(&runtime, &setup),
        Ok(other) => panic!("BENCH_MODE={other}: expected closed or dataplane"),
    }
}

type Key = (u64, u64, &'static str);

fn closed(runtime: &tokio::runtime::Runtime, setup: &Setup) {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let warmup: u64 = env_or("BENCH_WARMUP_SECONDS", 1);
    let reps: usize = env_or("BENCH_REPS", 3);
    let levels = env_list("BENCH_CONCURRENCY", "1,64");
    let handlers = env_list("BENCH_HANDLERS", "0,10");
    let tick = cpu::ticks_per_second();
    println!(
        "closed loop: {reps} interleaved repetitions, {seconds} s measured after {warmup} s warm-up each"
    );
    let mut samples: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    for rep in 0..reps {
        for &sleep_ms in &handlers {
            for &concurrency in &levels {
                // Rotate the order each repetition, so no target always
                // runs first after a change of load.
                let n = setup.targets.len();
                for i in 0..n {
                    let target = &setup.targets[(i + rep) % n];
                    let sample = runtime.block_on(closed_loop(
                        target,
                        setup.hello_pid,
                        handler_path(sleep_ms),
                        concurrency as usize,
                        Duration::from_secs(warmup),
                        Duration::from_secs(seconds),
                        tick,
                    ));
                    println!(
                        "  rep {rep} {:<9} c={concurrency:<3} {:<16} {:>7.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  CPU/req: proxy {:>5.1} µs, hello {:>5.1} µs, machine {:>5.1} µs  ({} errors)",
                        handler_name(sleep_ms),
                        target.name,
                        sample.rps,
                        sample.p50_us,
                        sample.p99_us,
                        sample.proxy_cpu_us,
                        sample.hello_cpu_us,
                        sample.machine_cpu_us,
                        sample.errors,
                    );
                    samples
                        .entry((sleep_ms, concurrency, target.name))
                        .or_default()
                        .push(sample);
                }
            }
        }
    }
    let medians: BTreeMap<Key, Sample> = samples
        .iter()
        .map(|(key, s)| {
            let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
            let sample = Sample {
                rps: m(|s| s.rps),
                p50_us: m(|s| s.p50_us),
                p99_us: m(|s| s.p99_us),
                errors: s.iter().map(|s| s.errors).sum(),
                proxy_cpu_us: m(|s| s.proxy_cpu_us),
                hello_cpu_us: m(|s| s.hello_cpu_us),
                machine_cpu_us: m(|s| s.machine_cpu_us),
            };
            (*key, sample)
        })
        .collect();
    print_table(setup, &handlers, &levels, &medians);
    print_bounds(&medians);
}

fn print_table(setup: &Setup, handlers: &[u64], levels: &[u64], medians: &BTreeMap<Key, Sample>) {
    println!();
    println!(
        "Medians. ÷d = ratio to direct, ÷h = ratio to haproxy (same run). CPU µs per request: \
         proxy = the proxies on the path (activator + gate: both), hello, machine = every process on both cores."
    );
    println!();
    println!(
        "| handler | c | target | req/s | ÷d | ÷h | p50 µs | ÷d | ÷h | p99 µs | ÷d | ÷h | proxy CPU µs/req | ÷h | hello CPU µs/req | machine CPU µs/req | errors |"
    );
    println!(
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".to_owned()
        }
    };
    for &sleep_ms in handlers {
        for &c in levels {
            let get = |name| {
                medians
                    .get(&(sleep_ms, c, name))
                    .copied()
                    .unwrap_or_default()
            };
            let (direct, haproxy) = (get("direct"), get("haproxy"));
            for target in &setup.targets {
                let s = get(target.name);
                let proxy_cpu = if target.proxies.is_empty() {
                    ("–".to_owned(), "–".to_owned())
                } else {
                    (
                        format!("{:.1}", s.proxy_cpu_us),
                        ratio(s.proxy_cpu_us, haproxy.proxy_cpu_us),
                    )
                };
                println!(
                    "| {} | {c} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
                    handler_name(sleep_ms),
                    target.name,
                    s.rps,
                    ratio(s.rps, direct.rps),
                    ratio(s.rps, haproxy.rps),
                    s.p50_us,
                    ratio(s.p50_us, direct.p50_us),
                    ratio(s.p50_us, haproxy.p50_us),
                    s.p99_us,
                    ratio(s.p99_us, direct.p99_us),
                    ratio(s.p99_us, haproxy.p99_us),
                    proxy_cpu.0,
                    proxy_cpu.1,
                    s.hello_cpu_us,
                    s.machine_cpu_us,
                    s.errors,
                );
            }
        }
    }
}

/// The bounds, activator against haproxy, on the medians.
fn print_bounds(medians: &BTreeMap<Key, Sample>) {
    let get = |c, name| medians.get(&(0, c, name)).copied();
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    if let (Some(a), Some(h)) = (get(64, "activator"), get(64, "haproxy")) {
        let cpu = a.proxy_cpu_us / h.proxy_cpu_us;
        let rps = a.rps / h.rps;
        println!(
            "c=64 immediate: activator CPU/request {cpu:.2}x haproxy (bound ≤ 1.00: {}), throughput {rps:.2}x haproxy (bound ≥ 0.95: {})",
            verdict(cpu <= 1.0),
            verdict(rps >= 0.95)
        );
    }
    if let (Some(a), Some(h)) = (get(1, "activator"), get(1, "haproxy")) {
        let p50 = a.p50_us / h.p50_us;
        println!(
            "c=1 immediate: activator p50 {p50:.2}x haproxy (bound ≤ 1.05: {})",
            verdict(p50 <= 1.05)
        );
    }
}

/// One open-loop run: `rate` requests per second for `measure` after
/// `warmup`, each on its own schedule, over a keep-alive pool that opens
/// as many connections as requests in flight need.
async fn open_loop(
    target: &Target,
    path: &'static str,
    rate: u64,
    warmup: Duration,
    measure: Duration,
) -> (Vec<u32>, usize, usize) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let uri: Uri = format!("http://{}{path}", target.addr).parse().unwrap();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = ((warmup + measure).as_secs_f64() * rate as f64) as u64;
    let warmup_count = (warmup.as_secs_f64() * rate as f64) as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let (client, request) = (client.clone(), request(&uri, target.host));
        tasks.push(tokio::spawn(async move {
            let ok = match client.request(request).await {
                Ok(response) => {
                    response.status() == 200 && response.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            // From the scheduled time, not the actual send.
            (ok, scheduled.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let (mut errors, mut measured) = (0, 0);
    for (i, task) in tasks.into_iter().enumerate() {
        let (ok, latency) = task.await.unwrap();
        if (i as u64) < warmup_count {
            continue;
        }
        measured += 1;
        if ok {
            latencies.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        } else {
            errors += 1;
        }
    }
    latencies.sort_unstable();
    (latencies, errors, measured)
}

fn dataplane(runtime: &tokio::runtime::Runtime, setup: &Setup) {
    let rate: u64 = env_or("BENCH_RATE", 1000);
    let seconds: u64 = env_or("BENCH_SECONDS", 60);
    let warmup: u64 = env_or("BENCH_WARMUP_SECONDS", 5);
    let sleep_ms: u64 = env_or("BENCH_SLEEP_MS", 100);
    println!(
        "dataplane probe: {rate} req/s open loop, {seconds} s measured after {warmup} s warm-up, {sleep_ms} ms handler; latency from the scheduled send"
    );
    let path = handler_path(sleep_ms);
    let mut rows = Vec::new();
    for target in &setup.targets {
        let (latencies, errors, measured) = runtime.block_on(open_loop(
            target,
            path,
            rate,
            Duration::from_secs(warmup),
            Duration::from_secs(seconds),
        ));
        let ms = |p| percentile(&latencies, p) / 1000.0;
        let row = (
            target.name,
            ms(50.0),
            ms(95.0),
            ms(99.0),
            ms(100.0),
            errors,
            measured,
        );
        println!(
            "  {:<16} p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({measured} requests, {errors} errors)",
            row.0, row.1, row.2, row.3, row.4
        );
        rows.push(row);
    }
    let direct_p95 = rows.first().map_or(f64::NAN, |r| r.2);
    println!();
    println!("| target | p50 ms | p95 ms | p99 ms | max ms | p95 − direct | requests | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, p50, p95, p99, max, errors, measured) in &rows {
        println!(
            "| {name} | {p50:.2} | {p95:.2} | {p99:.2} | {max:.2} | {:+.2} ms | {measured} | {errors} |",
            p95 - direct_p95
        );
    }
    if let Some(activator) = rows.iter().find(|r| r.0 == "activator") {
        let extra = activator.2 - direct_p95;
        println!();
        println!(
            "activator p95 {extra:+.2} ms vs direct (bound ≤ +5 ms: {})",
            if extra <= 5.0 { "met" } else { "MISSED" }
        );
    }
}
