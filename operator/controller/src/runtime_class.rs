//! `podTemplate.runtimeClassName`: the RuntimeClass every instance pod runs
//! with must exist. A missing one makes the Function `Ready=False`, naming
//! it, and no instance is created (the API server would refuse the pod, or
//! it would sit pending); the RuntimeClass watch reconciles every Function
//! again when RuntimeClasses change.

use thaw_api::FunctionSpec;

use crate::status::Trouble;

/// The `Ready=False` reason of a missing RuntimeClass.
pub const RUNTIME_CLASS_NOT_FOUND: &str = "RuntimeClassNotFound";

/// The trouble, if `spec` names a RuntimeClass `exists` does not know.
pub fn missing(spec: &FunctionSpec, exists: impl Fn(&str) -> bool) -> Option<Trouble> {
    let name = spec.runtime_class_name()?;
    (!exists(name)).then(|| Trouble {
        reason: RUNTIME_CLASS_NOT_FOUND.into(),
        message: format!(
            "podTemplate.runtimeClassName names RuntimeClass {name:?}, which does not exist: no instance is created until it does"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FunctionSpec {
        serde_yaml::from_str(yaml).expect("spec")
    }

    #[test]
    fn a_missing_runtime_class_is_named() {
        let gvisor = spec("{image: hello:1, podTemplate: {runtimeClassName: gvisor}}");
        let trouble = missing(&gvisor, |_| false).expect("trouble");
        assert_eq!(trouble.reason, RUNTIME_CLASS_NOT_FOUND);
        assert!(
            trouble.message.contains("\"gvisor\""),
            "{}",
            trouble.message
        );
        assert_eq!(missing(&gvisor, |name| name == "gvisor"), None);
        assert_eq!(missing(&spec("{image: hello:1}"), |_| false), None);
    }
}
