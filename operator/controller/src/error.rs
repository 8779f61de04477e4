//! The controller's errors, each with a short label for the
//! `thaw_reconcile_errors_total` metric.

/// Why a reconcile failed. Every variant is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating instance pod {pod}: {source}")]
    CreatePod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("marking instance {pod} draining: {source}")]
    DrainPod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting instance {pod}: {source}")]
    DeletePod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("annotating instance {pod}: {source}")]
    AnnotatePod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying Service {name}: {source}")]
    ApplyService {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying status: {0}")]
    ApplyStatus(#[source] kube::Error),
    #[error("the Function has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::CreatePod { .. } => "create_pod",
            Error::DrainPod { .. } => "drain_pod",
            Error::DeletePod { .. } => "delete_pod",
            Error::AnnotatePod { .. } => "annotate_pod",
            Error::ApplyService { .. } => "apply_service",
            Error::ApplyStatus(_) => "apply_status",
            Error::MissingField(_) => "missing_field",
        }
    }
}
