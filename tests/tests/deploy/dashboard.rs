//! The Grafana dashboard: its queries name only metrics the agent exports or the rules
//! record, show every self metric, and parse as PromQL.

use std::{collections::BTreeSet, fs, process::Command};

use monitor_tests::metrics::documented_metrics;

use super::{
    PROMTOOL, deploy,
    promql::{agent_metric_names, metric_names, recorded_names},
    read, run_ok,
};

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
