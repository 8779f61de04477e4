//! The image map (`e2e/images.toml`): which local program an image name stands for.
//!
//! ```toml
//! [images."thaw.dev/samples/hello"]
//! entrypoint = ["target/debug/hello"]   # like a Dockerfile ENTRYPOINT
//! cmd = []                              # like CMD: default arguments
//! env = { RUST_LOG = "info" }           # like ENV
//! working_dir = "."                     # like WORKDIR (relative: against --root)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMap {
    #[serde(default)]
    pub images: BTreeMap<String, ImageEntry>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

impl ImageMap {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads the map; the error names the file as it was given.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read image map {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("invalid image map {}: {e}", path.display()))
    }

    /// Looks an image up: the exact name first, then without digest, then
    /// without tag.
    pub fn lookup(&self, image: &str) -> Option<&ImageEntry> {
        image_candidates(image)
            .iter()
            .find_map(|name| self.images.get(name))
    }
}

/// `reg:5000/a/b:tag@sha256:x` -> [that, `reg:5000/a/b:tag`, `reg:5000/a/b`].
pub fn image_candidates(image: &str) -> Vec<String> {
    let mut out = vec![image.to_string()];
    let mut name = image;
    if let Some(at) = name.find('@') {
        name = &name[..at];
        out.push(name.to_string());
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    if let Some(colon) = name[last_slash..].rfind(':') {
        name = &name[..last_slash + colon];
        out.push(name.to_string());
    }
    out.dedup();
    out
}

/// The argv a container runs, with Docker/Kubernetes semantics: `command`
/// replaces the entrypoint (and drops the image's cmd), `args` replace cmd.
pub fn command_line(
    entry: &ImageEntry,
    command: &[String],
    args: &[String],
) -> Result<Vec<String>, String> {
    let argv: Vec<String> = if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else if !args.is_empty() {
        entry.entrypoint.iter().chain(args).cloned().collect()
    } else {
        entry.entrypoint.iter().chain(&entry.cmd).cloned().collect()
    };
    if argv.is_empty() {
        return Err("no command specified".to_string());
    }
    Ok(argv)
}

/// Resolves the program to run: absolute paths are used as they are, paths
/// with a slash are relative to `root`, bare names are searched on `path_env`.
pub fn resolve_program(program: &str, root: &Path, path_env: &str) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("empty program name".to_string());
    }
    let candidate = Path::new(program);
    if candidate.is_absolute() || program.contains('/') {
        let full = if candidate.is_absolute() {
            candidate.to_path_buf()
        } else {
            root.join(candidate)
        };
        return if is_executable(&full) {
            Ok(full)
        } else {
            Err(format!(
                "exec: {:?}: stat {}: no such executable file",
                program,
                full.display()
            ))
        };
    }
    path_env
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("exec: {program:?}: executable file not found in $PATH"))
}

/// The working directory: `workingDir` of the container, else the image's,
/// else `root`; relative ones are against `root`.
pub fn working_dir(container_dir: Option<&str>, entry: &ImageEntry, root: &Path) -> PathBuf {
    match container_dir
        .filter(|d| !d.is_empty())
        .or(entry.working_dir.as_deref())
    {
        Some(d) => root.join(d),
        None => root.to_path_buf(),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    const MAP: &str = r#"
        [images."thaw.dev/samples/hello"]
        entrypoint = ["target/debug/hello"]

        [images."thaw.dev/samples/testfn:v2"]
        entrypoint = ["target/debug/testfn"]
        cmd = ["--mode", "v2"]
        env = { RUST_LOG = "debug" }

        [images."localhost:5000/tool"]
        entrypoint = ["tool"]
    "#;

    #[test]
    fn parses_and_rejects_unknown_fields() {
        let m = ImageMap::parse(MAP).unwrap();
        assert_eq!(m.images.len(), 3);
        assert!(ImageMap::parse("[images.x]\nentrypoynt = []\n").is_err());
        assert!(ImageMap::parse("").unwrap().images.is_empty());
    }

    #[test]
    fn candidates_strip_digest_then_tag_but_not_registry_port() {
        assert_eq!(
            image_candidates("localhost:5000/a/b:1@sha256:ff"),
            v(&[
                "localhost:5000/a/b:1@sha256:ff",
                "localhost:5000/a/b:1",
                "localhost:5000/a/b"
            ])
        );
        assert_eq!(
            image_candidates("localhost:5000/tool"),
            v(&["localhost:5000/tool"])
        );
        assert_eq!(image_candidates("hello"), v(&["hello"]));
        assert_eq!(
            image_candidates("hello:latest"),
            v(&["hello:latest", "hello"])
        );
    }

    #[test]
    fn lookup_exact_first_then_stripped() {
        let m = ImageMap::parse(MAP).unwrap();
        let hello = m.lookup("thaw.dev/samples/hello:1.0").unwrap();
        assert_eq!(hello.entrypoint, v(&["target/debug/hello"]));
        assert!(m.lookup("thaw.dev/samples/hello@sha256:abc").is_some());
        // An exact tag entry matches; another tag of it does not.
        assert_eq!(
            m.lookup("thaw.dev/samples/testfn:v2").unwrap().cmd,
            v(&["--mode", "v2"])
        );
        assert!(m.lookup("thaw.dev/samples/testfn:v3").is_none());
        assert!(m.lookup("localhost:5000/tool:7").is_some());
        assert!(m.lookup("foo:1").is_none());
    }

    #[test]
    fn command_and_args_follow_docker_semantics() {
        let e = ImageEntry {
            entrypoint: v(&["ep", "-x"]),
            cmd: v(&["c1", "c2"]),
            ..Default::default()
        };
        assert_eq!(
            command_line(&e, &[], &[]).unwrap(),
            v(&["ep", "-x", "c1", "c2"])
        );
        assert_eq!(
            command_line(&e, &[], &v(&["a"])).unwrap(),
            v(&["ep", "-x", "a"])
        );
        assert_eq!(
            command_line(&e, &v(&["sh", "-c"]), &[]).unwrap(),
            v(&["sh", "-c"])
        );
        assert_eq!(
            command_line(&e, &v(&["sh", "-c"]), &v(&["echo hi"])).unwrap(),
            v(&["sh", "-c", "echo hi"])
        );
        let cmd_only = ImageEntry {
            cmd: v(&["python3"]),
            ..Default::default()
        };
        assert_eq!(command_line(&cmd_only, &[], &[]).unwrap(), v(&["python3"]));
        assert!(command_line(&ImageEntry::default(), &[], &[]).is_err());
    }

    #[test]
    fn resolves_programs() {
        let root = std::env::temp_dir().join(format!("thaw-node-img-{}", std::process::id()));
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let prog = root.join("bin/prog");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("bin/data"), "").unwrap();

        assert_eq!(resolve_program("bin/prog", &root, "").unwrap(), prog);
        assert_eq!(
            resolve_program(prog.to_str().unwrap(), Path::new("/nope"), "").unwrap(),
            prog
        );
        let path_env = format!("/nonexistent:{}", root.join("bin").display());
        assert_eq!(
            resolve_program("prog", Path::new("/"), &path_env).unwrap(),
            prog
        );
        assert!(resolve_program("bin/data", &root, "").is_err());
        assert!(resolve_program("bin/missing", &root, "").is_err());
        assert!(
            resolve_program("missing", &root, &path_env)
                .unwrap_err()
                .contains("$PATH")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn working_dir_precedence() {
        let root = Path::new("/r");
        let e = ImageEntry {
            working_dir: Some("img".into()),
            ..Default::default()
        };
        assert_eq!(working_dir(Some("/abs"), &e, root), PathBuf::from("/abs"));
        assert_eq!(working_dir(Some("rel"), &e, root), PathBuf::from("/r/rel"));
        assert_eq!(working_dir(None, &e, root), PathBuf::from("/r/img"));
        assert_eq!(
            working_dir(None, &ImageEntry::default(), root),
            PathBuf::from("/r")
        );
    }
}
