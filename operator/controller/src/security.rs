//! The instance pod's security contexts: thaw's restrictive defaults with
//! the Function's `podTemplate.securityContext` and
//! `containerSecurityContext` merged over them field by field, so setting
//! one field (say `runAsUser`) keeps every other default (`runAsNonRoot`,
//! the seccomp profile, dropped capabilities).

use k8s_openapi::{
    DeepMerge,
    api::core::v1::{Capabilities, PodSecurityContext, SeccompProfile, SecurityContext},
};

/// Pod level: non-root, RuntimeDefault seccomp, then the user's fields.
pub fn pod_security_context(user: Option<&PodSecurityContext>) -> PodSecurityContext {
    let mut merged = PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    };
    if let Some(user) = user {
        merged.merge_from(user.clone());
    }
    merged
}

/// Container level: no privilege escalation, read-only root filesystem,
/// every capability dropped, then the user's fields.
pub fn container_security_context(user: Option<&SecurityContext>) -> SecurityContext {
    let mut merged = SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    };
    if let Some(user) = user {
        merged.merge_from(user.clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_pod_context_keeps_the_defaults() {
        let user = PodSecurityContext {
            run_as_user: Some(1000),
            fs_group: Some(2000),
            ..PodSecurityContext::default()
        };
        let merged = pod_security_context(Some(&user));
        assert_eq!(merged.run_as_user, Some(1000));
        assert_eq!(merged.fs_group, Some(2000));
        assert_eq!(merged.run_as_non_root, Some(true));
        assert_eq!(
            merged.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        assert_eq!(
            pod_security_context(None),
            pod_security_context(Some(&PodSecurityContext::default()))
        );
    }

    #[test]
    fn a_field_the_user_sets_wins() {
        let user = PodSecurityContext {
            run_as_non_root: Some(false),
            seccomp_profile: Some(SeccompProfile {
                type_: "Localhost".into(),
                localhost_profile: Some("fn.json".into()),
            }),
            ..PodSecurityContext::default()
        };
        let merged = pod_security_context(Some(&user));
        assert_eq!(merged.run_as_non_root, Some(false));
        let profile = merged.seccomp_profile.expect("profile");
        assert_eq!(
            (profile.type_.as_str(), profile.localhost_profile.as_deref()),
            ("Localhost", Some("fn.json"))
        );
    }

    #[test]
    fn a_partial_container_context_keeps_the_defaults() {
        let user = SecurityContext {
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        };
        let merged = container_security_context(Some(&user));
        assert_eq!(merged.read_only_root_filesystem, Some(false));
        assert_eq!(merged.allow_privilege_escalation, Some(false));
        let caps = merged.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(caps.add, Some(vec!["NET_BIND_SERVICE".to_owned()]));
    }
}
