//! Fixtures shared by unit tests and cluster tests, so both judge the same
//! inputs: the example Functions users copy, and invalid Functions with the
//! message the API server must answer them with.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The image of sample function `name` (hello, testfn) for process-node
/// tests: `thaw.dev/samples/<name>`, or `$THAW_E2E_SAMPLE_IMAGE_PREFIX<name>`
/// when that is set (to run another build's samples, mapped in
/// e2e/images.toml).
pub fn sample_image(name: &str) -> String {
    let prefix = std::env::var("THAW_E2E_SAMPLE_IMAGE_PREFIX")
        .unwrap_or_else(|_| "thaw.dev/samples/".to_owned());
    format!("{prefix}{name}")
}

/// A YAML document from a file, as JSON.
pub fn read_yaml(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every example Function under `manifests/examples/`, by file name.
pub fn example_functions() -> Result<Vec<(String, Value)>> {
    yaml_files(&repo_root().join("manifests/examples"))?
        .into_iter()
        .map(|path| Ok((file_name(&path), read_yaml(&path)?)))
        .collect()
}

/// A Function the API server must reject.
#[derive(Debug)]
pub struct InvalidFunction {
    /// File name, for failure messages.
    pub name: String,
    /// The message the rejection must contain (the file's `# expect:` line).
    pub expect: String,
    pub object: Value,
}

/// Every invalid Function under `operator/api/tests/invalid/`.
pub fn invalid_functions() -> Result<Vec<InvalidFunction>> {
    yaml_files(&repo_root().join("operator/api/tests/invalid"))?
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)?;
            let expect = text
                .lines()
                .find_map(|line| line.strip_prefix("# expect: "))
                .with_context(|| format!("{} has no `# expect:` line", path.display()))?
                .to_owned();
            Ok(InvalidFunction {
                name: file_name(&path),
                expect,
                object: read_yaml(&path)?,
            })
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
