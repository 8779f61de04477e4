//! emptyDir volumes, as far as processes can have them: a container that
//! mounts an emptyDir at /tmp gets a directory of its pod's own as `TMPDIR`
//! (processes share the host's /tmp, so a mount is not possible), created
//! with the pod and removed with it. Other mounts are not honoured.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::env::EnvList;

/// The directory of `pod`'s emptyDir volumes under its state directory.
pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// The directory `c` gets as `TMPDIR`: the emptyDir it mounts at /tmp, if
/// it mounts one there.
pub fn temp_dir(pod: &Pod, c: &Container, pod_dir: &Path) -> Option<PathBuf> {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == "/tmp")?;
    let volume = pod
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?;
    volume.empty_dir.as_ref()?;
    Some(volumes_dir(pod_dir).join(&volume.name))
}

/// Creates `c`'s [`temp_dir`], if it has one, and sets `TMPDIR` to it in
/// `env`, unless the container sets `TMPDIR` itself.
pub fn give_temp_dir(
    pod: &Pod,
    c: &Container,
    pod_dir: &Path,
    env: &mut EnvList,
) -> Result<(), String> {
    if env.get("TMPDIR").is_some() {
        return Ok(());
    }
    let Some(dir) = temp_dir(pod, c, pod_dir) else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    env.set("TMPDIR", dir.display().to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(volume: serde_json::Value, mount_path: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [volume],
                "containers": [{"name": "c", "volumeMounts": [{"name": "scratch", "mountPath": mount_path}]}],
            },
        }))
        .expect("pod")
    }

    #[test]
    fn an_empty_dir_at_tmp_becomes_the_pods_own_directory() {
        let p = pod(
            serde_json::json!({"name": "scratch", "emptyDir": {}}),
            "/tmp",
        );
        let c = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(
            temp_dir(&p, c, Path::new("/state/pods/ns_p_uid")),
            Some(PathBuf::from("/state/pods/ns_p_uid/volumes/scratch"))
        );
    }

    #[test]
    fn the_directory_is_made_and_given_as_tmpdir_unless_the_container_sets_one() {
        let p = pod(
            serde_json::json!({"name": "scratch", "emptyDir": {}}),
            "/tmp",
        );
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let pod_dir =
            std::env::temp_dir().join(format!("thaw-node-volumes-{}", std::process::id()));
        let mut env = EnvList::default();
        give_temp_dir(&p, c, &pod_dir, &mut env).expect("temp dir");
        let dir = pod_dir.join("volumes/scratch");
        assert_eq!(env.get("TMPDIR"), Some(dir.display().to_string().as_str()));
        assert!(dir.is_dir());
        let mut own = EnvList::default();
        own.set("TMPDIR", "/mine".into());
        give_temp_dir(&p, c, &pod_dir, &mut own).expect("temp dir");
        assert_eq!(own.get("TMPDIR"), Some("/mine"));
        std::fs::remove_dir_all(&pod_dir).expect("cleanup");
    }

    #[test]
    fn other_mounts_and_volumes_give_nothing() {
        let elsewhere = pod(
            serde_json::json!({"name": "scratch", "emptyDir": {}}),
            "/data",
        );
        let c = &elsewhere.spec.as_ref().expect("spec").containers[0];
        assert_eq!(temp_dir(&elsewhere, c, Path::new("/s")), None);
        let host = pod(
            serde_json::json!({"name": "scratch", "hostPath": {"path": "/x"}}),
            "/tmp",
        );
        let c = &host.spec.as_ref().expect("spec").containers[0];
        assert_eq!(temp_dir(&host, c, Path::new("/s")), None);
    }
}
