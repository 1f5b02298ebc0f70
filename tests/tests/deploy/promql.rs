//! The metric names PromQL expressions select, and the names they are held to: those the
//! agent exports and those the rules record.

use std::collections::BTreeSet;

use monitor_tests::metrics::documented_sample_names;
use serde_yaml::Value;

use super::{deploy, yaml};

pub(super) fn recorded_names() -> BTreeSet<String> {
    let rules = yaml(&deploy("prometheus/rules.yml"));
    let names: BTreeSet<String> = rule_entries(&rules)
        .filter_map(|rule| rule["record"].as_str().map(str::to_owned))
        .collect();
    assert!(names.len() > 30, "too few recording rules: {names:?}");
    names
}

pub(super) fn rule_entries(rules: &Value) -> impl Iterator<Item = &Value> {
    let groups = rules["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
}

/// Metric names a PromQL expression selects: what is left once strings, label matchers,
/// ranges, grouping label lists, Grafana variables, numbers, keywords and function names are
/// taken out.
pub(super) fn metric_names(expr: &str) -> BTreeSet<String> {
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
pub(super) fn agent_metric_names() -> BTreeSet<String> {
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
