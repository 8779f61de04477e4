//! Who may send stats reports: only activator pods, proven by a projected
//! ServiceAccount token with thaw's audience in `Authorization: Bearer`.
//!
//! The token is verified with a TokenReview, once per token: the verdict is
//! cached by the token's SHA-256 until the token expires (at most
//! [`MAX_CACHE`]), so reports every second cost no API calls. Accepted are
//! tokens of the configured activator ServiceAccounts only, and the pod the
//! token is bound to names the activator the report may speak for.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};

/// The audience thaw's activator tokens carry (and reviews ask for).
pub const DEFAULT_AUDIENCE: &str = "thaw.dev/autoscaler";
/// The longest a verdict is trusted without asking the API server again.
pub const MAX_CACHE: Duration = Duration::from_secs(600);
/// How long a refused token stays refused without a new review.
pub const NEGATIVE_CACHE: Duration = Duration::from_secs(30);
/// Most tokens remembered; two per activator pod at any time in practice.
const MAX_ENTRIES: usize = 4096;
/// The pod a bound token names, in a TokenReview's user extra.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Why a report was refused before it reached the autoscaler. The labels of
/// `thaw_stats_rejected_total{reason}` are [`Rejection::label`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no bearer token: activators authenticate with a projected ServiceAccount token")]
    MissingToken,
    #[error("the token was not accepted by the API server: {0}")]
    InvalidToken(String),
    #[error("the token could not be reviewed now: {0}")]
    ReviewFailed(String),
    #[error("{0} is not an activator ServiceAccount")]
    WrongServiceAccount(String),
    #[error("a token bound to pod {pod:?} cannot report for activator {activator:?}")]
    WrongActivator {
        pod: Option<String>,
        activator: String,
    },
}

impl Rejection {
    /// Every label value, to pre-register the series at 0.
    pub const LABELS: [&'static str; 5] = [
        "missing_token",
        "invalid_token",
        "review_failed",
        "wrong_service_account",
        "wrong_activator",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken(_) => "invalid_token",
            Self::ReviewFailed(_) => "review_failed",
            Self::WrongServiceAccount(_) => "wrong_service_account",
            Self::WrongActivator { .. } => "wrong_activator",
        }
    }

    /// 401 for no or a bad token, 403 for a good token of the wrong
    /// identity, 503 when the API server cannot be asked (the sender retries).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::ReviewFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::WrongServiceAccount(_) | Self::WrongActivator { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// `thaw_stats_rejected_total{reason}`, every reason at 0 from the start.
pub fn rejected_counter(registry: &prometheus::Registry) -> prometheus::Result<IntCounterVec> {
    let counter = IntCounterVec::new(
        prometheus::Opts::new(
            "thaw_stats_rejected_total",
            "Stats reports refused before they reached the autoscaler, by reason.",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(counter.clone()))?;
    for reason in Rejection::LABELS {
        counter.with_label_values(&[reason]);
    }
    Ok(counter)
}

/// How the stats endpoint authenticates reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsAuth {
    /// Bearer tokens of these ServiceAccounts (`namespace/name`) for this
    /// audience.
    Activators {
        audience: String,
        service_accounts: Vec<String>,
    },
    /// Anyone may report (`--allow-unauthenticated-stats`; local development).
    Off,
}

/// A verified sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `namespace/name` of its ServiceAccount.
    pub service_account: String,
    /// The pod its token is bound to, if it is bound to one.
    pub pod: Option<String>,
}

impl Identity {
    /// Whether this sender may report as `activator`: its token is bound to
    /// the pod of that name.
    pub fn check_activator(&self, activator: &str) -> Result<(), Rejection> {
        if self.pod.as_deref() == Some(activator) {
            Ok(())
        } else {
            Err(Rejection::WrongActivator {
                pod: self.pod.clone(),
                activator: activator.to_owned(),
            })
        }
    }
}

/// What a TokenReview said about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Review {
    Authenticated {
        username: String,
        pod: Option<String>,
        audiences: Vec<String>,
    },
    Refused(String),
}

/// Asks the API server about a token (a mock in unit tests).
pub trait Reviewer: Send + Sync {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<Review, String>>;
}

/// The TokenReview API through kube's client.
pub struct KubeReviewer(pub Client);

impl Reviewer for KubeReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audiences: &'a [String],
    ) -> BoxFuture<'a, Result<Review, String>> {
        Box::pin(async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(audiences.to_vec()),
                },
                ..TokenReview::default()
            };
            let reviewed = Api::<TokenReview>::all(self.0.clone())
                .create(&PostParams::default(), &request)
                .await
                .map_err(|e| e.to_string())?;
            let status = reviewed.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                return Ok(Review::Refused(
                    status.error.unwrap_or_else(|| "not authenticated".into()),
                ));
            }
            let user = status.user.unwrap_or_default();
            let pod = user
                .extra
                .as_ref()
                .and_then(|extra| extra.get(POD_NAME_EXTRA))
                .and_then(|values| values.first().cloned());
            Ok(Review::Authenticated {
                username: user.username.unwrap_or_default(),
                pod,
                audiences: status.audiences.unwrap_or_default(),
            })
        })
    }
}

#[derive(Clone, Debug)]
struct Cached {
    verdict: Result<Identity, Rejection>,
    until: Instant,
}

/// Verifies bearer tokens, caching each verdict.
pub struct Authenticator {
    reviewer: Arc<dyn Reviewer>,
    audiences: Vec<String>,
    /// Accepted usernames: `system:serviceaccount:<namespace>:<name>`.
    allowed: BTreeSet<String>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl Authenticator {
    /// Accepts tokens for `audience` of the ServiceAccounts `allowed`
    /// (`namespace/name` each).
    pub fn new(
        reviewer: Arc<dyn Reviewer>,
        audience: &str,
        allowed: &[String],
    ) -> anyhow::Result<Self> {
        let mut usernames = BTreeSet::new();
        for account in allowed {
            let Some((namespace, name)) = account.split_once('/') else {
                anyhow::bail!("--activator-service-account {account:?} must be <namespace>/<name>");
            };
            if namespace.is_empty() || name.is_empty() || name.contains('/') {
                anyhow::bail!("--activator-service-account {account:?} must be <namespace>/<name>");
            }
            usernames.insert(format!("system:serviceaccount:{namespace}:{name}"));
        }
        if usernames.is_empty() {
            anyhow::bail!("at least one --activator-service-account is needed");
        }
        Ok(Self {
            reviewer,
            audiences: vec![audience.to_owned()],
            allowed: usernames,
            cache: Mutex::default(),
        })
    }

    /// The sender of a request with `headers`, received at `now` (`wall` the
    /// same moment by the wall clock, to read the token's expiry).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Identity, Rejection> {
        let token = bearer(headers).ok_or(Rejection::MissingToken)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.lock().get(&key).filter(|c| c.until > now) {
            return cached.verdict.clone();
        }
        let review = self
            .reviewer
            .review(token, &self.audiences)
            .await
            .map_err(Rejection::ReviewFailed)?;
        let verdict = self.judge(review);
        let until = match &verdict {
            Ok(_) => now + remaining(token, wall).min(MAX_CACHE),
            Err(_) => now + NEGATIVE_CACHE,
        };
        let mut cache = self.lock();
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                verdict: verdict.clone(),
                until,
            },
        );
        verdict
    }

    fn judge(&self, review: Review) -> Result<Identity, Rejection> {
        let (username, pod, audiences) = match review {
            Review::Authenticated {
                username,
                pod,
                audiences,
            } => (username, pod, audiences),
            Review::Refused(why) => return Err(Rejection::InvalidToken(why)),
        };
        // The API server answers the audiences the token is valid for; a
        // token for another audience must not pass even if one ignores it.
        if !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(Rejection::InvalidToken(format!(
                "the token is not for audience {}",
                self.audiences.join(",")
            )));
        }
        if !self.allowed.contains(&username) {
            return Err(Rejection::WrongServiceAccount(username));
        }
        let service_account = username
            .strip_prefix("system:serviceaccount:")
            .unwrap_or(&username)
            .replacen(':', "/", 1);
        Ok(Identity {
            service_account,
            pod,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// How long `token` stays valid from `wall` by its `exp` claim. Read only
/// after the API server vouched for the token; without a readable `exp`,
/// nothing (the verdict is not cached).
fn remaining(token: &str, wall: SystemTime) -> Duration {
    let exp = thaw_serve::token::unverified_claims(token)
        .and_then(|claims| claims.get("exp").and_then(serde_json::Value::as_u64));
    let now = wall
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    exp.map_or(Duration::ZERO, |exp| {
        Duration::from_secs(exp.saturating_sub(now))
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers from a fixed table and counts the reviews.
    struct Table {
        calls: AtomicUsize,
        answers: HashMap<String, Review>,
    }

    impl Reviewer for Table {
        fn review<'a>(
            &'a self,
            token: &'a str,
            audiences: &'a [String],
        ) -> BoxFuture<'a, Result<Review, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(audiences, [DEFAULT_AUDIENCE.to_owned()]);
            let answer = self.answers.get(token).cloned();
            Box::pin(async move { answer.ok_or_else(|| "connection refused".to_owned()) })
        }
    }

    fn jwt(exp: u64) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            engine.encode(r#"{"alg":"RS256"}"#),
            engine.encode(format!(r#"{{"exp":{exp},"sub":"x"}}"#))
        )
    }

    fn activator(pod: &str) -> Review {
        Review::Authenticated {
            username: "system:serviceaccount:thaw-system:thaw-activator".into(),
            pod: Some(pod.into()),
            audiences: vec![DEFAULT_AUDIENCE.into()],
        }
    }

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    fn setup(answers: Vec<(String, Review)>) -> (Arc<Table>, Authenticator) {
        let table = Arc::new(Table {
            calls: AtomicUsize::new(0),
            answers: answers.into_iter().collect(),
        });
        let auth = Authenticator::new(
            table.clone(),
            DEFAULT_AUDIENCE,
            &["thaw-system/thaw-activator".to_owned()],
        )
        .unwrap();
        (table, auth)
    }

    const WALL: u64 = 1_800_000_000;

    fn wall() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(WALL)
    }

    #[tokio::test]
    async fn one_review_per_token_until_it_expires() {
        let short = jwt(WALL + 120);
        let long = jwt(WALL + 7200);
        let (table, auth) = setup(vec![
            (short.clone(), activator("act-0")),
            (long.clone(), activator("act-1")),
        ]);
        let t0 = Instant::now();
        for i in 0..50 {
            let now = t0 + Duration::from_secs(i);
            let id = auth.authenticate(&headers(&short), now, wall()).await;
            assert_eq!(id.unwrap().pod.as_deref(), Some("act-0"));
        }
        assert_eq!(table.calls.load(Ordering::SeqCst), 1);
        // Past its exp, the token is reviewed again.
        let later = t0 + Duration::from_secs(121);
        auth.authenticate(&headers(&short), later, wall())
            .await
            .unwrap();
        assert_eq!(table.calls.load(Ordering::SeqCst), 2);

        // A long-lived token is trusted for 10 minutes at most.
        auth.authenticate(&headers(&long), t0, wall())
            .await
            .unwrap();
        auth.authenticate(
            &headers(&long),
            t0 + MAX_CACHE - Duration::from_secs(1),
            wall(),
        )
        .await
        .unwrap();
        assert_eq!(table.calls.load(Ordering::SeqCst), 3);
        auth.authenticate(&headers(&long), t0 + MAX_CACHE, wall())
            .await
            .unwrap();
        assert_eq!(table.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn verdicts_and_their_status_codes() {
        let other_sa = jwt(WALL + 600);
        let refused = jwt(WALL + 601);
        let wrong_audience = jwt(WALL + 602);
        let unknown = jwt(WALL + 603);
        let (table, auth) = setup(vec![
            (
                other_sa.clone(),
                Review::Authenticated {
                    username: "system:serviceaccount:apps:default".into(),
                    pod: Some("act-0".into()),
                    audiences: vec![DEFAULT_AUDIENCE.into()],
                },
            ),
            (refused.clone(), Review::Refused("token expired".into())),
            (
                wrong_audience.clone(),
                Review::Authenticated {
                    username: "system:serviceaccount:thaw-system:thaw-activator".into(),
                    pod: Some("act-0".into()),
                    audiences: vec!["https://kubernetes.default.svc".into()],
                },
            ),
        ]);
        let now = Instant::now();
        let status = |r: Result<Identity, Rejection>| r.unwrap_err().status();
        assert_eq!(
            status(auth.authenticate(&HeaderMap::new(), now, wall()).await),
            StatusCode::UNAUTHORIZED
        );
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(
            auth.authenticate(&basic, now, wall()).await,
            Err(Rejection::MissingToken)
        );
        assert_eq!(
            table.calls.load(Ordering::SeqCst),
            0,
            "no review without a token"
        );

        let wrong = auth.authenticate(&headers(&other_sa), now, wall()).await;
        assert_eq!(
            wrong,
            Err(Rejection::WrongServiceAccount(
                "system:serviceaccount:apps:default".into()
            ))
        );
        assert_eq!(wrong.unwrap_err().status(), StatusCode::FORBIDDEN);
        assert_eq!(
            status(auth.authenticate(&headers(&refused), now, wall()).await),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(
                auth.authenticate(&headers(&wrong_audience), now, wall())
                    .await
            ),
            StatusCode::UNAUTHORIZED
        );
        let failed = auth.authenticate(&headers(&unknown), now, wall()).await;
        assert_eq!(
            failed.unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // A failed review is not cached: the next report asks again.
        let calls = table.calls.load(Ordering::SeqCst);
        let _ = auth.authenticate(&headers(&unknown), now, wall()).await;
        assert_eq!(table.calls.load(Ordering::SeqCst), calls + 1);
        // A refusal is cached briefly.
        let _ = auth.authenticate(&headers(&refused), now, wall()).await;
        assert_eq!(table.calls.load(Ordering::SeqCst), calls + 1);
    }

    #[test]
    fn the_token_names_the_only_activator_it_speaks_for() {
        let identity = Identity {
            service_account: "thaw-system/thaw-activator".into(),
            pod: Some("act-0".into()),
        };
        assert_eq!(identity.check_activator("act-0"), Ok(()));
        let error = identity.check_activator("act-1").unwrap_err();
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        let unbound = Identity {
            pod: None,
            ..identity
        };
        assert!(unbound.check_activator("act-0").is_err());
    }

    #[test]
    fn configured_accounts_must_be_namespace_slash_name() {
        let table: Arc<dyn Reviewer> = Arc::new(Table {
            calls: AtomicUsize::new(0),
            answers: HashMap::new(),
        });
        for bad in ["thaw-activator", "/x", "ns/", "a/b/c"] {
            assert!(
                Authenticator::new(table.clone(), DEFAULT_AUDIENCE, &[bad.into()]).is_err(),
                "{bad}"
            );
        }
        assert!(Authenticator::new(table, DEFAULT_AUDIENCE, &[]).is_err());
    }
}
