//! What the agent knows about a pod's containers, and the pod status built
//! from it (phase, conditions, container statuses) the way kubelet builds it.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub const REASON_CREATING: &str = "ContainerCreating";
pub const REASON_INITIALIZING: &str = "PodInitializing";

/// A pod's (or container's) restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    pub fn of_pod(pod: &Pod) -> Self {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => Restart::Never,
            Some("OnFailure") => Restart::OnFailure,
            _ => Restart::Always,
        }
    }

    /// Policy for an init container: sidecars (`restartPolicy: Always`) always
    /// restart, the others like OnFailure unless the pod says Never.
    pub fn of_init(pod: &Pod, c: &Container) -> Self {
        if is_sidecar(c) {
            Restart::Always
        } else if Restart::of_pod(pod) == Restart::Never {
            Restart::Never
        } else {
            Restart::OnFailure
        }
    }

    pub fn should_restart(self, exit_code: i32) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => exit_code != 0,
            Restart::Never => false,
        }
    }
}

pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

impl Terminated {
    fn to_k8s(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.exit_code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            message: self.message.clone(),
            started_at: self.started_at.map(Time),
            finished_at: Some(Time(self.finished_at)),
            container_id: self.container_id.clone(),
        }
    }

    fn from_k8s(t: &ContainerStateTerminated, now: Timestamp) -> Self {
        Terminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
            message: t.message.clone(),
            started_at: t.started_at.as_ref().map(|t| t.0),
            finished_at: t.finished_at.as_ref().map_or(now, |t| t.0),
            container_id: t.container_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

impl CState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        CState::Waiting {
            reason: reason.to_string(),
            message,
        }
    }
}

/// One container as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSnapshot {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: CState,
    pub last_state: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// Some instance was started before (by this agent or an earlier one).
    pub ever_started: bool,
    /// Terminated for good: the restart policy will not run it again.
    pub done: bool,
    pub sidecar: bool,
}

impl ContainerSnapshot {
    pub fn new(c: &Container, waiting_reason: &str) -> Self {
        ContainerSnapshot {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: None,
            state: CState::waiting(waiting_reason, None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            ever_started: false,
            done: false,
            sidecar: is_sidecar(c),
        }
    }

    /// Takes over what an earlier agent reported in `prior`: a container that
    /// ran before is started again as a restart; one that terminated for good
    /// stays terminated.
    pub fn adopt(
        c: &Container,
        prior: Option<&ContainerStatus>,
        policy: Restart,
        waiting_reason: &str,
        now: Timestamp,
    ) -> Self {
        let mut s = Self::new(c, waiting_reason);
        let Some(p) = prior else { return s };
        let state = p.state.clone().unwrap_or_default();
        let prior_last = p.last_state.as_ref().and_then(|l| l.terminated.as_ref());
        let started_before = state.running.is_some()
            || state.terminated.is_some()
            || p.restart_count > 0
            || prior_last.is_some();
        if !started_before {
            return s;
        }
        s.ever_started = true;
        s.restart_count = p.restart_count;
        s.image_id = p.image_id.clone();
        s.container_id = p.container_id.clone();
        if let Some(t) = &state.terminated {
            if !policy.should_restart(t.exit_code) {
                s.state = CState::Terminated(Terminated::from_k8s(t, now));
                s.last_state = prior_last.map(|l| Terminated::from_k8s(l, now));
                s.done = true;
                return s;
            }
            s.last_state = Some(Terminated::from_k8s(t, now));
        } else if let Some(r) = &state.running {
            s.last_state = Some(Terminated {
                exit_code: 255,
                signal: None,
                reason: "Unknown".into(),
                message: Some("the container's process was gone when thaw-node restarted".into()),
                started_at: r.started_at.as_ref().map(|t| t.0),
                finished_at: now,
                container_id: p.container_id.clone(),
            });
        } else {
            s.last_state = prior_last.map(|l| Terminated::from_k8s(l, now));
        }
        s
    }

    pub fn exit_code(&self) -> Option<i32> {
        match &self.state {
            CState::Terminated(t) => Some(t.exit_code),
            _ => None,
        }
    }

    /// Terminated for good with exit code 0.
    pub fn completed_ok(&self) -> bool {
        self.done && self.exit_code() == Some(0)
    }

    /// Moves a terminated state to `last_state` (a new instance is coming).
    pub fn retire_terminated(&mut self) {
        if let CState::Terminated(t) = &self.state {
            self.last_state = Some(t.clone());
        }
    }

    pub fn to_k8s(&self) -> ContainerStatus {
        let state = match &self.state {
            CState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            CState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            CState::Terminated(t) => ContainerState {
                terminated: Some(t.to_k8s()),
                ..Default::default()
            },
        };
        let last_state = ContainerState {
            terminated: self.last_state.as_ref().map(Terminated::to_k8s),
            ..Default::default()
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(last_state),
            ..Default::default()
        }
    }
}

/// Everything the agent tracks about one pod's containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runtime {
    pub init: Vec<ContainerSnapshot>,
    pub main: Vec<ContainerSnapshot>,
    /// All regular init containers completed (or there are none).
    pub initialized: bool,
    /// A regular init container failed and will not be retried.
    pub init_failed: bool,
    /// The network namespace is set up.
    pub sandbox_ready: bool,
    /// The pod's address once it has one (kept after the sandbox is gone).
    pub pod_ip: Option<Ipv4Addr>,
}

impl Runtime {
    /// The starting point for a pod, taking over its reported status if an
    /// earlier agent ran it.
    pub fn from_pod(pod: &Pod, now: Timestamp) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let find = |list: &Option<Vec<ContainerStatus>>, name: &str| -> Option<ContainerStatus> {
            list.iter().flatten().find(|s| s.name == name).cloned()
        };
        let inits = spec.init_containers.clone().unwrap_or_default();
        let has_regular_init = inits.iter().any(|c| !is_sidecar(c));
        let initialized_before = condition_is_true(pod, "Initialized");
        let main_reason = if has_regular_init && !initialized_before {
            REASON_INITIALIZING
        } else {
            REASON_CREATING
        };

        let init = inits
            .iter()
            .map(|c| {
                let prior = find(&status.init_container_statuses, &c.name);
                if initialized_before && !is_sidecar(c) {
                    // Completed before; not run again.
                    let mut s = ContainerSnapshot::new(c, REASON_CREATING);
                    let term = prior
                        .as_ref()
                        .and_then(|p| p.state.as_ref())
                        .and_then(|st| st.terminated.as_ref())
                        .map(|t| Terminated::from_k8s(t, now));
                    s.state = CState::Terminated(term.unwrap_or(Terminated {
                        exit_code: 0,
                        signal: None,
                        reason: "Completed".into(),
                        message: None,
                        started_at: None,
                        finished_at: now,
                        container_id: None,
                    }));
                    if let Some(p) = &prior {
                        s.restart_count = p.restart_count;
                        s.image_id = p.image_id.clone();
                        s.container_id = p.container_id.clone();
                    }
                    s.ever_started = true;
                    s.done = true;
                    s
                } else if initialized_before {
                    ContainerSnapshot::adopt(
                        c,
                        prior.as_ref(),
                        Restart::of_init(pod, c),
                        REASON_CREATING,
                        now,
                    )
                } else {
                    ContainerSnapshot::new(c, REASON_INITIALIZING)
                }
            })
            .collect();
        let policy = Restart::of_pod(pod);
        let main = spec
            .containers
            .iter()
            .map(|c| {
                let prior = find(&status.container_statuses, &c.name);
                ContainerSnapshot::adopt(c, prior.as_ref(), policy, main_reason, now)
            })
            .collect();
        Runtime {
            init,
            main,
            initialized: !has_regular_init || initialized_before,
            init_failed: false,
            sandbox_ready: false,
            pod_ip: None,
        }
    }
}

pub fn condition_is_true(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

pub fn is_terminal_phase(phase: &str) -> bool {
    phase == "Succeeded" || phase == "Failed"
}

/// The pod phase, kubelet-style.
pub fn phase(rt: &Runtime) -> &'static str {
    if rt.init_failed {
        return "Failed";
    }
    if !rt.initialized {
        return "Pending";
    }
    if !rt.main.is_empty() && rt.main.iter().all(|c| c.done) {
        return if rt.main.iter().all(|c| c.exit_code() == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    if rt.main.iter().any(|c| c.ever_started) {
        "Running"
    } else {
        "Pending"
    }
}

/// Pod-level facts that are not container state.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
}

const OWN_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

pub fn pod_conditions(pod: &Pod) -> Vec<PodCondition> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// Builds the status to report. Conditions the agent does not own are kept as
/// they are in `pod`; one it owns keeps its lastTransitionTime from `own_prev`
/// (what the agent reported last) while its status holds.
pub fn build(
    pod: &Pod,
    rt: &Runtime,
    info: &PodInfo,
    own_prev: &[PodCondition],
    now: Timestamp,
) -> PodStatus {
    let phase = phase(rt);
    let terminal = is_terminal_phase(phase);
    let prev = pod_conditions(pod);
    let cond = |type_: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let old = own_prev.iter().find(|c| c.type_ == type_);
        let last_transition_time = match old {
            Some(o) if o.status == status => o.last_transition_time.clone(),
            _ => None,
        }
        .or(Some(Time(now)));
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason,
            message,
            last_transition_time,
            ..Default::default()
        }
    };

    let mut conditions = Vec::new();
    conditions.push(cond(
        "PodReadyToStartContainers",
        rt.sandbox_ready && !terminal,
        None,
        None,
    ));
    let pending_init: Vec<&str> = rt
        .init
        .iter()
        .filter(|c| !c.sidecar && !c.completed_ok())
        .map(|c| c.name.as_str())
        .collect();
    conditions.push(if rt.initialized {
        cond("Initialized", true, None, None)
    } else {
        cond(
            "Initialized",
            false,
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: [{}]",
                pending_init.join(" ")
            )),
        )
    });

    let unready: Vec<&str> = rt
        .init
        .iter()
        .filter(|c| c.sidecar)
        .chain(rt.main.iter())
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let (containers_ready, cr_reason, cr_message) = if terminal {
        (false, Some("PodCompleted".to_string()), None)
    } else if !rt.initialized {
        (
            false,
            Some("ContainersNotReady".to_string()),
            Some(format!(
                "containers with unready status: [{}]",
                rt.main
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        )
    } else if unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady".to_string()),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };

    let gate_problem = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .find_map(|g| {
            let t = &g.condition_type;
            match prev.iter().find(|c| &c.type_ == t) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate {t:?} does not exist."
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate {t:?} is not \"True\", but {}",
                    c.status
                )),
                Some(_) => None,
            }
        });
    let ready = if !containers_ready {
        cond("Ready", false, cr_reason.clone(), cr_message.clone())
    } else if let Some(msg) = gate_problem {
        cond(
            "Ready",
            false,
            Some("ReadinessGatesNotReady".into()),
            Some(msg),
        )
    } else {
        cond("Ready", true, None, None)
    };
    conditions.push(ready);
    conditions.push(cond(
        "ContainersReady",
        containers_ready,
        cr_reason,
        cr_message,
    ));
    conditions.push(cond("PodScheduled", true, None, None));
    conditions.extend(
        prev.iter()
            .filter(|c| !OWN_CONDITIONS.contains(&c.type_.as_str()))
            .cloned(),
    );

    let has_init = !rt.init.is_empty();
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(info.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: info.host_ip.to_string(),
        }]),
        pod_ip: rt.pod_ip.map(|ip| ip.to_string()),
        pod_ips: rt.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(Time(info.start_time)),
        container_statuses: Some(rt.main.iter().map(ContainerSnapshot::to_k8s).collect()),
        init_container_statuses: has_init
            .then(|| rt.init.iter().map(ContainerSnapshot::to_k8s).collect()),
        observed_generation: pod.metadata.generation,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodReadinessGate, PodSpec};

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some(format!("img/{name}")),
            ..Default::default()
        }
    }

    fn pod(containers: &[&str], policy: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: containers.iter().map(|c| container(c)).collect(),
                restart_policy: Some(policy.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn running(s: &mut ContainerSnapshot, ready: bool) {
        s.state = CState::Running { started_at: ts(10) };
        s.ever_started = true;
        s.started = true;
        s.ready = ready;
    }

    fn exited(s: &mut ContainerSnapshot, code: i32, done: bool) {
        s.state = CState::Terminated(Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(ts(10)),
            finished_at: ts(20),
            container_id: None,
        });
        s.ever_started = true;
        s.done = done;
        s.ready = false;
    }

    fn info() -> PodInfo {
        PodInfo {
            host_ip: "10.244.0.1".parse().unwrap(),
            start_time: ts(5),
        }
    }

    fn runtime(p: &Pod) -> Runtime {
        let mut rt = Runtime::from_pod(p, ts(1));
        rt.pod_ip = Some("10.244.0.2".parse().unwrap());
        rt
    }

    fn build(p: &Pod, rt: &Runtime, info: &PodInfo, now: Timestamp) -> PodStatus {
        super::build(p, rt, info, &pod_conditions(p), now)
    }

    fn cond<'a>(st: &'a PodStatus, t: &str) -> &'a PodCondition {
        st.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn restart_policies() {
        assert!(Restart::Always.should_restart(0));
        assert!(Restart::OnFailure.should_restart(1));
        assert!(!Restart::OnFailure.should_restart(0));
        assert!(!Restart::Never.should_restart(1));
        assert_eq!(Restart::of_pod(&pod(&["a"], "Never")), Restart::Never);
        assert_eq!(Restart::of_pod(&Pod::default()), Restart::Always);
    }

    #[test]
    fn phases() {
        let p = pod(&["a", "b"], "Always");
        let mut rt = runtime(&p);
        assert_eq!(phase(&rt), "Pending");
        running(&mut rt.main[0], false);
        assert_eq!(phase(&rt), "Running");
        exited(&mut rt.main[0], 0, true);
        exited(&mut rt.main[1], 0, true);
        assert_eq!(phase(&rt), "Succeeded");
        exited(&mut rt.main[1], 3, true);
        assert_eq!(phase(&rt), "Failed");
        // Crashed but will restart: still Running.
        exited(&mut rt.main[1], 3, false);
        assert_eq!(phase(&rt), "Running");
        rt.initialized = false;
        assert_eq!(phase(&rt), "Pending");
        rt.init_failed = true;
        assert_eq!(phase(&rt), "Failed");
    }

    #[test]
    fn ready_conditions_follow_containers() {
        let p = pod(&["a", "b"], "Always");
        let mut rt = runtime(&p);
        rt.sandbox_ready = true;
        running(&mut rt.main[0], true);
        running(&mut rt.main[1], false);
        let st = build(&p, &rt, &info(), ts(30));
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.pod_ip.as_deref(), Some("10.244.0.2"));
        assert_eq!(st.host_ip.as_deref(), Some("10.244.0.1"));
        let ready = cond(&st, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
        assert_eq!(cond(&st, "PodScheduled").status, "True");
        assert_eq!(cond(&st, "Initialized").status, "True");
        assert_eq!(cond(&st, "PodReadyToStartContainers").status, "True");
        let cs = st.container_statuses.as_ref().unwrap();
        assert_eq!(cs.len(), 2);
        assert!(cs[0].ready);
        assert!(cs[0].state.as_ref().unwrap().running.is_some());

        // Becoming ready flips the condition with a new transition time.
        running(&mut rt.main[1], true);
        let mut p2 = p.clone();
        p2.status = Some(st.clone());
        let st2 = build(&p2, &rt, &info(), ts(40));
        assert_eq!(cond(&st2, "Ready").status, "True");
        assert_eq!(cond(&st2, "Ready").last_transition_time, Some(Time(ts(40))));
        // Unchanged conditions keep their transition time.
        assert_eq!(
            cond(&st2, "PodScheduled").last_transition_time,
            Some(Time(ts(30)))
        );
    }

    #[test]
    fn readiness_gates_and_foreign_conditions() {
        let mut p = pod(&["a"], "Always");
        p.spec.as_mut().unwrap().readiness_gates = Some(vec![PodReadinessGate {
            condition_type: "example.com/gate".into(),
        }]);
        let mut rt = runtime(&p);
        running(&mut rt.main[0], true);
        let st = build(&p, &rt, &info(), ts(2));
        assert_eq!(cond(&st, "ContainersReady").status, "True");
        assert_eq!(cond(&st, "Ready").status, "False");
        assert_eq!(
            cond(&st, "Ready").reason.as_deref(),
            Some("ReadinessGatesNotReady")
        );
        let mut with_gate = st.clone();
        with_gate.conditions.as_mut().unwrap().push(PodCondition {
            type_: "example.com/gate".into(),
            status: "True".into(),
            ..Default::default()
        });
        p.status = Some(with_gate);
        let st = build(&p, &rt, &info(), ts(3));
        assert_eq!(cond(&st, "Ready").status, "True");
        assert_eq!(cond(&st, "example.com/gate").status, "True");
    }

    #[test]
    fn completed_pod_is_not_ready() {
        let p = pod(&["a"], "Never");
        let mut rt = runtime(&p);
        exited(&mut rt.main[0], 0, true);
        let st = build(&p, &rt, &info(), ts(2));
        assert_eq!(st.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&st, "Ready").reason.as_deref(), Some("PodCompleted"));
        let term = st.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(term.exit_code, 0);
        assert_eq!(term.reason.as_deref(), Some("Completed"));
    }

    #[test]
    fn waiting_status_has_reason_and_message() {
        let p = pod(&["a"], "Always");
        let mut rt = runtime(&p);
        rt.main[0].state = CState::waiting("ErrImagePull", Some("image \"x\" is not in m".into()));
        let st = build(&p, &rt, &info(), ts(2));
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        let w = st.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
        assert_eq!(w.message.as_deref(), Some("image \"x\" is not in m"));
    }

    #[test]
    fn adoption_counts_a_restart_for_vanished_processes() {
        let p = pod(&["a", "b", "c"], "OnFailure");
        let mut rt = runtime(&p);
        running(&mut rt.main[0], true);
        rt.main[0].restart_count = 2;
        exited(&mut rt.main[1], 0, true);
        // c never started.
        let mut prior = p.clone();
        prior.status = Some(build(&p, &rt, &info(), ts(2)));

        let adopted = Runtime::from_pod(&prior, ts(100));
        let a = &adopted.main[0];
        assert!(a.ever_started);
        assert!(!a.done);
        assert_eq!(a.restart_count, 2);
        let last = a.last_state.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_str()), (255, "Unknown"));
        assert_eq!(a.state, CState::waiting(REASON_CREATING, None));
        // b completed under OnFailure: it stays terminated and is not run again.
        assert!(adopted.main[1].done);
        assert_eq!(adopted.main[1].exit_code(), Some(0));
        // c is fresh.
        assert!(!adopted.main[2].ever_started);
        assert_eq!(adopted.main[2].restart_count, 0);
    }

    #[test]
    fn init_containers_gate_initialized() {
        let mut p = pod(&["a"], "Always");
        p.spec.as_mut().unwrap().init_containers = Some(vec![container("setup")]);
        let mut rt = runtime(&p);
        assert!(!rt.initialized);
        assert_eq!(rt.main[0].state, CState::waiting(REASON_INITIALIZING, None));
        let st = build(&p, &rt, &info(), ts(2));
        assert_eq!(cond(&st, "Initialized").status, "False");
        assert_eq!(
            cond(&st, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        assert_eq!(st.init_container_statuses.as_ref().unwrap().len(), 1);
        exited(&mut rt.init[0], 0, true);
        rt.initialized = true;
        let mut p2 = p.clone();
        p2.status = Some(build(&p, &rt, &info(), ts(3)));
        // After an agent restart, init containers of an initialized pod are not re-run.
        let adopted = Runtime::from_pod(&p2, ts(4));
        assert!(adopted.initialized);
        assert!(adopted.init[0].done);
    }
}
