//! The README's `make dev` path: `e2e/dev.sh` starts thaw on the local
//! cluster, applies manifests/examples/hello.yaml and prints a curl that
//! cold-starts it; that curl works. It runs in a test binary of its own
//! (cargo runs test binaries one at a time), because its operator watches
//! every namespace.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use kube::{Api, api::DeleteParams};
use thaw_api::Function;
use thaw_e2e::{Cluster, fixtures::repo_root, http};

/// Stops what `e2e/dev.sh` started, and removes its Function, when dropped.
struct DevCleanup {
    cluster: Cluster,
}

impl Drop for DevCleanup {
    fn drop(&mut self) {
        let pids = repo_root().join(".cluster/pids");
        for name in ["thaw-activator", "thaw-operator"] {
            let file: PathBuf = pids.join(format!("{name}.pid"));
            if let Ok(pid) = std::fs::read_to_string(&file) {
                let _ = Command::new("kill")
                    .args(["-TERM", "--", &format!("-{}", pid.trim())])
                    .status();
                let _ = std::fs::remove_file(&file);
            }
        }
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source e2e/cluster/lib.sh && \"$kubectl\" --kubeconfig {} delete fn hello -n default --ignore-not-found --wait=false",
                self.cluster.kubeconfig().display()
            ))
            .current_dir(repo_root())
            .status();
    }
}

#[tokio::test]
async fn make_dev_prints_a_curl_that_cold_starts_hello() {
    let cluster = Cluster::shared().await.expect("cluster");
    let _cleanup = DevCleanup {
        cluster: cluster.clone(),
    };
    let output = tokio::task::spawn_blocking(|| {
        Command::new("bash")
            .arg("e2e/dev.sh")
            .current_dir(repo_root())
            .output()
    })
    .await
    .expect("task")
    .expect("running e2e/dev.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "e2e/dev.sh failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let curl = "curl -i http://127.0.0.1:8080/fn/default/hello/";
    assert!(stdout.contains(curl), "no `{curl}` in:\n{stdout}");

    // hello.yaml is applied and Ready with no instance yet.
    let hello = Api::<Function>::namespaced(cluster.client(), "default")
        .get("hello")
        .await
        .expect("hello Function");
    let status = hello.status.expect("status");
    assert_eq!(status.instances.map(|i| i.ready), Some(0));

    // The printed curl, done here: a cold start through the activator.
    let activator: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let reply = http::get(
        activator,
        "127.0.0.1:8080",
        "/fn/default/hello/",
        Duration::from_secs(60),
    )
    .await
    .expect("the printed curl");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.starts_with("hello from hello-"),
        "{}",
        reply.body
    );
    assert!(reply.headers.contains_key("thaw-cold-start"), "{reply:?}");

    let _ = Api::<Function>::namespaced(cluster.client(), "default")
        .delete("hello", &DeleteParams::default())
        .await;
}
