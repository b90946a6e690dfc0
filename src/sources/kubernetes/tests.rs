use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;

fn settings() -> Settings {
    Settings {
        namespaces: vec!["voltha".into()],
        label_selector: Some("app=rw-core".into()),
        name_regex: None,
        readiness: Readiness::AllConditions,
        port: PodPort::Number(50057),
        group_by: Some("affinity-group".into()),
        client: ClientFrom::Infer,
    }
}

fn cond(t: &str, status: &str) -> PodCondition {
    PodCondition {
        type_: t.into(),
        status: status.into(),
        ..Default::default()
    }
}

/// A running pod with every condition True.
fn pod(name: &str, ip: &str, group: Option<&str>) -> Pod {
    let mut labels = BTreeMap::from([("app".to_string(), "rw-core".to_string())]);
    if let Some(g) = group {
        labels.insert("affinity-group".into(), g.into());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("voltha".into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "core".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("grpc".into()),
                    container_port: 50058,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![
                cond("Initialized", "True"),
                cond("Ready", "True"),
                cond("ContainersReady", "True"),
                cond("PodScheduled", "True"),
            ]),
            ..Default::default()
        }),
    }
}

fn set_cond(p: &mut Pod, t: &str, status: &str) {
    if let Some(c) = p
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .and_then(|cs| cs.iter_mut().find(|c| c.type_ == t))
    {
        c.status = status.into();
    }
}

fn backend(ip: &str, port: u16, id: &str) -> Backend {
    Backend {
        host: ip.into(),
        port: Some(port),
        id: Some(id.into()),
    }
}

#[test]
fn running_with_every_condition_true_is_ready() {
    let p = pod("rw-core1-abc", "10.0.0.1", Some("1"));
    assert!(is_ready(&p, Readiness::AllConditions));
    assert!(is_ready(&p, Readiness::ReadyCondition));
}

#[test]
fn any_false_condition_is_not_ready_under_arouterds_rule() {
    let mut p = pod("rw-core1-abc", "10.0.0.1", Some("1"));
    set_cond(&mut p, "PodScheduled", "False");
    assert!(!is_ready(&p, Readiness::AllConditions));
    // "Ready condition only" ignores the others.
    assert!(is_ready(&p, Readiness::ReadyCondition));
    set_cond(&mut p, "Ready", "Unknown");
    assert!(!is_ready(&p, Readiness::ReadyCondition));
}

#[test]
fn a_pod_not_running_is_not_ready_under_arouterds_rule() {
    for phase in ["Pending", "Succeeded", "Failed", "Unknown"] {
        let mut p = pod("rw-core1-abc", "10.0.0.1", None);
        if let Some(s) = p.status.as_mut() {
            s.phase = Some(phase.into());
        }
        assert!(!is_ready(&p, Readiness::AllConditions), "{phase}");
    }
    let mut p = pod("rw-core1-abc", "10.0.0.1", None);
    p.status = None;
    assert!(!is_ready(&p, Readiness::AllConditions));
    assert!(!is_ready(&p, Readiness::ReadyCondition));
}

#[test]
fn a_running_pod_without_conditions_passes_arouterds_rule_but_not_ready_only() {
    let mut p = pod("rw-core1-abc", "10.0.0.1", None);
    if let Some(s) = p.status.as_mut() {
        s.conditions = None;
    }
    assert!(is_ready(&p, Readiness::AllConditions));
    assert!(!is_ready(&p, Readiness::ReadyCondition));
}

#[test]
fn endpoint_is_the_pod_ip_at_the_configured_or_named_port() {
    let s = settings();
    let p = pod("rw-core1-abc", "10.0.0.1", Some("1"));
    let (e, why) = entry(&p, &s);
    assert_eq!(why, None);
    assert_eq!(
        e,
        Some(PodEntry {
            group: Some("1".into()),
            backend: Some(backend("10.0.0.1", 50057, "rw-core1-abc")),
        })
    );
    let named = Settings {
        port: PodPort::Name("grpc".into()),
        ..settings()
    };
    assert_eq!(
        entry(&p, &named).0.and_then(|e| e.backend),
        Some(backend("10.0.0.1", 50058, "rw-core1-abc"))
    );
    // A ready pod without that port is no endpoint, and the reason is given for the log.
    let missing = Settings {
        port: PodPort::Name("admin".into()),
        ..settings()
    };
    let (e, why) = entry(&p, &missing);
    assert_eq!(e.and_then(|e| e.backend), None);
    assert!(why.unwrap_or_default().contains("no container port"));
    // An UDP port of that name does not count.
    let mut udp = p.clone();
    if let Some(ports) = udp.spec.as_mut().and_then(|s| s.containers[0].ports.as_mut()) {
        ports[0].protocol = Some("UDP".into());
    }
    assert_eq!(pod_port(&udp, &PodPort::Name("grpc".into())), None);
}

#[test]
fn a_ready_pod_without_a_valid_ip_is_no_endpoint() {
    let s = settings();
    for ip in ["", "not-an-ip"] {
        let p = pod("rw-core1-abc", ip, Some("1"));
        let (e, why) = entry(&p, &s);
        assert_eq!(
            e,
            Some(PodEntry {
                group: Some("1".into()),
                backend: None
            })
        );
        assert!(why.unwrap_or_default().contains("no valid pod IP"));
    }
}

#[test]
fn ip_change_changes_the_endpoint() {
    let s = settings();
    let before = build(&[entry(&pod("rw-core1-abc", "10.0.0.1", Some("1")), &s)
        .0
        .expect("selected")]);
    let after = build(&[entry(&pod("rw-core1-abc", "10.0.0.9", Some("1")), &s)
        .0
        .expect("selected")]);
    assert_ne!(before, after);
    assert_eq!(after.set("1"), &[backend("10.0.0.9", 50057, "rw-core1-abc")]);
    assert_eq!(after.set(""), &[backend("10.0.0.9", 50057, "rw-core1-abc")]);
}

#[test]
fn a_terminating_pod_is_no_endpoint() {
    let mut p = pod("rw-core1-abc", "10.0.0.1", Some("1"));
    p.metadata.deletion_timestamp = Some(Time(Default::default()));
    assert_eq!(entry(&p, &settings()).0.and_then(|e| e.backend), None);
}

#[test]
fn name_regex_selects_like_arouterd() {
    let s = Settings {
        name_regex: Some(Regex::new("rw-core[0-9]-").expect("regex")),
        ..settings()
    };
    assert!(entry(&pod("voltha-rw-core1-7d9f-x", "10.0.0.1", None), &s).0.is_some());
    assert!(entry(&pod("rw-core11-x", "10.0.0.1", None), &s).0.is_none());
    assert!(entry(&pod("ro-core-0", "10.0.0.1", None), &s).0.is_none());
    let ro = Settings {
        name_regex: Some(Regex::new("ro-core-").expect("regex")),
        ..settings()
    };
    assert!(entry(&pod("voltha-ro-core-0", "10.0.0.1", None), &ro).0.is_some());
}

#[test]
fn grouping_by_label_makes_one_set_per_value_and_the_default_set_has_all() {
    let s = settings();
    let mut not_ready = pod("rw-core2-b", "10.0.0.4", Some("2"));
    set_cond(&mut not_ready, "Ready", "False");
    let pods = [
        pod("rw-core1-a", "10.0.0.1", Some("1")),
        pod("rw-core1-b", "10.0.0.2", Some("1")),
        pod("rw-core2-a", "10.0.0.3", Some("2")),
        not_ready,
        pod("rw-core3-a", "10.0.0.5", Some("3")),
        pod("rw-core-nogroup", "10.0.0.6", None),
    ];
    let mut entries: Vec<PodEntry> = pods.iter().filter_map(|p| entry(p, &s).0).collect();
    let data = build(&entries);
    assert_eq!(data.sets.keys().collect::<Vec<_>>(), vec!["", "1", "2", "3"]);
    assert_eq!(
        data.set("1"),
        &[
            backend("10.0.0.1", 50057, "rw-core1-a"),
            backend("10.0.0.2", 50057, "rw-core1-b")
        ]
    );
    assert_eq!(data.set("2"), &[backend("10.0.0.3", 50057, "rw-core2-a")]);
    assert_eq!(data.set("").len(), 5, "every endpoint, grouped or not");
    // A group whose pods are all unready keeps its (empty) set: its cluster stays.
    entries.retain(|e| e.group.as_deref() != Some("3"));
    let mut p3 = pod("rw-core3-a", "10.0.0.5", Some("3"));
    set_cond(&mut p3, "Ready", "False");
    entries.extend(entry(&p3, &s).0);
    let data = build(&entries);
    assert_eq!(data.set("3"), &[] as &[Backend]);
    assert!(data.sets.contains_key("3"));
    // Without group_by there is only the default set.
    let flat = Settings {
        group_by: None,
        ..settings()
    };
    let data = build(pods.iter().filter_map(|p| entry(p, &flat).0).collect::<Vec<_>>().iter());
    assert_eq!(data.sets.keys().collect::<Vec<_>>(), vec![""]);
}

fn e(ip: &str, group: &str) -> Option<PodEntry> {
    Some(PodEntry {
        group: Some(group.into()),
        backend: Some(backend(ip, 50057, ip)),
    })
}

#[test]
fn nothing_is_published_until_every_namespace_has_listed() {
    let mut t = Tracker::new(2);
    assert_eq!(t.on(0, Msg::Init), None);
    assert_eq!(t.on(0, Msg::InitApply("a".into(), e("10.0.0.1", "1"))), None);
    assert_eq!(t.on(0, Msg::InitDone), None, "namespace 1 has not listed");
    assert_eq!(t.on(0, Msg::Apply("b".into(), e("10.0.0.2", "1"))), None);
    assert_eq!(t.on(1, Msg::Init), None);
    let data = t.on(1, Msg::InitDone).expect("both listed");
    assert_eq!(data.set("1").len(), 2);
}

#[test]
fn a_relist_replaces_the_pods_only_at_init_done() {
    let mut t = Tracker::new(1);
    t.on(0, Msg::Init);
    t.on(0, Msg::InitApply("a".into(), e("10.0.0.1", "1")));
    t.on(0, Msg::InitApply("b".into(), e("10.0.0.2", "2")));
    let first = t.on(0, Msg::InitDone).expect("listed");
    assert_eq!(first.sets.len(), 3);

    // 410 Gone → relist. Until InitDone, the state is the old one, whole.
    assert_eq!(t.on(0, Msg::Init), None);
    assert_eq!(t.on(0, Msg::InitApply("a".into(), e("10.0.0.9", "1"))), None);
    assert_eq!(t.state(), Some(first.clone()), "nothing lost or changed mid-relist");
    // Pod b was deleted while the watch was broken: gone at InitDone, with its group.
    let after = t.on(0, Msg::InitDone).expect("relisted");
    assert_eq!(after.sets.keys().collect::<Vec<_>>(), vec!["", "1"]);
    assert_eq!(after.set("1")[0].host, "10.0.0.9");
}

#[test]
fn an_error_mid_relist_drops_the_partial_list_and_keeps_the_last_state() {
    let mut t = Tracker::new(1);
    t.on(0, Msg::Init);
    t.on(0, Msg::InitApply("a".into(), e("10.0.0.1", "1")));
    let good = t.on(0, Msg::InitDone).expect("listed");
    t.on(0, Msg::Init);
    t.on(0, Msg::InitApply("x".into(), e("10.0.0.7", "7")));
    assert_eq!(t.on(0, Msg::Error), None);
    assert_eq!(t.state(), Some(good.clone()));
    // The next list starts clean: the partial "x" never appears.
    t.on(0, Msg::Init);
    t.on(0, Msg::InitApply("a".into(), e("10.0.0.1", "1")));
    assert_eq!(t.on(0, Msg::InitDone), Some(good));
}

#[test]
fn watch_events_update_at_once() {
    let mut t = Tracker::new(1);
    t.on(0, Msg::Init);
    t.on(0, Msg::InitApply("a".into(), e("10.0.0.1", "1")));
    t.on(0, Msg::InitDone);
    // IP change (a restarted pod keeps its name in a StatefulSet).
    let d = t.on(0, Msg::Apply("a".into(), e("10.0.0.2", "1"))).expect("state");
    assert_eq!(d.set("1")[0].host, "10.0.0.2");
    // Unready: still in its group, no endpoint.
    let d = t
        .on(
            0,
            Msg::Apply(
                "a".into(),
                Some(PodEntry {
                    group: Some("1".into()),
                    backend: None,
                }),
            ),
        )
        .expect("state");
    assert!(d.set("1").is_empty() && d.sets.contains_key("1"));
    // Deleted: the group goes with it.
    let d = t.on(0, Msg::Delete("a".into())).expect("state");
    assert_eq!(d.sets.keys().collect::<Vec<_>>(), vec![""]);
    // A pod that is not selected (name regex) removes any previous entry of that name.
    t.on(0, Msg::Apply("b".into(), e("10.0.0.3", "2")));
    let d = t.on(0, Msg::Apply("b".into(), None)).expect("state");
    assert!(!d.sets.contains_key("2"));
    // Unknown namespace index: ignored.
    assert_eq!(t.on(5, Msg::InitDone), None);
}
