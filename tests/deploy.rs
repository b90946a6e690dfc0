//! The deployment files agree with the code and with each other: the ConfigMap holds a
//! configuration the loader accepts; the Deployment's arguments, ports and probes match the
//! Service, the configuration and the admin API; the debug API stays on the pod's loopback
//! and off every Service; the NetworkPolicy admits Envoys to xDS and Prometheus to the admin
//! port only; every object carries the recommended labels with the package version; the
//! replicas spread over zones; the Deployment and docs/deploy.md give the same memory
//! figures; the RBAC is pods read-only for the
//! ServiceAccount the Deployment runs as; the example Envoy's bootstrap step points at the
//! Service; docker-compose.yml's assignment key, core names and ports match the configuration
//! it runs; the Dockerfile copies everything the build reads. Schema validity is checked
//! offline by `deploy/check.sh` (kubernetes-validate, docker-compose config, hadolint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use voltha_xds::bootstrap::{bootstrap, BootstrapOptions};
use voltha_xds::config::{Config, SourceConfig};
use voltha_xds::sources::assignment::parse_assignment;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of every file in deploy/kubernetes/.
fn manifests() -> Vec<Value> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        let docs = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        out.extend(docs.into_iter().filter(|v| !v.is_null()));
    }
    out
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = all
        .iter()
        .filter(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

/// YAML's names for a parsed document's lists and maps.
trait Yaml {
    fn as_sequence(&self) -> Option<&Vec<Value>>;
    fn as_mapping(&self) -> Option<&serde_json::Map<String, Value>>;
    fn is_mapping(&self) -> bool {
        self.as_mapping().is_some()
    }
}

impl Yaml for Value {
    fn as_sequence(&self) -> Option<&Vec<Value>> {
        self.as_array()
    }
    fn as_mapping(&self) -> Option<&serde_json::Map<String, Value>> {
        self.as_object()
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

/// The value after `flag` in an argument list.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// A container's ports by name.
fn container_ports(c: &Value) -> BTreeMap<String, u16> {
    c["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"]).to_string(),
                p["containerPort"].as_u64().expect("containerPort") as u16,
            )
        })
        .collect()
}

/// A probe's or Service's port (a number, or the name of a container port) as a number.
fn resolve_port(port: &Value, ports: &BTreeMap<String, u16>) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().expect("port") as u16,
        Value::String(name) => *ports.get(name).unwrap_or_else(|| panic!("no container port {name}")),
        other => panic!("bad port {other:?}"),
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().expect("selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The first (only) container of a Deployment and its pod spec.
fn pod_spec(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]
}

fn container<'a>(d: &'a Value, name: &str) -> &'a Value {
    pod_spec(d)["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The configuration the voltha-xds Deployment runs (from the ConfigMap it mounts at the
/// `--config` path), loaded and validated by the library.
fn deployed_config(all: &[Value]) -> Config {
    let d = find(all, "Deployment", "voltha-xds");
    let c = container(d, "voltha-xds");
    let args = strings(&c["args"]);
    let config_path = Path::new(flag(&args, "--config").expect("--config"));
    let (dir, key) = (
        config_path.parent().expect("dir").to_str().expect("utf-8"),
        config_path.file_name().expect("file").to_str().expect("utf-8"),
    );
    let mount = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let volume = pod_spec(d)["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let cm_name = str_of(&volume["configMap"]["name"]);
    let cm = find(all, "ConfigMap", cm_name);
    assert_eq!(cm["metadata"]["namespace"], d["metadata"]["namespace"]);
    let text = str_of(&cm["data"][key]);
    Config::from_yaml(text).unwrap_or_else(|e| panic!("ConfigMap {cm_name} key {key}: {e}"))
}

#[test]
fn configmap_holds_a_config_the_loader_accepts() {
    let all = manifests();
    let config = deployed_config(&all);
    // The pod source: what the RBAC below is for.
    assert!(
        config.sources.iter().any(|s| matches!(s, SourceConfig::Kubernetes(_))),
        "the Kubernetes deployment's configuration watches pods"
    );
    assert!(config.groups.iter().any(|g| g.name == config.default_group));
    // Proxyless gRPC clients (`xds:///voltha-grpc`) are served by the deployed configuration too.
    let cm = find(&all, "ConfigMap", "voltha-xds-config");
    let deployed: serde_json::Value = serde_saphyr::from_str(str_of(&cm["data"]["voltha-xds.yaml"])).expect("YAML");
    assert!(
        deployed["grpc_services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "voltha-grpc")),
        "the ConfigMap declares the gRPC service voltha-grpc"
    );
    assert!(
        deployed["groups"].as_array().is_some_and(|g| g
            .iter()
            .any(|g| g["grpc_services"].as_array().is_some_and(|s| !s.is_empty()))),
        "a group serves it"
    );
    // A changed key is caught: the loader refuses an unknown one.
    let cm = find(&all, "ConfigMap", "voltha-xds-config");
    let broken = str_of(&cm["data"]["voltha-xds.yaml"]).replace("default_group:", "default_groop:");
    assert!(Config::from_yaml(&broken).is_err());
}

#[test]
fn deployment_args_ports_and_probes_agree_with_service_and_config() {
    let all = manifests();
    let config = deployed_config(&all);
    let d = find(&all, "Deployment", "voltha-xds");
    assert_eq!(d["spec"]["replicas"].as_u64(), Some(2));
    let c = container(d, "voltha-xds");
    let args = strings(&c["args"]);
    assert!(args.iter().any(|a| a == "serve"), "{args:?}");
    let xds: SocketAddr = flag(&args, "--xds-listen")
        .expect("--xds-listen")
        .parse()
        .expect("xds addr");
    let admin: SocketAddr = flag(&args, "--admin-listen")
        .expect("--admin-listen")
        .parse()
        .expect("admin addr");
    // The kubelet probes the pod IP: the admin API must not stay on loopback.
    assert!(admin.ip().is_unspecified(), "{admin}");
    assert!(xds.ip().is_unspecified(), "{xds}");
    // The configuration says the same (so the file alone, without the flags, still works).
    assert_eq!(config.server.xds_listen.addr(), xds);
    assert_eq!(config.server.admin_listen.addr(), admin);

    let ports = container_ports(c);
    assert_eq!(ports.get("xds"), Some(&xds.port()));
    assert_eq!(ports.get("admin"), Some(&admin.port()));
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve_port(&get["port"], &ports), admin.port(), "{probe} port");
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // Non-root, the Dockerfile's user; no privilege escalation, read-only root, no capabilities.
    let pod_sc = &pod_spec(d)["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], Value::Bool(true));
    assert_eq!(pod_sc["runAsUser"].as_u64(), Some(dockerfile_uid()));
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);

    // The Service selects these pods and maps its xds and admin ports onto them.
    let svc = find(&all, "Service", "voltha-xds");
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(&svc["spec"]["selector"], labels));
    assert!(labels_match(&d["spec"]["selector"]["matchLabels"], labels));
    let svc_ports: BTreeMap<String, (u16, u16)> = svc["spec"]["ports"]
        .as_sequence()
        .expect("service ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"]).to_string(),
                (
                    p["port"].as_u64().expect("port") as u16,
                    resolve_port(&p["targetPort"], &ports),
                ),
            )
        })
        .collect();
    assert_eq!(svc_ports.get("xds"), Some(&(xds.port(), xds.port())));
    assert_eq!(svc_ports.get("admin"), Some(&(admin.port(), admin.port())));

    // The disruption budget covers these pods and leaves room to drain a node.
    let pdb = find(&all, "PodDisruptionBudget", "voltha-xds");
    assert!(labels_match(&pdb["spec"]["selector"]["matchLabels"], labels));
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    let replicas = d["spec"]["replicas"].as_u64().expect("replicas");
    assert!((1..replicas).contains(&min), "minAvailable {min} of {replicas}");
}

/// `/debug/*` and the status page (every resource, every client) are on the debug listener:
/// the Deployment binds it to the pod's loopback (reached with `kubectl port-forward`), names
/// no container port for it, and no Service, probe or scrape annotation points at it.
#[test]
fn the_debug_api_stays_on_the_pods_loopback_and_off_the_service() {
    let all = manifests();
    let config = deployed_config(&all);
    let d = find(&all, "Deployment", "voltha-xds");
    let c = container(d, "voltha-xds");
    let args = strings(&c["args"]);
    let admin: SocketAddr = flag(&args, "--admin-listen")
        .expect("--admin-listen")
        .parse()
        .expect("admin addr");
    let debug: SocketAddr = flag(&args, "--admin-debug-listen")
        .expect("--admin-debug-listen: the default would do, but the Deployment says it")
        .parse()
        .expect("debug addr");
    assert!(debug.ip().is_loopback(), "{debug}");
    assert_ne!(debug.port(), admin.port());
    assert_eq!(
        config.server.admin_debug_listen.addr(),
        debug,
        "the ConfigMap says the same"
    );

    let ports = container_ports(c);
    assert!(
        !ports.values().any(|p| *p == debug.port()),
        "a container port names the debug port: {ports:?}"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_ne!(
            resolve_port(&c[probe]["httpGet"]["port"], &ports),
            debug.port(),
            "{probe}"
        );
    }
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/port"]), admin.port().to_string());

    // Every Service that selects these pods publishes only xDS and the admin listener.
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let services: Vec<&Value> = all
        .iter()
        .filter(|v| v["kind"] == "Service" && labels_match(&v["spec"]["selector"], labels))
        .collect();
    assert!(!services.is_empty());
    for svc in services {
        let targets: BTreeSet<u16> = svc["spec"]["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| resolve_port(&p["targetPort"], &ports))
            .collect();
        let xds = port_of(flag(&args, "--xds-listen").expect("--xds-listen"));
        assert_eq!(
            targets,
            BTreeSet::from([xds, admin.port()]),
            "{:?}",
            svc["metadata"]["name"]
        );
    }
}

#[test]
fn rbac_is_pods_read_only_for_the_deployments_service_account() {
    let all = manifests();
    let config = deployed_config(&all);
    let d = find(&all, "Deployment", "voltha-xds");
    let sa_name = str_of(&pod_spec(d)["serviceAccountName"]);
    let sa = find(&all, "ServiceAccount", sa_name);
    let ns = str_of(&d["metadata"]["namespace"]);
    assert_eq!(sa["metadata"]["namespace"], ns);

    // Every namespace the pod sources watch has a Role (pods: get, list, watch, nothing else)
    // bound to that ServiceAccount.
    let watched: BTreeSet<String> = config
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceConfig::Kubernetes(k) => Some(k.namespaces.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!watched.is_empty());
    let roles: Vec<&Value> = all.iter().filter(|v| v["kind"] == "Role").collect();
    assert!(all.iter().all(|v| v["kind"] != "ClusterRole"), "no cluster-wide rights");
    for w in &watched {
        let role = roles
            .iter()
            .find(|r| r["metadata"]["namespace"] == w.as_str())
            .unwrap_or_else(|| panic!("no Role in namespace {w}"));
        let rules = role["rules"].as_sequence().expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
        assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
        let verbs: BTreeSet<String> = strings(&rules[0]["verbs"]).into_iter().collect();
        assert_eq!(verbs, BTreeSet::from(["get".into(), "list".into(), "watch".into()]));
        let binding = all
            .iter()
            .find(|v| {
                v["kind"] == "RoleBinding"
                    && v["metadata"]["namespace"] == w.as_str()
                    && v["roleRef"]["name"] == role["metadata"]["name"]
            })
            .unwrap_or_else(|| panic!("no RoleBinding for the Role in {w}"));
        assert_eq!(binding["roleRef"]["kind"], "Role");
        let subjects = binding["subjects"].as_sequence().expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], sa_name);
        assert_eq!(subjects[0]["namespace"], ns);
    }
}

/// `voltha-xds bootstrap` options from a shell command line (`... bootstrap --flag v ... > FILE`);
/// returns them and the file written.
fn bootstrap_from_shell(cmd: &str, node_id: &str) -> (BootstrapOptions, String) {
    let words: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
    let at = words
        .iter()
        .position(|w| w == "bootstrap")
        .unwrap_or_else(|| panic!("no bootstrap in {cmd:?}"));
    assert!(words[..at].iter().any(|w| w == "voltha-xds"), "{cmd:?}");
    let args = &words[at + 1..];
    let out = flag(args, ">").unwrap_or_else(|| panic!("no > FILE in {cmd:?}"));
    let o = BootstrapOptions {
        node_id: node_id.into(),
        node_cluster: flag(args, "--node-cluster").expect("--node-cluster").into(),
        xds: flag(args, "--xds").expect("--xds").into(),
        admin_port: flag(args, "--admin-port").map_or(9901, |p| p.parse().expect("--admin-port")),
        admin_address: flag(args, "--admin-address").unwrap_or("127.0.0.1").into(),
        delta: args.iter().any(|a| a == "--delta"),
        tls: flag(args, "--tls-ca").map(|ca| voltha_xds::bootstrap::BootstrapTls {
            ca: ca.into(),
            client: flag(args, "--tls-cert")
                .zip(flag(args, "--tls-key"))
                .map(|(c, k)| (c.into(), k.into())),
        }),
    };
    (o, out.to_string())
}

/// The ports of the listeners an Envoy in `node_cluster` gets.
fn listener_ports(config: &Config, node_cluster: &str) -> BTreeSet<u16> {
    let group = config
        .groups
        .iter()
        .find(|g| g.name == node_cluster)
        .or_else(|| config.groups.iter().find(|g| g.name == config.default_group))
        .expect("group");
    group
        .listeners
        .iter()
        .map(|l| config.listener(l).expect("listener").address.addr().port())
        .collect()
}

#[test]
fn example_envoy_bootstraps_from_the_service() {
    let all = manifests();
    let config = deployed_config(&all);
    let xds_deploy = find(&all, "Deployment", "voltha-xds");
    let xds_svc = find(&all, "Service", "voltha-xds");
    let e = find(&all, "Deployment", "voltha-envoy");
    let init = &pod_spec(e)["initContainers"][0];
    // The bootstrap comes from the voltha-xds image.
    assert_eq!(init["image"], container(xds_deploy, "voltha-xds")["image"]);
    let cmd = strings(&init["command"]).join(" ");
    let (opts, out) = bootstrap_from_shell(&cmd, "voltha-envoy-0");

    // --xds names the Service (DNS name in its namespace) at its xds port.
    let (host, port) = opts.xds.rsplit_once(':').expect("host:port");
    let svc_ns = str_of(&xds_svc["metadata"]["namespace"]);
    assert!(
        host == format!("voltha-xds.{svc_ns}.svc.cluster.local") || host == format!("voltha-xds.{svc_ns}.svc"),
        "{host}"
    );
    let xds_port = xds_svc["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "xds")
        .and_then(|p| p["port"].as_u64())
        .expect("xds port");
    assert_eq!(port.parse::<u64>().expect("port"), xds_port);

    // The bootstrap this produces points ADS at that address (the code's own rendering).
    let y: serde_json::Value = serde_saphyr::from_str(&bootstrap(&opts).expect("bootstrap")).expect("yaml");
    let c = &y["static_resources"]["clusters"][0];
    assert_eq!(c["type"], "STRICT_DNS");
    let sa = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(sa["address"], host);
    assert_eq!(sa["port_value"].as_u64(), Some(xds_port));

    // The file is written to a volume the Envoy container mounts and reads with -c.
    let envoy = container(e, "envoy");
    assert!(
        str_of(&envoy["image"]).starts_with("envoyproxy/envoy:v1.40"),
        "{:?}",
        envoy["image"]
    );
    let dir = Path::new(&out).parent().expect("dir").to_str().expect("utf-8");
    let mounted_by = |c: &Value| -> Option<String> {
        c["volumeMounts"]
            .as_sequence()?
            .iter()
            .find(|m| m["mountPath"] == dir)
            .map(|m| str_of(&m["name"]).to_string())
    };
    let vol = mounted_by(init).expect("init container mounts the output directory");
    let envoy_args = strings(&envoy["args"]);
    let envoy_config = flag(&envoy_args, "-c").expect("-c");
    assert_eq!(envoy_config, out);
    assert_eq!(mounted_by(envoy), Some(vol.clone()));
    let volume = pod_spec(e)["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == vol.as_str())
        .expect("volume");
    assert!(volume["emptyDir"].is_mapping(), "{volume:?}");

    // Envoy's container ports are the listeners of its node group, and its Service maps them.
    let ports: BTreeSet<u16> = container_ports(envoy).into_values().collect();
    assert_eq!(ports, listener_ports(&config, &opts.node_cluster));
    let api = all
        .iter()
        .find(|v| {
            v["kind"] == "Service" && labels_match(&v["spec"]["selector"], &e["spec"]["template"]["metadata"]["labels"])
        })
        .expect("a Service for the example Envoy");
    for p in api["spec"]["ports"].as_sequence().expect("ports") {
        assert!(ports.contains(&resolve_port(&p["targetPort"], &container_ports(envoy))));
    }
}

/// The numeric user of the Dockerfile's final stage.
fn dockerfile_uid() -> u64 {
    let text = read("Dockerfile");
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the Dockerfile");
    user.split(':')
        .next()
        .and_then(|u| u.trim().parse().ok())
        .expect("numeric USER")
}

#[test]
fn dockerfile_copies_what_the_build_reads() {
    let text = read("Dockerfile");
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    // Every COPY from the build context names a file that exists and is not ignored; the
    // build stage (the one that runs cargo build) copies what the build reads.
    let mut copied = Vec::new();
    let mut in_build_stage = false;
    for line in text.lines() {
        if line.starts_with("FROM ") {
            copied.clear();
        }
        if line.starts_with("RUN ") && line.contains("cargo build") {
            in_build_stage = true;
            break;
        }
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(root().join(src).exists(), "COPY {src}: no such file");
            let top = src.split('/').next().expect("path");
            assert!(
                !ignored.iter().any(|i| i == top),
                "COPY {src} is excluded by .dockerignore"
            );
            copied.push(src.to_string());
        }
    }
    assert!(in_build_stage, "a stage runs cargo build");
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.starts_with("COPY --from"))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(root().join(src).exists(), "COPY {src}: no such file");
            let top = src.split('/').next().expect("path");
            assert!(
                !ignored.iter().any(|i| i == top),
                "COPY {src} is excluded by .dockerignore"
            );
        }
    }
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "proto-vendor", "src", "config"] {
        assert!(copied.iter().any(|c| c == needed), "the build needs {needed}");
    }
    // Files the sources embed with include_str!/include_bytes! are inside what is copied.
    let mut stack = vec![root().join("src")];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("src dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let src = std::fs::read_to_string(&p).unwrap_or_default();
            for part in src.split("include_").skip(1) {
                let Some(arg) = part
                    .strip_prefix("str!(\"")
                    .or_else(|| part.strip_prefix("bytes!(\""))
                    .and_then(|a| a.split('"').next())
                else {
                    continue;
                };
                let target = p
                    .parent()
                    .expect("dir")
                    .join(arg)
                    .canonicalize()
                    .expect("embedded file");
                let rel = target
                    .strip_prefix(root().canonicalize().expect("root"))
                    .expect("inside the repository");
                let top = rel.iter().next().and_then(|t| t.to_str()).expect("path");
                assert!(
                    copied.iter().any(|c| c == top),
                    "{} embeds {}",
                    p.display(),
                    rel.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "found the embedded files");
    // The build line builds every binary the runtime stages take from the build stage.
    let build = text
        .lines()
        .find(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .expect("cargo build line");
    assert!(build.contains("--release --locked"), "{build}");
    for l in text.lines().filter(|l| l.starts_with("COPY --from=build")) {
        let binary = l
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.rsplit('/').next())
            .expect("binary");
        assert!(
            build.contains(&format!("--bin {binary}")),
            "{binary} is not built by: {build}"
        );
        let source = if binary == "voltha-xds" {
            root().join("src/main.rs")
        } else {
            root().join(format!("src/bin/{binary}.rs"))
        };
        assert!(source.exists(), "no target {binary}");
    }
}

#[test]
fn compose_wiring_agrees_with_the_configuration() {
    let text = read("docker-compose.yml");
    let compose: Value = serde_saphyr::from_str(&text).expect("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let svc = |name: &str| -> &Value {
        services
            .get(name)
            .unwrap_or_else(|| panic!("no service {name} in docker-compose.yml"))
    };
    let command = |name: &str| strings(&svc(name)["command"]);

    // voltha-xds runs a shipped configuration (the image's working directory holds config/).
    let xds_args = command("voltha-xds");
    let config_file = flag(&xds_args, "--config").expect("--config");
    let config = Config::load(&root().join(config_file)).expect("the configuration voltha-xds runs");
    let xds_port = port_of(flag(&xds_args, "--xds-listen").expect("--xds-listen"));
    let admin_addr = flag(&xds_args, "--admin-listen").expect("--admin-listen");
    assert!(admin_addr.starts_with("0.0.0.0:"), "{admin_addr}");
    // The debug API is published on the host's loopback only.
    let debug_port = port_of(flag(&xds_args, "--admin-debug-listen").expect("--admin-debug-listen"));
    assert_ne!(debug_port, port_of(admin_addr));
    let mappings = strings(&svc("voltha-xds")["ports"]);
    let debug_maps: Vec<&String> = mappings
        .iter()
        .filter(|m| m.rsplit(':').next() == Some(&debug_port.to_string()))
        .collect();
    assert!(!debug_maps.is_empty(), "{mappings:?}");
    for m in debug_maps {
        assert!(m.starts_with("127.0.0.1:"), "published beyond the host's loopback: {m}");
    }

    // Its Consul source's key is the one the one-shot step writes, at the Consul service.
    let consul = config
        .sources
        .iter()
        .find_map(|s| match s {
            SourceConfig::Consul(c) => Some(c),
            _ => None,
        })
        .expect("a Consul source");
    let addr = str_of(&svc("voltha-xds")["environment"]["CONSUL_HTTP_ADDR"]);
    let consul_host = addr.trim_start_matches("http://").split(':').next().expect("host");
    assert!(
        str_of(&svc(consul_host)["image"]).starts_with("hashicorp/consul"),
        "CONSUL_HTTP_ADDR names the Consul service"
    );
    let put = command("assignment");
    let at = put.iter().position(|w| w == "put").expect("consul kv put");
    assert_eq!(put[at + 1], consul.key, "the key written is the key followed");
    let assignment = parse_assignment(put[at + 2].as_bytes()).expect("the assignment parses");
    let hosts: BTreeSet<String> = assignment.sets.values().flatten().map(|b| b.host.clone()).collect();

    // The hosts are exactly the fake-core services, listening on the clusters' port.
    let fake_cores: BTreeSet<String> = services
        .iter()
        .filter(|(_, s)| s["build"]["target"] == "fake-core")
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(hosts, fake_cores);
    let core_ports: BTreeSet<u16> = config
        .clusters
        .iter()
        .filter(|c| c.endpoints.source.as_deref() == Some(consul.name.as_str()))
        .filter_map(|c| c.endpoints.port)
        .collect();
    assert!(!core_ports.is_empty());
    for core in &fake_cores {
        let args = command(core);
        let listen = port_of(flag(&args, "--listen").expect("--listen"));
        assert!(
            core_ports.contains(&listen),
            "{core} listens on {listen}, clusters use {core_ports:?}"
        );
    }

    // Envoy's bootstrap points at the voltha-xds service's xDS port; Envoy reads that file
    // from the shared volume; its published ports cover its group's listeners and its admin.
    let boot = svc("envoy-bootstrap");
    assert_eq!(boot["image"], svc("voltha-xds")["image"]);
    let (opts, out) = bootstrap_from_shell(&command("envoy-bootstrap").join(" "), "envoy-1");
    assert_eq!(opts.xds, format!("voltha-xds:{xds_port}"));
    bootstrap(&opts).expect("the bootstrap renders");
    let mount_of = |name: &str, dir: &str| -> Option<String> {
        strings(&svc(name)["volumes"]).into_iter().find_map(|v| {
            let mut parts = v.split(':');
            let (vol, target) = (parts.next()?, parts.next()?);
            (target == dir).then(|| vol.to_string())
        })
    };
    let out_dir = Path::new(&out).parent().expect("dir").to_str().expect("utf-8");
    let vol = mount_of("envoy-bootstrap", out_dir).expect("the bootstrap directory is a volume");
    assert!(compose["volumes"].get(vol.as_str()).is_some(), "named volume {vol}");
    let envoy_args = command("envoy");
    let envoy_config = Path::new(flag(&envoy_args, "-c").expect("-c"));
    let envoy_dir = envoy_config.parent().expect("dir").to_str().expect("utf-8");
    assert_eq!(mount_of("envoy", envoy_dir), Some(vol.clone()));
    assert_eq!(
        envoy_config.file_name(),
        Path::new(&out).file_name(),
        "Envoy reads the file written"
    );
    assert!(str_of(&svc("envoy")["image"]).starts_with("envoyproxy/envoy:v1.40"));
    let published: BTreeSet<u16> = strings(&svc("envoy")["ports"]).iter().map(|p| port_of(p)).collect();
    let mut want = listener_ports(&config, &opts.node_cluster);
    want.insert(opts.admin_port);
    assert_eq!(published, want);
    assert_eq!(
        svc("envoy")["depends_on"]["envoy-bootstrap"]["condition"],
        "service_completed_successfully"
    );
    // The shared volume is writable by the image's user.
    let o = str_of(&compose["volumes"][vol.as_str()]["driver_opts"]["o"]);
    assert!(o.contains(&format!("uid={}", dockerfile_uid())), "{o}");
}

/// Every object we ship (the Namespace is VOLTHA's) and every pod template carries the
/// recommended labels, with the package's version; the image tags say the same version.
#[test]
fn every_object_carries_the_recommended_labels_and_the_package_version() {
    let version = env!("CARGO_PKG_VERSION");
    let keys = ["name", "instance", "version", "component", "part-of"];
    let check = |what: &str, labels: &Value| {
        for k in keys {
            let v = &labels[format!("app.kubernetes.io/{k}").as_str()];
            assert!(
                v.as_str().is_some_and(|s| !s.is_empty()),
                "{what}: no app.kubernetes.io/{k}"
            );
        }
        assert_eq!(labels["app.kubernetes.io/version"].as_str(), Some(version), "{what}");
        assert_eq!(labels["app.kubernetes.io/part-of"].as_str(), Some("voltha"), "{what}");
    };
    for m in manifests().iter().filter(|m| m["kind"] != "Namespace") {
        let what = format!("{} {}", str_of(&m["kind"]), str_of(&m["metadata"]["name"]));
        check(&what, &m["metadata"]["labels"]);
        let template = &m["spec"]["template"];
        if !template.is_null() {
            check(&format!("{what} pod template"), &template["metadata"]["labels"]);
            let spec = &template["spec"];
            for c in ["initContainers", "containers"]
                .iter()
                .filter_map(|k| spec[*k].as_sequence())
                .flatten()
            {
                let image = str_of(&c["image"]);
                if image.starts_with("voltha-xds:") {
                    assert_eq!(image, format!("voltha-xds:{version}"), "{what}");
                }
            }
        }
    }
}

/// The NetworkPolicy selects voltha-xds's pods and admits, on the xDS port, the Envoys (the
/// example Envoy's pods by label) and, on the admin port, Prometheus; no other port, so the
/// debug listener (on loopback anyway) is never admitted.
#[test]
fn the_network_policy_admits_envoys_to_xds_and_prometheus_to_admin_only() {
    let all = manifests();
    let d = find(&all, "Deployment", "voltha-xds");
    let pods = &d["spec"]["template"]["metadata"]["labels"];
    let ports = container_ports(container(d, "voltha-xds"));
    let np = find(&all, "NetworkPolicy", "voltha-xds");
    assert!(labels_match(&np["spec"]["podSelector"]["matchLabels"], pods));
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress"]);
    let envoy = find(&all, "Deployment", "voltha-envoy");
    let envoy_pods = &envoy["spec"]["template"]["metadata"]["labels"];
    let rules = np["spec"]["ingress"].as_sequence().expect("ingress rules");
    let mut admitted = BTreeMap::new();
    for r in rules {
        let rule_ports: Vec<u16> = r["ports"]
            .as_sequence()
            .expect("every rule names its ports")
            .iter()
            .map(|p| resolve_port(&p["port"], &ports))
            .collect();
        for p in rule_ports {
            admitted.insert(p, r["from"].clone());
        }
    }
    let xds = ports["xds"];
    let admin = ports["admin"];
    assert_eq!(
        admitted.keys().copied().collect::<Vec<_>>(),
        [xds, admin]
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let from_xds = admitted[&xds].as_sequence().expect("xds sources");
    assert!(
        from_xds
            .iter()
            .any(|f| f["namespaceSelector"].is_null() && labels_match(&f["podSelector"]["matchLabels"], envoy_pods)),
        "the example Envoy's pods may reach xDS: {from_xds:?}"
    );
    let from_admin = admitted[&admin].as_sequence().expect("admin sources");
    assert!(from_admin
        .iter()
        .all(|f| !f["namespaceSelector"].is_null() && !f["podSelector"].is_null()));
    assert!(!from_admin
        .iter()
        .any(|f| labels_match(&f["podSelector"]["matchLabels"], envoy_pods)));
}

/// What in a NetworkPolicy's ingress admits more than labelled pods: a rule without `from`
/// (every source) or without `ports` (every port), and any peer that is not a non-empty pod
/// selector: an `ipBlock` (`0.0.0.0/0` admits everyone), an empty `podSelector` (every pod of
/// the namespace), a `namespaceSelector` alone (every pod of the namespaces it selects, all of
/// them when empty).
fn allow_all_peers(np: &Value) -> Vec<String> {
    let selects = |sel: &Value| {
        let labels = sel["matchLabels"].as_mapping().is_some_and(|m| !m.is_empty());
        let exprs = sel["matchExpressions"].as_sequence().is_some_and(|e| !e.is_empty());
        labels || exprs
    };
    let mut problems = Vec::new();
    for (i, rule) in np["spec"]["ingress"].as_sequence().into_iter().flatten().enumerate() {
        if rule["ports"].as_sequence().is_none_or(|p| p.is_empty()) {
            problems.push(format!("rule {i} admits every port"));
        }
        let Some(from) = rule["from"].as_sequence().filter(|f| !f.is_empty()) else {
            problems.push(format!("rule {i} admits every source"));
            continue;
        };
        for peer in from {
            if !peer["ipBlock"].is_null() {
                problems.push(format!("rule {i}: an ipBlock peer {:?}", peer["ipBlock"]["cidr"]));
            }
            if !selects(&peer["podSelector"]) {
                problems.push(format!("rule {i}: a peer that selects no pod by label: {peer:?}"));
            }
        }
    }
    problems
}

/// The policy's rules admit labelled pods only, and the check finds an allow-all peer added to
/// either rule.
#[test]
fn the_network_policy_has_no_allow_all_peer() {
    let all = manifests();
    let np = find(&all, "NetworkPolicy", "voltha-xds");
    assert_eq!(allow_all_peers(np), Vec::<String>::new());
    let rules = np["spec"]["ingress"].as_sequence().map_or(0, |r| r.len());
    assert_eq!(rules, 2);
    let peer = |y: &str| -> Value { serde_saphyr::from_str(y).expect("peer") };
    let wide = [
        peer("podSelector: {}"),
        peer("namespaceSelector: {}"),
        peer("namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}"),
        peer("{namespaceSelector: {}, podSelector: {}}"),
        peer("ipBlock: {cidr: 0.0.0.0/0}"),
        peer("ipBlock: {cidr: \"::/0\"}"),
    ];
    for i in 0..rules {
        for w in &wide {
            let mut widened = np.clone();
            widened["spec"]["ingress"][i]["from"]
                .as_array_mut()
                .expect("from")
                .push(w.clone());
            assert!(!allow_all_peers(&widened).is_empty(), "rule {i} with {w:?}");
        }
        let mut open = np.clone();
        open["spec"]["ingress"][i].as_object_mut().expect("rule").remove("from");
        assert!(!allow_all_peers(&open).is_empty(), "rule {i} without from");
    }
}

/// The replicas spread over zones first (a zone lost leaves one serving), then nodes.
#[test]
fn the_replicas_spread_over_zones_and_nodes() {
    let all = manifests();
    let d = find(&all, "Deployment", "voltha-xds");
    let spec = pod_spec(d);
    let pods = &d["spec"]["template"]["metadata"]["labels"];
    let spread = spec["topologySpreadConstraints"]
        .as_sequence()
        .expect("spread constraints");
    assert!(spread.iter().any(|s| s["topologyKey"] == "topology.kubernetes.io/zone"
        && s["maxSkew"].as_u64() == Some(1)
        && labels_match(&s["labelSelector"]["matchLabels"], pods)));
    let anti = &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert!(anti
        .as_sequence()
        .expect("anti-affinity")
        .iter()
        .any(|t| t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"));
}

/// The memory figures the Deployment's comment gives are the ones docs/deploy.md gives.
#[test]
fn the_deployment_and_the_deploy_doc_agree_on_memory() {
    let mib = |text: &str| -> BTreeSet<String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[1].starts_with("MiB"))
            .map(|w| w[0].to_string())
            .collect()
    };
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let comment: String = deployment
        .lines()
        .skip_while(|l| !l.contains("Measured"))
        .take_while(|l| l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let doc = read("docs/deploy.md");
    let bullet: String = doc
        .lines()
        .skip_while(|l| !l.starts_with("- **Resources**"))
        .take_while(|l| !l.starts_with("- **Security**"))
        .collect::<Vec<_>>()
        .join(" ");
    // The measured figures, after the requests and limits the bullet opens with.
    let measured = bullet.split_once("measures").map_or("", |(_, m)| m);
    let (a, b) = (mib(&comment), mib(measured));
    assert!(!a.is_empty(), "no figures in the Deployment's comment");
    assert_eq!(a, b, "deployment.yaml: {comment}\ndocs/deploy.md: {bullet}");
}

/// The log level is set with `VOLTHA_XDS_LOG_LEVEL` (`--log-level`'s variable), not `RUST_LOG`,
/// which would win over `--log-level` and any later change of it.
#[test]
fn the_log_level_is_set_by_its_own_variable_not_rust_log() {
    let all = manifests();
    let d = find(&all, "Deployment", "voltha-xds");
    let env: BTreeMap<String, String> = container(d, "voltha-xds")["env"]
        .as_sequence()
        .expect("the container's env")
        .iter()
        .map(|e| (str_of(&e["name"]).to_string(), str_of(&e["value"]).to_string()))
        .collect();
    assert_eq!(
        env.get("VOLTHA_XDS_LOG_LEVEL").map(String::as_str),
        Some("info"),
        "{env:?}"
    );
    assert!(!env.contains_key("RUST_LOG"), "{env:?}");

    let compose: Value = serde_saphyr::from_str(&read("docker-compose.yml")).expect("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    for (name, svc) in services {
        let env = &svc["environment"];
        assert!(env.get("RUST_LOG").is_none(), "{name:?} sets RUST_LOG");
        if name == "voltha-xds" {
            assert_eq!(str_of(&env["VOLTHA_XDS_LOG_LEVEL"]), "info");
        }
    }
}
