//! The activator's proof of identity to the operator: a projected
//! ServiceAccount token (audience `thaw.dev/autoscaler`, bound to this pod),
//! sent as `Authorization: Bearer` with every stats report.
//!
//! kubelet rotates the file in place (an atomic symlink swap), so it is
//! looked at before every report and read again when it changed.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::SystemTime,
};

use http::HeaderValue;
use tracing::{info, warn};

/// Where the chart mounts the token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/thaw.dev/autoscaler/token";

/// What identifies one version of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

#[derive(Debug, Default)]
struct State {
    stamp: Option<Stamp>,
    header: Option<HeaderValue>,
    /// A missing or unreadable file is logged once until it is readable.
    complained: bool,
}

/// The token file, read lazily and again whenever it changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    audience: String,
    state: Mutex<State>,
}

impl TokenFile {
    /// The token at `path`, expected to carry `audience`.
    pub fn new(path: impl Into<PathBuf>, audience: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            audience: audience.into(),
            state: Mutex::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Bearer <token>` for the next report; `None` while there is no
    /// readable token (the operator then refuses the report with 401).
    pub fn header(&self) -> Option<HeaderValue> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                inode: meta.ino(),
            },
            Err(error) => {
                if !state.complained {
                    warn!(path = %self.path.display(), %error, "no token for stats reports: the operator will refuse them (logged once)");
                    state.complained = true;
                }
                state.stamp = None;
                state.header = None;
                return None;
            }
        };
        if state.stamp == Some(stamp) {
            return state.header.clone();
        }
        let header = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|token| {
                let token = token.trim();
                self.check_audience(token);
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())
            });
        match header {
            Ok(header) => {
                if state.complained || state.stamp.is_none() {
                    info!(path = %self.path.display(), "read the token for stats reports");
                }
                state.complained = false;
                state.stamp = Some(stamp);
                state.header = Some(header);
            }
            Err(error) => {
                warn!(path = %self.path.display(), %error, "reading the token for stats reports");
                state.complained = true;
                state.stamp = None;
                state.header = None;
            }
        }
        state.header.clone()
    }

    /// Logs when the token is not for the operator's audience: a chart or
    /// flag mismatch the operator would answer with 401.
    fn check_audience(&self, token: &str) {
        let audiences = audiences(token);
        if !audiences.contains(&self.audience) {
            warn!(path = %self.path.display(), expected = %self.audience, found = ?audiences, "the token is not for the stats audience");
        }
    }
}

/// The `aud` claim of a JWT (a string or a list), unverified: only for the
/// log line above.
fn audiences(token: &str) -> Vec<String> {
    let claims = thaw_serve::token::unverified_claims(token);
    match claims.as_ref().and_then(|c| c.get("aud")) {
        Some(serde_json::Value::String(aud)) => vec![aud.clone()],
        Some(serde_json::Value::Array(auds)) => auds
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt(aud: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            engine.encode("{}"),
            engine.encode(format!(r#"{{"aud":["{aud}"]}}"#))
        )
    }

    #[test]
    fn reads_the_token_again_when_kubelet_swaps_it() {
        let dir = std::env::temp_dir().join(format!("thaw-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let _ = std::fs::remove_file(&path);
        let file = TokenFile::new(&path, "thaw.dev/autoscaler");
        assert_eq!(file.header(), None, "no file, no header");

        let first = jwt("thaw.dev/autoscaler");
        std::fs::write(&path, format!("{first}\n")).unwrap();
        assert_eq!(file.header().unwrap(), format!("Bearer {first}").as_str());

        // kubelet writes a new file and renames it over the old one.
        let second = jwt("thaw.dev/autoscaler") + "x";
        let next = dir.join("token.new");
        std::fs::write(&next, &second).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(file.header().unwrap(), format!("Bearer {second}").as_str());

        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.header(), None, "a removed token is not sent any more");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn audiences_are_read_from_string_or_list() {
        assert_eq!(audiences(&jwt("a")), vec!["a".to_owned()]);
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let single = format!("x.{}.y", engine.encode(r#"{"aud":"b"}"#));
        assert_eq!(audiences(&single), vec!["b".to_owned()]);
        assert!(audiences("not a jwt").is_empty());
    }
}
