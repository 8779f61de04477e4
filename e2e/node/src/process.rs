//! Starting container processes (in the pod's network namespace, in their own
//! process group) and stopping them (SIGTERM, grace period, SIGKILL).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

/// What to start.
#[derive(Debug, Clone)]
pub struct Launch {
    pub ip_bin: PathBuf,
    /// Network namespace to enter; `None` for host-network pods.
    pub netns: Option<String>,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
}

pub struct Running {
    pub child: Child,
    /// The process group (= pid of the process, which leads its group).
    pub pgid: i32,
}

/// The argv actually executed: `ip netns exec NS PROGRAM ARGS...`, which
/// execs PROGRAM in place after entering the namespace.
pub fn argv(l: &Launch) -> (PathBuf, Vec<String>) {
    match &l.netns {
        Some(ns) => {
            let mut args = vec![
                "netns".to_string(),
                "exec".to_string(),
                ns.clone(),
                l.program.to_string_lossy().into_owned(),
            ];
            args.extend(l.args.iter().cloned());
            (l.ip_bin.clone(), args)
        }
        None => (l.program.clone(), l.args.clone()),
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

pub fn spawn(l: &Launch) -> Result<Running, String> {
    if !l.cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist",
            l.cwd.display()
        ));
    }
    let out = open_log(&l.log)?;
    let err = out
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", l.log.display()))?;
    let (program, args) = argv(l);
    let child = Command::new(&program)
        .args(&args)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&l.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", l.program.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| "process exited before its pid was known".to_string())?;
    let pgid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    debug!(pid, program = %l.program.display(), "started");
    Ok(Running { child, pgid })
}

pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// Exit code and signal, the way container runtimes report them (128+signal
/// for a process killed by a signal).
pub fn exit_info(status: ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (255, None),
    }
}

/// Sends SIGTERM to the process group, waits up to `grace` for the process to
/// exit (the grace period may only shrink while waiting: a newer, shorter one
/// arrives on `stop`), then SIGKILLs the group. Afterwards the whole group is
/// SIGKILLed so no child outlives its container.
pub async fn terminate(
    r: &mut Running,
    grace: Duration,
    stop: Option<&mut watch::Receiver<Option<Duration>>>,
) -> ExitStatus {
    let began = Instant::now();
    let mut deadline = began + grace;
    if grace.is_zero() {
        signal_group(r.pgid, Signal::SIGKILL);
    } else {
        signal_group(r.pgid, Signal::SIGTERM);
    }
    let mut stop = stop;
    let status = loop {
        let changed = async {
            match stop.as_deref_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            st = r.child.wait() => break st,
            _ = tokio::time::sleep_until(deadline) => {
                signal_group(r.pgid, Signal::SIGKILL);
                break r.child.wait().await;
            }
            ok = changed => {
                let newer = if ok { stop.as_deref().and_then(|rx| *rx.borrow()) } else { None };
                match newer {
                    Some(g) => deadline = deadline.min(began + g),
                    // The sender is gone: stop listening.
                    None => stop = None,
                }
            }
        }
    };
    signal_group(r.pgid, Signal::SIGKILL);
    status.unwrap_or_else(|_| ExitStatus::from_raw(137 << 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_wraps_in_netns_exec() {
        let l = Launch {
            ip_bin: "/sbin/ip".into(),
            netns: Some("thaw-abc".into()),
            program: "/bin/prog".into(),
            args: vec!["-x".into()],
            env: vec![],
            cwd: "/".into(),
            log: "/tmp/x.log".into(),
        };
        let (p, a) = argv(&l);
        assert_eq!(p, PathBuf::from("/sbin/ip"));
        assert_eq!(a, vec!["netns", "exec", "thaw-abc", "/bin/prog", "-x"]);
        let host = Launch { netns: None, ..l };
        let (p, a) = argv(&host);
        assert_eq!(p, PathBuf::from("/bin/prog"));
        assert_eq!(a, vec!["-x"]);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_info(ExitStatus::from_raw(0)), (0, None));
        assert_eq!(exit_info(ExitStatus::from_raw(3 << 8)), (3, None));
        assert_eq!(exit_info(ExitStatus::from_raw(9)), (137, Some(9)));
        assert_eq!(exit_info(ExitStatus::from_raw(15)), (143, Some(15)));
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill_and_logs_output() {
        let dir = std::env::temp_dir().join(format!("thaw-node-proc-{}", std::process::id()));
        let log = dir.join("c.log");
        let l = Launch {
            ip_bin: "/bin/false".into(),
            netns: None,
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap '' TERM; echo hello $FOO; sleep 30 & wait".into(),
            ],
            env: vec![("FOO".into(), "bar".into())],
            cwd: "/".into(),
            log: log.clone(),
        };
        let mut r = spawn(&l).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = std::time::Instant::now();
        let st = terminate(&mut r, Duration::from_millis(300), None).await;
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(exit_info(st), (137, Some(9)));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello bar\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn terminate_uses_sigterm_first() {
        let l = Launch {
            ip_bin: "/bin/false".into(),
            netns: None,
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
            env: vec![],
            cwd: "/".into(),
            log: "/dev/null".into(),
        };
        let mut r = spawn(&l).unwrap();
        let st = terminate(&mut r, Duration::from_secs(5), None).await;
        assert_eq!(exit_info(st), (143, Some(15)));
    }
}
