//! Prometheus: the rules and their unit tests pass promtool and read only known series, and
//! the scrape config passes promtool and selects the DaemonSet's pods.

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use serde_yaml::Value;

use super::{
    PROMTOOL, deploy, manifest,
    promql::{agent_metric_names, metric_names, recorded_names, rule_entries},
    read, run_ok, text, try_run, yaml,
};

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
