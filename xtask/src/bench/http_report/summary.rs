//! The summary of the rounds: per variant, the medians of throughput, latency, BPF time and
//! the agent's cost, the losses, and the accuracy rounds; built once, then judged and written
//! out by the sibling modules.

use std::collections::BTreeMap;

use crate::bench::{
    agent::Variant,
    http::{FixedRound, Http, SaturationRound},
    stats::{histogram_quantile, median, ratio},
    syscall::Syscalls,
};

use super::{
    PerVariant, RECORDING,
    accuracy::AccuracyRound,
    goals::Goal,
    paired::{Paired, paired},
    per_variant,
};

const MIB: f64 = 1024.0 * 1024.0;

/// Per program, medians over the rounds: runs per request, ns per run, ns per request.
#[derive(Clone, Copy, Debug)]
pub struct ProgramFigures {
    pub runs_per_request: f64,
    pub ns_per_run: f64,
    pub ns_per_request: f64,
}

/// What a recording variant missed.
#[derive(Default)]
pub struct Losses {
    /// Per saturation round: nginx's count minus the agent's.
    pub not_recorded: Vec<i64>,
    /// Kernel drops by reason, all rounds.
    pub drops: BTreeMap<String, f64>,
    pub unanswered: f64,
    pub unmatched: f64,
}

pub struct Summary {
    pub throughput: PerVariant,
    /// Per round, against no agent in the same round.
    pub throughput_ratio: [Paired; 4],
    /// nginx's requests per second of its own CPU time at saturation, per round, against no
    /// agent in the same round: the capacity the agent leaves it, apart from what the agent
    /// takes from the load generator on the same host.
    pub capacity_ratio: [Paired; 4],
    /// nginx's CPU time per request, µs: at saturation, and at the fixed rate (with BPF
    /// statistics on there, which add to the programs' time).
    pub server_cpu_us_saturation: PerVariant,
    pub server_cpu_us_fixed: PerVariant,
    pub p50_ratio: [Paired; 4],
    pub p99_ratio: [Paired; 4],
    pub p50: PerVariant,
    pub p99: PerVariant,
    pub bpf_ns_per_request: PerVariant,
    pub programs: [BTreeMap<String, ProgramFigures>; 4],
    pub cpu_ms_per_1k_saturation: PerVariant,
    pub cpu_ms_per_1k_fixed: PerVariant,
    pub peak_rss_mib: PerVariant,
    pub refresh_ms: PerVariant,
    pub losses: [Losses; 4],
    pub accuracy: Vec<AccuracyRound>,
    pub getppid_slowdown: PerVariant,
    /// Per recording variant.
    pub goals: Vec<(Variant, Vec<Goal>)>,
}

fn saturation_of(http: &Http, variant: Variant) -> impl Iterator<Item = &SaturationRound> {
    http.saturation_rounds
        .iter()
        .filter(move |round| round.variant == variant)
}

fn fixed_of(http: &Http, variant: Variant) -> impl Iterator<Item = &FixedRound> {
    http.fixed_rounds
        .iter()
        .filter(move |round| round.variant == variant)
}

fn quantiles(buckets: Option<&Vec<(f64, u64)>>) -> (f64, f64) {
    buckets.map_or((f64::NAN, f64::NAN), |b| {
        (histogram_quantile(0.5, b), histogram_quantile(0.99, b))
    })
}

/// A program's name without its kind (`sys_exit_btf`, `sys_exit_empty`: `sys_exit`), so the
/// real and empty programs of a hook share a row.
pub fn hook_of(program: &str) -> &str {
    ["_btf", "_empty", "_tp", "_raw"]
        .iter()
        .find_map(|suffix| program.strip_suffix(suffix))
        .unwrap_or(program)
}

fn programs(http: &Http, variant: Variant) -> BTreeMap<String, ProgramFigures> {
    let mut names: Vec<&String> = fixed_of(http, variant)
        .flat_map(|round| round.programs.keys())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let figure = |f: &dyn Fn(f64, f64, f64) -> f64| {
                median(
                    fixed_of(http, variant)
                        .filter_map(|round| {
                            let total = round.programs.get(name)?;
                            Some(f(total.time_ns, total.runs, round.oha.responses as f64))
                        })
                        .collect(),
                )
            };
            (
                hook_of(name).to_owned(),
                ProgramFigures {
                    runs_per_request: figure(&|_, runs, requests| ratio(runs, requests)),
                    ns_per_run: figure(&|time, runs, _| ratio(time, runs)),
                    ns_per_request: figure(&|time, _, requests| ratio(time, requests)),
                },
            )
        })
        .collect()
}

fn losses(http: &Http, variant: Variant) -> Losses {
    let counts: Vec<_> = saturation_of(http, variant)
        .filter_map(|r| r.counts.as_ref())
        .chain(fixed_of(http, variant).filter_map(|r| r.counts.as_ref()))
        .collect();
    Losses {
        not_recorded: saturation_of(http, variant)
            .filter_map(|r| Some(r.served as i64 - r.counts.as_ref()?.server as i64))
            .collect(),
        drops: counts.iter().fold(BTreeMap::new(), |mut all, c| {
            for (reason, n) in &c.drops {
                *all.entry(reason.clone()).or_default() += n;
            }
            all
        }),
        unanswered: counts.iter().map(|c| c.unanswered).sum(),
        unmatched: counts.iter().map(|c| c.unmatched).sum(),
    }
}

impl Summary {
    pub fn new(http: &Http, syscalls: Option<&Syscalls>) -> Self {
        let throughput = per_variant(|v| {
            median(
                saturation_of(http, v)
                    .map(|r| r.wrk.requests_per_second)
                    .collect(),
            )
        });
        let oha =
            |v: Variant, f: fn(&FixedRound) -> f64| median(fixed_of(http, v).map(f).collect());
        let bpf_ns_per_request = per_variant(|v| {
            median(
                fixed_of(http, v)
                    .filter(|r| !r.programs.is_empty())
                    .map(|r| {
                        let total: f64 = r.programs.values().map(|p| p.time_ns).sum();
                        ratio(total, r.oha.responses as f64)
                    })
                    .collect(),
            )
        });
        let cpu_ms_per_1k_saturation = per_variant(|v| {
            median(
                saturation_of(http, v)
                    .filter_map(|r| {
                        Some(ratio(r.cost.as_ref()?.cpu_seconds * 1e6, r.served as f64))
                    })
                    .collect(),
            )
        });
        let cpu_ms_per_1k_fixed = per_variant(|v| {
            median(
                fixed_of(http, v)
                    .filter_map(|r| {
                        Some(ratio(
                            r.cost.as_ref()?.cpu_seconds * 1e6,
                            r.oha.responses as f64,
                        ))
                    })
                    .collect(),
            )
        });
        let peak_rss_mib = per_variant(|v| {
            let saturation = saturation_of(http, v).filter_map(|r| r.cost.as_ref()?.peak_rss_bytes);
            let fixed = fixed_of(http, v).filter_map(|r| r.cost.as_ref()?.peak_rss_bytes);
            saturation
                .chain(fixed)
                .max()
                .map_or(f64::NAN, |bytes| bytes as f64 / MIB)
        });
        let refresh_ms = per_variant(|v| {
            let costs = fixed_of(http, v).filter_map(|r| r.cost.as_ref());
            let (seconds, count) = costs.fold((0.0, 0.0), |(s, c), cost| {
                (s + cost.refresh_seconds, c + cost.refreshes)
            });
            ratio(seconds * 1e3, count)
        });
        let accuracy = RECORDING
            .iter()
            .flat_map(|&v| fixed_of(http, v))
            .filter_map(|r| {
                let counts = r.counts.as_ref()?;
                let measures_client = r.variant == Variant::Monitor;
                Some(AccuracyRound {
                    variant: r.variant,
                    requests: r.oha.responses,
                    server: counts.server,
                    client: measures_client.then_some(counts.client),
                    oha: (r.oha.p50, r.oha.p99),
                    server_quantiles: quantiles(counts.server_buckets.as_ref()),
                    client_quantiles: quantiles(counts.client_buckets.as_ref()),
                })
            })
            .collect();
        let saturation_paired = |v: Variant| {
            paired(
                &http.saturation_rounds,
                v,
                |r| (r.round, r.variant),
                |r| r.wrk.requests_per_second,
            )
        };
        let fixed_paired = |v: Variant, f: fn(&FixedRound) -> f64| {
            paired(&http.fixed_rounds, v, |r| (r.round, r.variant), f)
        };
        let capacity_paired = |v: Variant| {
            paired(
                &http.saturation_rounds,
                v,
                |r| (r.round, r.variant),
                |r| {
                    r.server_cpu_seconds
                        .map_or(f64::NAN, |cpu| ratio(r.served as f64, cpu))
                },
            )
        };
        let server_cpu_us_saturation = per_variant(|v| {
            median(
                saturation_of(http, v)
                    .filter_map(|r| Some(ratio(r.server_cpu_seconds? * 1e6, r.served as f64)))
                    .collect(),
            )
        });
        let server_cpu_us_fixed = per_variant(|v| {
            median(
                fixed_of(http, v)
                    .filter_map(|r| {
                        Some(ratio(r.server_cpu_seconds? * 1e6, r.oha.responses as f64))
                    })
                    .collect(),
            )
        });
        let mut summary = Self {
            throughput,
            throughput_ratio: Variant::ALL.map(saturation_paired),
            capacity_ratio: Variant::ALL.map(capacity_paired),
            server_cpu_us_saturation,
            server_cpu_us_fixed,
            p50_ratio: Variant::ALL.map(|v| fixed_paired(v, |r| r.oha.p50)),
            p99_ratio: Variant::ALL.map(|v| fixed_paired(v, |r| r.oha.p99)),
            p50: per_variant(|v| oha(v, |r| r.oha.p50)),
            p99: per_variant(|v| oha(v, |r| r.oha.p99)),
            bpf_ns_per_request,
            programs: Variant::ALL.map(|v| programs(http, v)),
            cpu_ms_per_1k_saturation,
            cpu_ms_per_1k_fixed,
            peak_rss_mib,
            refresh_ms,
            losses: Variant::ALL.map(|v| losses(http, v)),
            accuracy,
            getppid_slowdown: per_variant(|v| syscalls.map_or(f64::NAN, |s| s.slowdown(v))),
            goals: Vec::new(),
        };
        summary.goals = RECORDING.iter().map(|&v| (v, summary.goals(v))).collect();
        summary
    }

    pub(super) fn relative(&self, figures: &PerVariant, variant: Variant) -> f64 {
        ratio(figures[variant.index()], figures[Variant::NoAgent.index()])
    }
}
