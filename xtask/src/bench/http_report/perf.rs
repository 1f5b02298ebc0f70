//! The perf profiles: where the CPU of nginx and the load generator went, as JSON and as a
//! Markdown section.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::bench::{
    agent::Variant,
    http::Http,
    profile::{Category, ProcessProfile, Profile},
};

use super::text::percent;

/// The BPF categories of a profile.
const BPF_CATEGORIES: [Category; 3] = [Category::Program, Category::Helper, Category::Dispatch];

fn bpf_share(process: &ProcessProfile) -> f64 {
    BPF_CATEGORIES.iter().map(|c| process.share(*c)).sum()
}

pub(super) fn profiles_json(profiles: &[(Variant, Result<Profile, String>)]) -> Value {
    let map: serde_json::Map<String, Value> = profiles
        .iter()
        .map(|(variant, profile)| {
            let value = match profile {
                Err(error) => json!({ "error": error }),
                Ok(profile) => {
                    let processes: serde_json::Map<String, Value> = profile
                        .processes
                        .iter()
                        .map(|p| {
                            let top: Vec<Value> = p
                                .symbols
                                .iter()
                                .filter(|(category, ..)| *category != Category::Other)
                                .take(15)
                                .map(|(category, name, share)| {
                                    json!({"symbol": name, "kind": category.name(),
                                           "share": share})
                                })
                                .collect();
                            (
                                p.name.clone(),
                                json!({
                                    "share_of_samples": p.share,
                                    "bpf_share": bpf_share(p),
                                    "bpf_programs_share": p.share(Category::Program),
                                    "called_by_bpf_share": p.share(Category::Helper),
                                    "bpf_dispatch_share": p.share(Category::Dispatch),
                                    "top_bpf_symbols": top,
                                }),
                            )
                        })
                        .collect();
                    json!({"samples": profile.samples, "processes": processes})
                }
            };
            (variant.key().to_owned(), value)
        })
        .collect();
    Value::Object(map)
}

pub(super) fn profile_markdown(http: &Http) -> String {
    let mut text = format!(
        "\n#### Where the CPU of nginx and the load generator went (perf)\n\n\
         `perf record -e cpu-clock` sampled nginx's worker and oha during one more run at {} \
         req/s with each recording variant (no BPF statistics). Shares of each process's own \
         samples; BPF programs include their bpf_loop callbacks (`*_step`); \"called by BPF\" \
         is helpers, map operations and user-memory reads; \"dispatch\" is the tracepoint's \
         call into BPF. Programs of other agents running at the time would be counted too.\n",
        http.rate
    );
    for (variant, profile) in &http.profiles {
        let profile = match profile {
            Err(error) => {
                text.push_str(&format!(
                    "\n{}: no perf profile: {error}.\n",
                    variant.name()
                ));
                continue;
            }
            Ok(profile) => profile,
        };
        let names: Vec<&str> = profile.processes.iter().map(|p| p.name.as_str()).collect();
        text.push_str(&format!(
            "\n{} ({} samples):\n\n| where | {} |\n|---|{}\n",
            variant.name(),
            profile.samples,
            names.join(" | "),
            "---|".repeat(names.len())
        ));
        let cells = |f: &dyn Fn(&ProcessProfile) -> String| {
            profile
                .processes
                .iter()
                .map(f)
                .collect::<Vec<_>>()
                .join(" | ")
        };
        text.push_str(&format!(
            "| share of all samples | {} |\n",
            cells(&|p| percent(p.share))
        ));
        for category in BPF_CATEGORIES {
            text.push_str(&format!(
                "| {} | {} |\n",
                category.name(),
                cells(&|p| percent(p.share(category)))
            ));
        }
        text.push_str(&format!(
            "| **all BPF** | {} |\n",
            cells(&|p| format!("**{}**", percent(bpf_share(p))))
        ));
        // The BPF symbols with the most samples of the two processes together.
        let mut weights: BTreeMap<&str, f64> = BTreeMap::new();
        for process in &profile.processes {
            for (category, name, share) in &process.symbols {
                if *category != Category::Other {
                    *weights.entry(name).or_default() += share * process.share;
                }
            }
        }
        let mut symbols: Vec<(&str, f64)> = weights.into_iter().collect();
        symbols.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, _) in symbols.into_iter().take(10) {
            text.push_str(&format!(
                "| `{name}` | {} |\n",
                cells(&|p| percent(p.symbol(name)))
            ));
        }
    }
    text
}
