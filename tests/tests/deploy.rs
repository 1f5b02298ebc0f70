//! The deployment material under deploy/, checked by the tools that consume it: promtool
//! (rules, rule unit tests, scrape config), kubernetes-validate and kustomize
//! (manifests), systemd-analyze (unit) and install.sh, plus the dashboard's queries against the
//! metric names the agent exports and the rules record. Needs neither root nor the agent.

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use monitor_tests::metrics::{documented_metrics, documented_sample_names};
use serde_yaml::Value;

/// Series the rules read but nobody records there: optional inputs from other exporters, and
/// the per-service or per-host overrides users record (each documented in deploy/README.md).
const RULE_INPUTS: &[&str] = &[
    "node_cpu_seconds_total",
    "kube_pod_container_resource_limits",
];
const OVERRIDES: &[&str] = &[
    "service_name:slo_availability_objective:override",
    "service_name:slo_latency_objective:override",
    "service_name_le:slo_latency_threshold_seconds:override",
    "instance:machine_cpu_cores:override",
    "service_name:cpu_limit_cores:override",
];
/// The capabilities the agent needs, in Kubernetes' and in systemd's spelling.
const CAPABILITIES: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of a multi-document stream, as `kustomize build` writes it.
fn yaml_documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Runs `command`; `None` when its program is not installed.
fn try_run(command: &mut Command) -> Option<Output> {
    match command.output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("running {command:?}: {e}"),
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Runs a tool the tests need; panics naming the package that brings it if it is missing, and
/// with its output if it fails.
fn run_ok(command: &mut Command, package: &str) -> String {
    let output = try_run(command)
        .unwrap_or_else(|| panic!("{command:?}: not installed; it comes with {package}"));
    let out = text(&output);
    assert!(output.status.success(), "{command:?} failed:\n{out}");
    out
}

const PROMTOOL: &str = "the Debian package prometheus";
const VALIDATE: &str = "`pip install kubernetes-validate`";
const SYSTEMD: &str = "the Debian package systemd";

fn kubernetes_validate(files: &[&Path]) -> String {
    let mut command = Command::new("kubernetes-validate");
    if try_run(Command::new("kubernetes-validate").arg("--version")).is_none() {
        command = Command::new("python3");
        command.args(["-m", "kubernetes_validate"]);
    }
    run_ok(command.arg("--strict").args(files), VALIDATE)
}

fn recorded_names() -> BTreeSet<String> {
    let rules = yaml(&deploy("prometheus/rules.yml"));
    let names: BTreeSet<String> = rule_entries(&rules)
        .filter_map(|rule| rule["record"].as_str().map(str::to_owned))
        .collect();
    assert!(names.len() > 30, "too few recording rules: {names:?}");
    names
}

fn rule_entries(rules: &Value) -> impl Iterator<Item = &Value> {
    let groups = rules["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
}

/// Metric names a PromQL expression selects: what is left once strings, label matchers,
/// ranges, grouping label lists, Grafana variables, numbers, keywords and function names are
/// taken out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Operators and literals, then aggregations (whose `by (...)` may come before the `(`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    // Strings, {...} and [...] go; what remains keeps its token boundaries.
    let mut bare = String::new();
    let (mut chars, mut depth) = (expr.chars(), 0i32);
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut escaped = false;
                for s in chars.by_ref() {
                    if s == c && !escaped {
                        break;
                    }
                    escaped = s == '\\' && !escaped;
                }
                bare.push(' ');
            }
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                bare.push(' ');
            }
            _ if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    let bytes = bare.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let (mut names, mut i) = (BTreeSet::new(), 0);
    while i < bytes.len() {
        let start = i;
        if bytes[i] == b'$' || bytes[i].is_ascii_digit() || bytes[i] == b'.' {
            i += 1;
            while i < bytes.len() && (word(bytes[i]) || bytes[i] == b'.') {
                i += 1;
            }
            continue;
        }
        if !word(bytes[i]) {
            i += 1;
            continue;
        }
        while i < bytes.len() && word(bytes[i]) {
            i += 1;
        }
        let token = &bare[start..i];
        let rest = bare[i..].trim_start();
        if GROUPING.contains(&token) {
            if rest.starts_with('(') {
                let close = rest.find(')').expect("closing parenthesis");
                i = bare.len() - rest.len() + close + 1;
            }
        } else if !rest.starts_with('(') && !KEYWORDS.contains(&token.to_lowercase().as_str()) {
            names.insert(token.to_owned());
        }
    }
    names
}

/// What the agent exports: README's Metrics table, which `every_exported_metric_is_documented`
/// (tests/tests/lifecycle.rs) holds the agent's scrapes to.
fn agent_metric_names() -> BTreeSet<String> {
    documented_sample_names()
}

#[test]
fn metric_name_extraction_sees_through_promql() {
    let expr = r#"sum by (service_name, le) (rate(a_b:c{x="y{z}", le=~"0.5"}[5m] offset 1h))
        / on (instance) group_left () topk(5, other_total) > bool 0.5e-3 * $var and d
        or label_replace(e, "le", "$1", "le", "(.+)\\.0")"#;
    let expected = ["a_b:c", "other_total", "d", "e"].map(String::from);
    assert_eq!(metric_names(expr), BTreeSet::from(expected));
}

#[test]
fn rules_pass_promtool_check() {
    let out = run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(deploy("prometheus/rules.yml")),
        PROMTOOL,
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn rule_unit_tests_pass_and_cover_budgets_health_and_capacity() {
    let path = deploy("prometheus/rules_test.yml");
    let out = run_ok(
        Command::new("promtool").args(["test", "rules"]).arg(&path),
        PROMTOOL,
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // The file still tests what the issue asks for: burning budgets fire both alerts, some
    // services stay silent, the capacity estimates have expected values.
    let tests = yaml(&path);
    let tests = tests["tests"].as_sequence().expect("tests");
    let cases = || {
        tests
            .iter()
            .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
    };
    for alert in ["HTTPServerErrorBudgetBurn", "HTTPServerLatencyBudgetBurn"] {
        let firing: BTreeSet<&str> = cases()
            .filter(|c| c["alertname"].as_str() == Some(alert))
            .flat_map(|c| c["exp_alerts"].as_sequence().into_iter().flatten())
            .filter_map(|a| a["exp_labels"]["service_name"].as_str())
            .collect();
        assert!(!firing.is_empty(), "no test in which {alert} fires");
        let inputs = serde_yaml::to_string(tests).unwrap();
        let silent = ["catalog", "payments"]
            .iter()
            .filter(|s| inputs.contains(*s));
        assert!(silent.clone().count() == 2 && silent.clone().all(|s| !firing.contains(s)));
    }
    let exprs: BTreeSet<&str> = tests
        .iter()
        .flat_map(|t| t["promql_expr_test"].as_sequence().into_iter().flatten())
        .filter_map(|c| c["expr"].as_str())
        .collect();
    for capacity in [
        "service_name:http_server_requests_capacity:host_cores",
        "service_name:http_server_requests_capacity:cpu_limit",
        "service_name:http_server_cpu_seconds_per_request:ratio_rate5m",
    ] {
        assert!(
            exprs.contains(capacity),
            "no promql_expr_test of {capacity}"
        );
    }
}

#[test]
fn rules_read_only_known_series() {
    let known: BTreeSet<String> = agent_metric_names()
        .into_iter()
        .chain(recorded_names())
        .chain(RULE_INPUTS.iter().chain(OVERRIDES).map(|n| n.to_string()))
        .collect();
    let rules = yaml(&deploy("prometheus/rules.yml"));
    for rule in rule_entries(&rules) {
        let expr = rule["expr"].as_str().expect("expr");
        let unknown: Vec<_> = metric_names(expr)
            .into_iter()
            .filter(|n| !known.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "rule {rule:?} reads unknown series {unknown:?}"
        );
    }
    let readme = read(&deploy("README.md"));
    for name in OVERRIDES.iter().chain(RULE_INPUTS) {
        assert!(
            readme.contains(name),
            "deploy/README.md does not document {name}"
        );
    }
}

/// Debian's promtool is built without Kubernetes service discovery, so where it rejects the
/// Kubernetes job, the rest of the file is checked by promtool and that job here.
#[test]
fn scrape_config_passes_promtool_check_config() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(deploy("prometheus/rules.yml"), dir.path().join("rules.yml")).unwrap();
    let full = dir.path().join("prometheus.yml");
    fs::copy(deploy("prometheus/scrape.yml"), &full).unwrap();
    let check = |file: &Path| {
        let mut command = Command::new("promtool");
        let output = try_run(command.args(["check", "config"]).arg(file)).expect(PROMTOOL);
        (output.status.success(), text(&output))
    };
    let (ok, out) = check(&full);
    if ok {
        return;
    }
    assert!(
        out.contains("field kubernetes_sd_configs not found"),
        "{out}"
    );
    eprintln!("this promtool has no Kubernetes discovery: checking the other jobs only");
    let mut config = yaml(&full);
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    let (kubernetes, host): (Vec<Value>, Vec<Value>) = jobs
        .drain(..)
        .partition(|job| job.get("kubernetes_sd_configs").is_some());
    *jobs = host;
    let rest = dir.path().join("without-kubernetes.yml");
    fs::write(&rest, serde_yaml::to_string(&config).unwrap()).unwrap();
    let (ok, out) = check(&rest);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let [job] = &kubernetes[..] else {
        panic!("one Kubernetes job expected")
    };
    let sd = &job["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"], "pod");
    assert_eq!(sd["namespaces"]["names"][0], "monitor");
    let selector = sd["selectors"][0]["label"].as_str().unwrap();
    let pod_labels = &manifest("daemonset.yaml")["spec"]["template"]["metadata"]["labels"];
    let (key, value) = selector.split_once('=').unwrap();
    assert_eq!(pod_labels[key].as_str(), Some(value), "selector {selector}");
    let keep = job["relabel_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "keep");
    assert_eq!(
        keep.unwrap()["regex"],
        "metrics",
        "keeps the metrics port only"
    );
}

fn manifest(name: &str) -> Value {
    yaml(&deploy("kubernetes").join(name))
}

fn kustomization_resources(dir: &Path) -> Vec<PathBuf> {
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    let resources = kustomization["resources"].as_sequence().expect("resources");
    resources
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()))
        .collect()
}

#[test]
fn kubernetes_manifests_validate() {
    let dir = deploy("kubernetes");
    let resources = kustomization_resources(&dir);
    // Every manifest beside the kustomization is one of its resources, and exists.
    let mut listed: Vec<_> = resources
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    let mut present: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_str().unwrap().ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present);
    let files: Vec<&Path> = resources.iter().map(PathBuf::as_path).collect();
    let out = kubernetes_validate(&files);
    for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
        assert!(
            out.contains(&format!("passed for resource {kind}/monitor")),
            "{out}"
        );
    }
    // kubernetes-validate has no schema for the Operator's PodMonitor: its fields are checked
    // here against the DaemonSet it scrapes.
    assert!(
        out.contains("Couldn't find schema for kind PodMonitor"),
        "{out}"
    );
    let monitor = manifest("podmonitor.yaml");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let spec = &monitor["spec"];
    let pod = &manifest("daemonset.yaml")["spec"]["template"];
    for (key, value) in spec["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][key], value,
            "PodMonitor selector {key:?}"
        );
    }
    assert_eq!(spec["namespaceSelector"]["matchNames"][0], "monitor");
    let endpoint = &spec["podMetricsEndpoints"][0];
    assert_eq!(
        endpoint["port"],
        pod["spec"]["containers"][0]["ports"][0]["name"]
    );
    assert_eq!(endpoint["path"], "/metrics");
    let known = ["port", "path", "interval", "scrapeTimeout", "relabelings"];
    for key in endpoint.as_mapping().unwrap().keys() {
        assert!(
            known.contains(&key.as_str().unwrap()),
            "unexpected endpoint field {key:?}"
        );
    }
}

#[test]
fn daemonset_runs_the_agent_with_capabilities_not_privileged() {
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    let [container] = &spec["containers"].as_sequence().unwrap()[..] else {
        panic!()
    };
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsUser"], 0);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    let added: BTreeSet<&str> = security["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(added, CAPABILITIES.iter().copied().collect());
    // Every capability is explained where it is granted.
    let source = read(&deploy("kubernetes/daemonset.yaml"));
    for capability in CAPABILITIES {
        assert!(
            source.contains(&format!("# {capability}: ")),
            "{capability} undocumented"
        );
    }
    // Listens on the port the probes, the Service and the PodMonitor use.
    let env = &container["env"][0];
    assert_eq!(
        (env["name"].as_str(), env["value"].as_str()),
        (Some("MONITOR_LISTEN"), Some("0.0.0.0:9464"))
    );
    let port = &container["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["containerPort"].as_i64()),
        (Some("metrics"), Some(9464))
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            (get["path"].as_str(), get["port"].as_str()),
            (Some("/healthz"), Some("metrics"))
        );
    }
    let resources = &container["resources"];
    assert_eq!(resources["requests"]["cpu"], "50m");
    assert_eq!(resources["limits"]["memory"], "128Mi");
    // Host paths, all read-only.
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let mut host_paths = BTreeSet::new();
    for volume in spec["volumes"].as_sequence().unwrap() {
        let path = volume["hostPath"]["path"]
            .as_str()
            .expect("only hostPath volumes");
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .expect("mounted");
        assert_eq!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{path} must be read-only"
        );
        host_paths.insert(path);
    }
    let expected = [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/sys/fs/cgroup",
        "/var/log/pods",
        "/var/log/containers",
    ];
    assert_eq!(host_paths, expected.into_iter().collect());
    // The Service selects these pods on that port, headless.
    let service = manifest("service.yaml");
    assert_eq!(service["spec"]["clusterIP"], "None");
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][key], value);
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        spec["serviceAccountName"],
        manifest("serviceaccount.yaml")["metadata"]["name"]
    );
    let namespace = manifest("namespace.yaml");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// Renders with kustomize, which `cargo xtask setup` installs (kubectl's own is too old on
/// Debian for `components`).
#[test]
fn kustomizations_render_and_validate() {
    let base = deploy("kubernetes");
    let component = base.join("privileged");
    let patch = yaml(&component.join("daemonset-privileged.yaml"));
    assert_eq!(
        patch["metadata"]["name"],
        manifest("daemonset.yaml")["metadata"]["name"]
    );
    assert_eq!(
        yaml(&component.join("kustomization.yaml"))["kind"],
        "Component"
    );
    let kustomize = ["kustomize", "/usr/local/bin/kustomize"]
        .into_iter()
        .find(|program| try_run(Command::new(program).arg("version")).is_some())
        .expect("kustomize is not installed: run `cargo xtask setup`");
    let dir = tempfile::tempdir().unwrap();
    let render = |root: &Path, name: &str| {
        let out = Command::new(kustomize)
            .arg("build")
            .arg(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kustomize build {}: {}",
            root.display(),
            text(&out)
        );
        let file = dir.path().join(name);
        fs::write(&file, &out.stdout).unwrap();
        kubernetes_validate(&[&file]);
        yaml_documents(&String::from_utf8(out.stdout).unwrap())
    };
    let documents = render(&base, "base.yaml");
    let kinds: BTreeSet<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    let expected = [
        "Namespace",
        "ServiceAccount",
        "DaemonSet",
        "Service",
        "PodMonitor",
    ];
    assert_eq!(kinds, expected.into_iter().collect());
    // The privileged variant, through an overlay of the base with the component (kustomize
    // takes relative paths only).
    let overlay = dir.path().join("overlay");
    fs::create_dir(&overlay).unwrap();
    let overlay = fs::canonicalize(overlay).unwrap();
    let relative = |path: &Path| {
        let up = "../".repeat(overlay.components().count() - 1);
        let path = fs::canonicalize(path).unwrap();
        format!("{up}{}", path.strip_prefix("/").unwrap().display())
    };
    let kustomization = format!(
        "resources: [{}]\ncomponents: [{}]\n",
        relative(&base),
        relative(&component)
    );
    fs::write(overlay.join("kustomization.yaml"), kustomization).unwrap();
    let documents = render(&overlay, "privileged.yaml");
    let daemonset = documents.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &daemonset["spec"]["template"]["spec"];
    let security = &spec["containers"][0]["securityContext"];
    assert_eq!(security["privileged"], true);
    assert!(security.get("capabilities").is_none(), "{security:?}");
    let volumes = serde_yaml::to_string(&spec["volumes"]).unwrap();
    assert!(!volumes.contains("/sys/kernel/btf") && volumes.contains("/sys/kernel/tracing"));
}

/// Installs into a temporary root. `systemd-analyze verify` needs the unit's ExecStart to exist
/// (install.sh puts a stub there) and, under --root, the targets a service depends on by
/// default, copied from this host.
#[test]
fn systemd_unit_verifies_once_installed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let stub = dir.path().join("monitor");
    fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    install(&root, &stub);
    let units = root.join("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    for target in [
        "sysinit.target",
        "basic.target",
        "shutdown.target",
        "network.target",
        "multi-user.target",
    ] {
        fs::copy(
            Path::new("/usr/lib/systemd/system").join(target),
            units.join(target),
        )
        .unwrap_or_else(|e| panic!("{target} from {SYSTEMD}: {e}"));
    }
    let mut analyze = Command::new("systemd-analyze");
    let out = run_ok(
        analyze
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("monitor.service"),
        SYSTEMD,
    );
    // verify exits 0 on settings it ignores: any message is a failure.
    assert_eq!(out.trim(), "", "systemd-analyze verify complained");
    // The hardening keeps systemd's exposure score at 3.0 ("OK") or below.
    let mut security = Command::new("systemd-analyze");
    security.args(["security", "--offline=true", "--threshold=30"]);
    run_ok(
        security
            .arg(format!("--root={}", root.display()))
            .arg("monitor.service"),
        SYSTEMD,
    );
    let unit = read(&root.join("etc/systemd/system/monitor.service"));
    let caps = CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        unit.contains(&format!("\nCapabilityBoundingSet={caps}\n")),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("\nAmbientCapabilities={caps}\n")),
        "{unit}"
    );
    assert!(unit.contains("\nExecStart=/usr/local/bin/monitor\n"));
}

fn install_sh(args: &[&str]) -> Output {
    Command::new(deploy("install.sh"))
        .args(args)
        .output()
        .expect("running install.sh")
}

fn install(root: &Path, binary: &Path) {
    let output = install_sh(&[
        "--root",
        root.to_str().unwrap(),
        "--binary",
        binary.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "install.sh: {}", text(&output));
}

#[test]
fn install_sh_installs_binary_and_unit_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let binary = dir.path().join("some-file");
    fs::write(&binary, "not really an ELF").unwrap();
    for _ in 0..2 {
        install(&root, &binary);
        let installed = root.join("usr/local/bin/monitor");
        assert_eq!(fs::read(&installed).unwrap(), fs::read(&binary).unwrap());
        assert_eq!(
            fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let unit = root.join("etc/systemd/system/monitor.service");
        assert_eq!(read(&unit), read(&deploy("systemd/monitor.service")));
        assert_eq!(
            fs::metadata(&unit).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let mut left: Vec<_> = walk(&root);
        left.sort();
        assert_eq!(
            left,
            [root.join("etc/systemd/system/monitor.service"), installed]
        );
    }
    // Usage errors: exit 2 and the usage; bad paths: exit 1 and why.
    let root_arg = root.to_str().unwrap();
    let binary_arg = binary.to_str().unwrap();
    for (args, code, says) in [
        (&[][..], 2, "--binary is required"),
        (&["--binary"][..], 2, "--binary needs a value"),
        (
            &["--binary", binary_arg, "--frobnicate"][..],
            2,
            "unknown argument: --frobnicate",
        ),
        (
            &["--binary", "/nonexistent/monitor", "--root", root_arg][..],
            1,
            "not a file",
        ),
        (
            &["--binary", binary_arg, "--root", "/nonexistent/root"][..],
            1,
            "not a directory",
        ),
    ] {
        let output = install_sh(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(
            code == 2,
            stderr.contains("usage: deploy/install.sh"),
            "{args:?}: {stderr}"
        );
    }
    let help = install_sh(&["--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--root DIR"));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// Every query of the dashboard, with where it is; label_values() is reduced to its series.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = deploy("grafana/monitor.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
    let mut queries = Vec::new();
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("every target has an expr");
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
            panels(&panel["panels"], out);
        }
    }
    panels(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let query = &variable["query"];
        let Some(query) = query["query"].as_str().or(query.as_str()) else {
            continue;
        };
        if let Some(inner) = query.strip_prefix("label_values(") {
            let (series, _label) = inner
                .trim_end_matches(')')
                .rsplit_once(',')
                .expect("label_values(series, label)");
            queries.push((
                format!("variable {}", variable["name"]),
                series.trim().to_owned(),
            ));
        } else if variable["type"] == "query" {
            queries.push((format!("variable {}", variable["name"]), query.to_owned()));
        }
    }
    queries
}

#[test]
fn dashboard_queries_name_only_exported_or_recorded_metrics() {
    let known: BTreeSet<String> = agent_metric_names()
        .into_iter()
        .chain(recorded_names())
        .collect();
    let queries = dashboard_queries();
    assert!(queries.len() >= 30, "only {} queries", queries.len());
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            assert!(
                known.contains(&name),
                "{place}: {name} is neither exported nor recorded"
            );
            used.insert(name);
        }
    }
    // The agent's health section shows every self metric.
    for name in documented_metrics()
        .keys()
        .filter(|n| n.starts_with("monitor_"))
    {
        let shown = used.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| used.contains(&format!("{name}{suffix}")));
        assert!(shown, "the dashboard does not show {name}");
    }
}

/// promtool parses every query, as a recording rule, once Grafana's variables are replaced.
#[test]
fn dashboard_queries_parse_as_promql() {
    let rules: Vec<serde_json::Value> = dashboard_queries()
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$service", ".*")
                .replace("$instance", ".*");
            assert!(
                !expr.contains('$') || expr.contains("\"$1\""),
                "unknown variable in {expr}"
            );
            serde_json::json!({ "record": format!("dashboard:query_{i}:expr"), "expr": expr })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let out = run_ok(
        Command::new("promtool").args(["check", "rules"]).arg(&path),
        PROMTOOL,
    );
    assert!(out.contains("SUCCESS"), "{out}");
}
