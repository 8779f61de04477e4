//! Starts the real `hello` and `testfn` binaries on loopback and talks raw
//! HTTP/1.1 to them.

// Test-only helpers outside #[test] fns: unwrapping is the point here.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(20);

/// A running function process; killed on drop if still alive.
struct Function {
    child: Child,
    addr: SocketAddr,
}

impl Function {
    /// Starts `bin` on 127.0.0.1 with a kernel-chosen port and waits for its
    /// `listening on <addr>` line.
    fn start(bin: &'static str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.env("BIND_ADDR", "127.0.0.1")
            .env("PORT", "0")
            .env_remove("POD_NAME")
            .env_remove("MAX_CONCURRENCY")
            .env_remove("STARTUP_DELAY_MS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn function");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("[{bin}] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        break a.parse().expect("bound address");
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("{bin} did not report listening: {e}");
                }
            }
        };
        Function { child, addr }
    }

    fn get(&self, target: &str) -> Resp {
        request(self.addr, "GET", target, b"")
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "function did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

fn write_request(s: &mut TcpStream, method: &str, target: &str, body: &[u8], close: bool) {
    let conn = if close { "close" } else { "keep-alive" };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: fn\r\nConnection: {conn}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

/// Reads one response (Content-Length or chunked).
fn read_response(r: &mut impl BufRead) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if let Some(len) = find("content-length") {
        body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            if size == 0 {
                break;
            }
        }
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Resp {
    let mut s = connect(addr);
    write_request(&mut s, method, target, body, true);
    read_response(&mut BufReader::new(s))
}

/// Polls `/stats` until `pred` holds.
fn wait_stats(f: &Function, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = f.get("/stats").json();
        if pred(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats never matched: {stats}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn hello_names_pod_and_keeps_alive() {
    let mut f = Function::start(env!("CARGO_BIN_EXE_hello"), &[("POD_NAME", "hello-pod-7")]);
    let mut s = connect(f.addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    for path in ["/", "/anything?x=1"] {
        write_request(&mut s, "GET", path, b"", false);
        let resp = read_response(&mut r);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "hello from hello-pod-7\n");
        assert_eq!(resp.header("content-type"), Some("text/plain"));
        assert_eq!(resp.header("x-instance"), Some("hello-pod-7"));
    }
    drop((s, r));
    f.signal(Signal::SIGINT);
    assert!(f.wait_exit().success());
}

#[test]
fn testfn_knobs() {
    let f = Function::start(env!("CARGO_BIN_EXE_testfn"), &[("POD_NAME", "t-1")]);

    let r = f.get("/healthz");
    assert_eq!((r.status, r.text()), (200, "ok"));

    let started = Instant::now();
    let r = f.get("/?sleep=200&prime=100");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-instance"), Some("t-1"));
    assert_eq!(r.header("x-in-flight"), Some("1"));
    let j = r.json();
    assert_eq!(j["instance"], "t-1");
    assert_eq!(j["inFlight"], 1);
    assert_eq!(j["slept_ms"], 200);
    assert_eq!(j["primes"], 25);

    let r = f.get("/fail?status=503");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["instance"], "t-1");

    let r = f.get("/?bloat=4");
    assert_eq!((r.status, r.json()["bloat_mib"].as_u64()), (200, Some(4)));

    for bad in ["/?sleep=abc", "/?status=42", "/?bloat=5000", "/?prime=-3"] {
        let r = f.get(bad);
        assert_eq!(r.status, 400, "{bad}");
        assert!(!r.body.is_empty());
    }

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = request(f.addr, "POST", "/echo", &payload);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-in-flight"), Some("1"));
    assert_eq!(r.body, payload);
    let r = request(f.addr, "PUT", "/?echo=1&status=201", b"abc");
    assert_eq!((r.status, r.text()), (201, "abc"));

    // healthz, stats and 400s are not counted.
    let stats = wait_stats(&f, |s| s["inFlight"] == 0);
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["overlaps"], 0);
    assert_eq!(stats["maxInFlight"], 1);
}

#[test]
fn testfn_counts_overlaps() {
    let f = Function::start(
        env!("CARGO_BIN_EXE_testfn"),
        &[("POD_NAME", "t-2"), ("MAX_CONCURRENCY", "1")],
    );
    let addr = f.addr;
    let first = thread::spawn(move || request(addr, "GET", "/?sleep=800", b""));
    wait_stats(&f, |s| s["inFlight"] == 1);
    let second = thread::spawn(move || request(addr, "GET", "/?sleep=10", b""));
    let (a, b) = (first.join().unwrap(), second.join().unwrap());
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.header("x-in-flight"), Some("1"));
    assert_eq!(b.header("x-in-flight"), Some("2"));
    assert_eq!(b.json()["inFlight"], 2);

    let stats = f.get("/stats").json();
    assert_eq!(stats["instance"], "t-2");
    assert_eq!(stats["requests"], 2);
    assert_eq!(stats["inFlight"], 0);
    assert_eq!(stats["maxInFlight"], 2);
    assert_eq!(stats["overlaps"], 1);

    // Sequential requests never overlap.
    for _ in 0..5 {
        assert_eq!(f.get("/").status, 200);
    }
    assert_eq!(f.get("/stats").json()["overlaps"], 1);
}

#[test]
fn testfn_sigterm_drains_in_flight() {
    let mut f = Function::start(env!("CARGO_BIN_EXE_testfn"), &[("STARTUP_DELAY_MS", "50")]);
    let addr = f.addr;
    let in_flight = thread::spawn(move || request(addr, "GET", "/?sleep=700", b""));
    wait_stats(&f, |s| s["inFlight"] == 1);
    let signalled = Instant::now();
    f.signal(Signal::SIGTERM);
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["slept_ms"], 700);
    let status = f.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    // No longer accepting.
    assert!(TcpStream::connect(addr).is_err());
}
