//! The HTTP figures: medians over the rounds, the goals they meet or miss, the accuracy of
//! the agent's counts and percentiles, as Markdown for BENCHMARKS.md and as JSON.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    agent::{LOAD_GENERATORS, Variant},
    http::{FixedRound, Http, ROUTE, SaturationRound},
    profile::{Category, ProcessProfile, Profile},
    stats::{histogram_quantile, median, ratio},
    syscall::Syscalls,
};

const MIB: f64 = 1024.0 * 1024.0;
/// The variants that record HTTP, for which goals and accuracy are reported.
const RECORDING: [Variant; 2] = [Variant::Monitor, Variant::ServerOnly];
/// Table columns, left to right.
const COLUMNS: [Variant; 4] = [
    Variant::Monitor,
    Variant::ServerOnly,
    Variant::EmptyPrograms,
    Variant::NoAgent,
];

/// One figure per variant, indexed by `Variant::index` (NaN where it does not apply).
type PerVariant = [f64; 4];

fn per_variant(f: impl Fn(Variant) -> f64) -> PerVariant {
    Variant::ALL.map(f)
}

/// Per program, medians over the rounds: runs per request, ns per run, ns per request.
#[derive(Clone, Copy, Debug)]
pub struct ProgramFigures {
    pub runs_per_request: f64,
    pub ns_per_run: f64,
    pub ns_per_request: f64,
}

/// The agent against the load generator in one fixed-rate round.
pub struct AccuracyRound {
    pub variant: Variant,
    pub requests: u64,
    pub server: u64,
    /// None when the load generator was not measured.
    pub client: Option<u64>,
    pub oha: (f64, f64),
    pub server_quantiles: (f64, f64),
    pub client_quantiles: (f64, f64),
}

impl AccuracyRound {
    fn equal(&self) -> bool {
        self.server == self.requests && self.client.is_none_or(|c| c == self.requests)
    }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The rounds fall on both sides of the goal: this run cannot tell.
    Inconclusive,
}

impl Verdict {
    fn of(met: bool) -> Self {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn key(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

pub struct Goal {
    pub name: &'static str,
    pub target: &'static str,
    pub measured: String,
    pub verdict: Verdict,
    /// By how much it is missed, when it is.
    pub miss: String,
}

/// A figure of a variant relative to no agent in the same round: the median over the rounds
/// and the lowest and highest round.
#[derive(Clone, Copy, Debug)]
pub struct Paired {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Paired {
    fn of(ratios: Vec<f64>) -> Self {
        let finite: Vec<f64> = ratios.into_iter().filter(|r| r.is_finite()).collect();
        Self {
            median: median(finite.clone()),
            min: finite.iter().copied().fold(f64::NAN, f64::min),
            max: finite.iter().copied().fold(f64::NAN, f64::max),
        }
    }

    /// Met when every round is at least `goal`, missed when none is.
    fn at_least(&self, goal: f64) -> Verdict {
        if self.min >= goal {
            Verdict::Met
        } else if self.max < goal {
            Verdict::Missed
        } else {
            Verdict::Inconclusive
        }
    }
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

/// `figure` of `variant` over no agent's, round by round.
fn paired<R>(
    rounds: &[R],
    variant: Variant,
    round_of: impl Fn(&R) -> (usize, Variant),
    figure: impl Fn(&R) -> f64,
) -> Paired {
    let of = |wanted: Variant, round: usize| {
        rounds
            .iter()
            .find(|r| round_of(r) == (round, wanted))
            .map(&figure)
    };
    let count = rounds.iter().map(|r| round_of(r).0 + 1).max().unwrap_or(0);
    Paired::of(
        (0..count)
            .filter_map(|round| Some(ratio(of(variant, round)?, of(Variant::NoAgent, round)?)))
            .collect(),
    )
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

    fn relative(&self, figures: &PerVariant, variant: Variant) -> f64 {
        ratio(figures[variant.index()], figures[Variant::NoAgent.index()])
    }

    fn goals(&self, variant: Variant) -> Vec<Goal> {
        let v = variant.index();
        let kept = self.throughput_ratio[v];
        let capacity = self.capacity_ratio[v];
        let floor = self.throughput_ratio[Variant::EmptyPrograms.index()];
        let (loss, floor_loss) = (1.0 - kept.median, 1.0 - floor.median);
        let bpf = self.bpf_ns_per_request[v];
        let cpu = self.cpu_ms_per_1k_saturation[v].max(self.cpu_ms_per_1k_fixed[v]);
        let rss = self.peak_rss_mib[v];
        let losses = &self.losses[v];
        let lost: i64 = losses.not_recorded.iter().map(|n| n.abs()).sum();
        let rounds: Vec<&AccuracyRound> = self
            .accuracy
            .iter()
            .filter(|r| r.variant == variant)
            .collect();
        let unequal = rounds.iter().filter(|r| !r.equal()).count();
        // The floor's loss is only a yardstick when every round lost something.
        let floor_measurable = floor.max < 1.0;
        vec![
            Goal {
                name: "throughput with the agent, of no agent's in the same round",
                target: ">= 97 %",
                measured: format!("{} (rounds {})", percent(kept.median), range(&kept)),
                verdict: kept.at_least(0.97),
                miss: format!("{:.1} points short", (0.97 - kept.median) * 100.0),
            },
            Goal {
                name: "nginx's requests per CPU second at saturation (the capacity the agent \
                       leaves it), of no agent's in the same round",
                target: ">= 97 %",
                measured: format!("{} (rounds {})", percent(capacity.median), range(&capacity)),
                verdict: capacity.at_least(0.97),
                miss: format!("{:.1} points short", (0.97 - capacity.median) * 100.0),
            },
            Goal {
                name: "throughput lost, against the empty programs' loss",
                target: "<= 1.5x",
                measured: format!(
                    "{} against {} (empty programs' rounds {})",
                    percent(loss),
                    percent(floor_loss),
                    range(&floor)
                ),
                verdict: if floor_measurable {
                    Verdict::of(loss <= 1.5 * floor_loss)
                } else {
                    Verdict::Inconclusive
                },
                miss: format!("{:.1}x the floor's loss", loss / floor_loss),
            },
            Goal {
                name: "BPF time per request, all programs",
                target: "<= 200 ns",
                measured: format!("{bpf:.0} ns"),
                verdict: Verdict::of(bpf <= 200.0),
                miss: format!("{:.1}x the goal", bpf / 200.0),
            },
            Goal {
                name: "agent CPU per 1,000 requests (the higher of saturation and fixed rate)",
                target: "<= 5 ms",
                measured: format!("{cpu:.3} ms"),
                verdict: Verdict::of(cpu <= 5.0),
                miss: format!("{:.3} ms over", cpu - 5.0),
            },
            Goal {
                name: "agent peak RSS",
                target: "<= 40 MiB",
                measured: format!("{rss:.1} MiB"),
                verdict: Verdict::of(rss <= 40.0),
                miss: format!("{:.1} MiB over", rss - 40.0),
            },
            Goal {
                name: "requests not recorded at saturation, and kernel drops",
                target: "0",
                measured: format!("{lost} not recorded, {}", drops_text(&losses.drops)),
                verdict: Verdict::of(lost == 0 && losses.drops.is_empty()),
                miss: format!("{lost} requests, {}", drops_text(&losses.drops)),
            },
            Goal {
                name: "agent's counts equal to the load generator's",
                target: "every round",
                measured: format!(
                    "{} of {} rounds equal",
                    rounds.len() - unequal,
                    rounds.len()
                ),
                verdict: Verdict::of(unequal == 0 && !rounds.is_empty()),
                miss: format!("{unequal} rounds differ"),
            },
        ]
    }

    pub fn json(&self, http: &Http) -> Value {
        let by_variant = |figures: &PerVariant| {
            let map: serde_json::Map<String, Value> = Variant::ALL
                .iter()
                .map(|v| (v.key().to_owned(), json!(finite(figures[v.index()]))))
                .collect();
            Value::Object(map)
        };
        let programs: serde_json::Map<String, Value> = Variant::ALL
            .iter()
            .map(|v| {
                let map: serde_json::Map<String, Value> = self.programs[v.index()]
                    .iter()
                    .map(|(name, f)| {
                        (
                            name.clone(),
                            json!({
                                "runs_per_request": finite(f.runs_per_request),
                                "ns_per_run": finite(f.ns_per_run),
                                "ns_per_request": finite(f.ns_per_request),
                            }),
                        )
                    })
                    .collect();
                (v.key().to_owned(), Value::Object(map))
            })
            .collect();
        let accuracy: Vec<Value> = self
            .accuracy
            .iter()
            .map(|r| {
                json!({
                    "variant": r.variant.key(),
                    "load_generator_requests": r.requests,
                    "agent_server_requests": r.server,
                    "agent_client_requests": r.client,
                    "load_generator_p50_s": r.oha.0,
                    "load_generator_p99_s": r.oha.1,
                    "agent_client_p50_s": finite(r.client_quantiles.0),
                    "agent_client_p99_s": finite(r.client_quantiles.1),
                    "agent_server_p50_s": finite(r.server_quantiles.0),
                    "agent_server_p99_s": finite(r.server_quantiles.1),
                })
            })
            .collect();
        let losses: serde_json::Map<String, Value> = RECORDING
            .iter()
            .map(|v| {
                let l = &self.losses[v.index()];
                (
                    v.key().to_owned(),
                    json!({
                        "saturation_requests_not_recorded_per_round": l.not_recorded,
                        "kernel_drops_by_reason": l.drops,
                        "requests_unanswered": l.unanswered,
                        "responses_unmatched": l.unmatched,
                    }),
                )
            })
            .collect();
        let goals: serde_json::Map<String, Value> = self
            .goals
            .iter()
            .map(|(v, goals)| {
                let list: Vec<Value> = goals
                    .iter()
                    .map(|g| {
                        json!({"goal": g.name, "target": g.target, "measured": g.measured,
                               "verdict": g.verdict.key()})
                    })
                    .collect();
                (v.key().to_owned(), Value::Array(list))
            })
            .collect();
        json!({
            "setup": {
                "rounds": http.rounds,
                "saturation": {"tool": "wrk", "threads": 1, "connections": http.connections,
                               "seconds": http.saturation.as_secs_f64()},
                "fixed_rate": {"tool": "oha", "requests_per_second": http.rate,
                               "requests": http.requests, "connections": http.rate_connections,
                               "rate_lowered": http.rate_lowered},
                "load_generator_cpus": http.load_cpus,
                "nginx_worker_pinned_to_cpu_1": http.server_pinned,
                "agent_duration_bounds_s": http.bounds,
                "hooks": http.hooks.iter().map(|(h, k)| format!("{h}={k}")).collect::<Vec<_>>(),
            },
            "throughput_requests_per_second": by_variant(&self.throughput),
            "throughput_vs_no_agent_same_round": paired_json(&self.throughput_ratio),
            "nginx_requests_per_cpu_second_vs_no_agent_same_round":
                paired_json(&self.capacity_ratio),
            "nginx_cpu_us_per_request_saturation": by_variant(&self.server_cpu_us_saturation),
            "nginx_cpu_us_per_request_fixed_rate": by_variant(&self.server_cpu_us_fixed),
            "fixed_rate_p50_vs_no_agent_same_round": paired_json(&self.p50_ratio),
            "fixed_rate_p99_vs_no_agent_same_round": paired_json(&self.p99_ratio),
            "rounds": rounds_json(http),
            "fixed_rate_p50_s": by_variant(&self.p50),
            "fixed_rate_p99_s": by_variant(&self.p99),
            "fixed_rate_p50_vs_no_agent": by_variant(&per_variant(|v| self.relative(&self.p50, v))),
            "fixed_rate_p99_vs_no_agent": by_variant(&per_variant(|v| self.relative(&self.p99, v))),
            "bpf_ns_per_request": by_variant(&self.bpf_ns_per_request),
            "bpf_programs": programs,
            "agent_cpu_ms_per_1000_requests_saturation":
                by_variant(&self.cpu_ms_per_1k_saturation),
            "agent_cpu_ms_per_1000_requests_fixed_rate": by_variant(&self.cpu_ms_per_1k_fixed),
            "agent_peak_rss_mib": by_variant(&self.peak_rss_mib),
            "agent_refresh_ms_mean": by_variant(&self.refresh_ms),
            "losses": losses,
            "getppid_slowdown": by_variant(&self.getppid_slowdown),
            "accuracy": accuracy,
            "goals": goals,
            "profiles": profiles_json(&http.profiles),
        })
    }
}

/// The BPF categories of a profile.
const BPF_CATEGORIES: [Category; 3] = [Category::Program, Category::Helper, Category::Dispatch];

fn bpf_share(process: &ProcessProfile) -> f64 {
    BPF_CATEGORIES.iter().map(|c| process.share(*c)).sum()
}

fn profiles_json(profiles: &[(Variant, Result<Profile, String>)]) -> Value {
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

/// `0 dropped`, or the drops by reason: `12 dropped (cpu_time_full 12)`.
fn drops_text(drops: &BTreeMap<String, f64>) -> String {
    if drops.is_empty() {
        return "0 dropped".to_owned();
    }
    let total: f64 = drops.values().sum();
    let reasons: Vec<String> = drops
        .iter()
        .map(|(reason, n)| format!("{reason} {n:.0}"))
        .collect();
    format!("{total:.0} dropped ({})", reasons.join(", "))
}

fn paired_json(paired: &[Paired; 4]) -> Value {
    let map: serde_json::Map<String, Value> = Variant::ALL
        .iter()
        .filter(|v| **v != Variant::NoAgent)
        .map(|v| {
            let p = paired[v.index()];
            (
                v.key().to_owned(),
                json!({"median": finite(p.median), "min": finite(p.min), "max": finite(p.max)}),
            )
        })
        .collect();
    Value::Object(map)
}

/// Every round's raw figures, for whoever wants another statistic.
fn rounds_json(http: &Http) -> Value {
    let saturation: Vec<Value> = http
        .saturation_rounds
        .iter()
        .map(|r| {
            json!({
                "round": r.round,
                "variant": r.variant.key(),
                "requests_per_second": r.wrk.requests_per_second,
                "wrk_requests": r.wrk.requests,
                "wrk_errors": r.wrk.errors,
                "nginx_served": r.served,
                "nginx_cpu_s": r.server_cpu_seconds,
                "agent_recorded": r.counts.as_ref().map(|c| c.server),
                "agent_cpu_s": r.cost.as_ref().map(|c| c.cpu_seconds),
            })
        })
        .collect();
    let fixed: Vec<Value> = http
        .fixed_rounds
        .iter()
        .map(|r| {
            let bpf_ns: f64 = r.programs.values().map(|p| p.time_ns).sum();
            json!({
                "round": r.round,
                "variant": r.variant.key(),
                "responses": r.oha.responses,
                "errors": r.oha.errors,
                "requests_per_second": r.oha.requests_per_second,
                "p50_s": r.oha.p50,
                "p99_s": r.oha.p99,
                "bpf_ns": bpf_ns,
                "nginx_cpu_s": r.server_cpu_seconds,
                "agent_cpu_s": r.cost.as_ref().map(|c| c.cpu_seconds),
            })
        })
        .collect();
    json!({"saturation": saturation, "fixed_rate": fixed})
}

/// JSON has no NaN: absent figures are null.
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

fn us(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("{:.1}", seconds * 1e6)
    } else {
        "–".to_owned()
    }
}

fn percent(value: f64) -> String {
    if value.is_finite() {
        // `+ 0.0`: an empty f64 sum is -0.0, which would print as `-0.0 %`.
        format!("{:.1} %", value * 100.0 + 0.0)
    } else {
        "–".to_owned()
    }
}

fn number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "–".to_owned()
    }
}

/// The relative change from no agent: `+3.2 %`.
fn change(value: f64) -> String {
    if value.is_finite() {
        format!("{:+.1} %", (value - 1.0) * 100.0)
    } else {
        "–".to_owned()
    }
}

/// `97.0-101.2 %`: the lowest and highest round.
fn range(paired: &Paired) -> String {
    if paired.min.is_finite() {
        format!("{:.1}-{:.1} %", paired.min * 100.0, paired.max * 100.0)
    } else {
        "–".to_owned()
    }
}

/// `98.2 % (97.0-101.2 %)`.
fn paired_text(paired: &Paired) -> String {
    format!("{} ({})", percent(paired.median), range(paired))
}

/// `+3.2 % (-1.0 to +8.4 %)`.
fn change_text(paired: &Paired) -> String {
    if !paired.median.is_finite() {
        return "–".to_owned();
    }
    format!(
        "{} ({:+.1} to {:+.1} %)",
        change(paired.median),
        (paired.min - 1.0) * 100.0,
        (paired.max - 1.0) * 100.0
    )
}

/// A table row: the figure, its goal, and one cell per column.
fn row(figure: &str, goal: &str, cell: impl Fn(Variant) -> String) -> String {
    let cells: Vec<String> = COLUMNS.iter().map(|&v| cell(v)).collect();
    format!("| {figure} | {goal} | {} |\n", cells.join(" | "))
}

pub fn markdown(http: &Http, summary: &Summary, machine: &str) -> String {
    let s = summary;
    let i = |v: Variant| v.index();
    let agent_only = |v: Variant, text: String| {
        if v == Variant::NoAgent {
            String::new()
        } else {
            text
        }
    };
    let recording_only = |v: Variant, text: String| {
        if v.records() { text } else { String::new() }
    };
    let pinning = if http.server_pinned {
        format!(
            "nginx's worker pinned to CPU 1 (`worker_cpu_affinity`), the load generator to CPU {} \
             (taskset), the agent not pinned",
            http.load_cpus
        )
    } else {
        format!(
            "one CPU: nothing pinned apart from the load generator (CPU {})",
            http.load_cpus
        )
    };
    let mut text = format!(
        "### HTTP server under load: nginx with and without the agent\n\n\
         `cargo xtask bench` ({machine}). nginx, one worker, answers `GET {ROUTE}` with a \
         13-byte body (`return 200`) over keep-alive connections; {pinning}. Four variants run \
         interleaved, {rounds} rounds each, the order rotated every round: no agent; the agent \
         as deployed (`monitor`, 1 s refresh); the agent with empty programs on exactly the \
         hooks it uses (`--empty-programs`: {hooks}), the floor of the hook choice; and the \
         agent with the load generators excluded (`--exclude-comm {LOAD_GENERATORS}`: the \
         kernel compares the name of the thread that connects, and oha's workers have a name \
         of their own), which measures nginx only, as when clients are on other hosts. With the load generator on the same \
         host, `monitor` measures both ends of every request: nginx as a server, the load \
         generator as a client. Medians over the rounds.\n\n\
         - Saturation: wrk, 1 thread, {conns} connections, {sat} s per round after a 1 s \
         warm-up. No BPF statistics (they cost time per program run). nginx's CPU time is \
         its worker's CPU time in the run (its process CPU-time clock), which includes \
         the programs that run in its syscalls; its requests per CPU second are the capacity \
         the agent leaves it, where the throughput also moves with what the agent and the \
         load generator's measured end take from the load generator's CPU.\n\
         - Fixed rate: oha, exactly {requests} requests at {rate} req/s{lowered} over {rconns} \
         connections, latency from each request's start (no coordinated-omission correction). \
         `--bpf-stats` on for every agent: BPF time per request is the run time of all the \
         agent's programs (from `kernel.bpf_stats_enabled`) divided by the requests; it \
         includes what the programs did for everything else on the host meanwhile.\n\n\
         | figure | goal | {} |\n|---|---|---|---|---|---|\n",
        COLUMNS.map(Variant::name).join(" | "),
        rounds = http.rounds,
        hooks = http
            .hooks
            .iter()
            .map(|(hook, kind)| format!("{hook} ({kind})"))
            .collect::<Vec<_>>()
            .join(", "),
        conns = http.connections,
        sat = http.saturation.as_secs(),
        requests = http.requests,
        rate = http.rate,
        lowered = if http.rate_lowered {
            " (lowered from 10,000 to half the throughput without the agent at saturation: \
             this host could not serve 10,000)"
        } else {
            ""
        },
        rconns = http.rate_connections,
    );
    text.push_str(&row("throughput at saturation, req/s", "", |v| {
        number(s.throughput[i(v)], 0)
    }));
    text.push_str(&row(
        "**throughput, of no agent's in the same round** (median, lowest-highest round)",
        ">= 97 %",
        |v| agent_only(v, paired_text(&s.throughput_ratio[i(v)])),
    ));
    text.push_str(&row("nginx CPU per request at saturation, µs", "", |v| {
        number(s.server_cpu_us_saturation[i(v)], 2)
    }));
    text.push_str(&row(
        "**nginx's requests per CPU second, of no agent's in the same round** (the capacity \
         left to it)",
        ">= 97 %",
        |v| agent_only(v, paired_text(&s.capacity_ratio[i(v)])),
    ));
    text.push_str(&row(
        &format!("p50 latency at {} req/s, µs", http.rate),
        "",
        |v| us(s.p50[i(v)]),
    ));
    text.push_str(&row("p50 against no agent's in the same round", "", |v| {
        agent_only(v, change_text(&s.p50_ratio[i(v)]))
    }));
    text.push_str(&row(
        &format!("p99 latency at {} req/s, µs", http.rate),
        "",
        |v| us(s.p99[i(v)]),
    ));
    text.push_str(&row("p99 against no agent's in the same round", "", |v| {
        agent_only(v, change_text(&s.p99_ratio[i(v)]))
    }));
    text.push_str(&row(
        &format!(
            "nginx CPU per request at {} req/s (BPF statistics on), µs",
            http.rate
        ),
        "",
        |v| number(s.server_cpu_us_fixed[i(v)], 2),
    ));
    text.push_str(&row(
        "**BPF ns per request, all programs**",
        "<= 200",
        |v| agent_only(v, number(s.bpf_ns_per_request[i(v)], 0)),
    ));
    text.push_str(&row(
        "agent CPU per 1,000 requests, at saturation, ms",
        "<= 5",
        |v| agent_only(v, number(s.cpu_ms_per_1k_saturation[i(v)], 3)),
    ));
    text.push_str(&row(
        &format!("agent CPU per 1,000 requests, at {} req/s, ms", http.rate),
        "<= 5",
        |v| agent_only(v, number(s.cpu_ms_per_1k_fixed[i(v)], 3)),
    ));
    text.push_str(&row(
        "agent peak RSS (VmHWM, highest round), MiB",
        "<= 40",
        |v| agent_only(v, number(s.peak_rss_mib[i(v)], 1)),
    ));
    text.push_str(&row(
        &format!(
            "refresh (maps read into the model), mean at {} req/s, ms",
            http.rate
        ),
        "",
        |v| agent_only(v, number(s.refresh_ms[i(v)], 3)),
    ));
    text.push_str(&row(
        "requests nginx served that the agent did not record, saturation, per round",
        "0",
        |v| recording_only(v, format!("{:?}", s.losses[i(v)].not_recorded)),
    ));
    text.push_str(&row(
        "kernel drops (HTTP and scheduler maps), all rounds",
        "0",
        |v| recording_only(v, drops_text(&s.losses[i(v)].drops)),
    ));
    text.push_str(&row("getppid loop slowdown (section below)", "", |v| {
        if matches!(v, Variant::Monitor | Variant::EmptyPrograms) {
            percent(s.getppid_slowdown[i(v)])
        } else {
            String::new()
        }
    }));

    for (variant, goals) in &s.goals {
        text.push_str(&format!("\nGoals, {}:\n\n", variant.name()));
        for goal in goals {
            text.push_str(&format!(
                "- {} {}: {} (goal {}){}\n",
                match goal.verdict {
                    Verdict::Met => "met:",
                    Verdict::Missed => "**missed**:",
                    Verdict::Inconclusive => "inconclusive:",
                },
                goal.name,
                goal.measured,
                goal.target,
                if goal.verdict == Verdict::Missed {
                    format!(", {}", goal.miss)
                } else {
                    String::new()
                }
            ));
        }
    }

    text.push_str(&programs_markdown(http, s));
    text.push_str(&profile_markdown(http));
    text.push_str(&accuracy_markdown(http, s));
    text
}

fn programs_markdown(http: &Http, s: &Summary) -> String {
    let shown = [
        Variant::Monitor,
        Variant::ServerOnly,
        Variant::EmptyPrograms,
    ];
    let names = shown.map(Variant::name).join(" / ");
    let mut text = format!(
        "\nBPF time per hook at {} req/s (medians; per request: the program's run time divided \
         by the requests; runs per request count every run on the host):\n\n\
         | hook | runs per request | ns per run: {names} | ns per request: {names} |\n\
         |---|---|---|---|\n",
        http.rate
    );
    let mut hooks: Vec<&String> = shown
        .iter()
        .flat_map(|v| s.programs[v.index()].keys())
        .collect();
    hooks.sort();
    hooks.dedup();
    for hook in hooks {
        let figure = |v: Variant, f: fn(&ProgramFigures) -> f64, decimals: usize| {
            s.programs[v.index()]
                .get(hook)
                .map_or("–".to_owned(), |p| number(f(p), decimals))
        };
        let per = |f: fn(&ProgramFigures) -> f64| shown.map(|v| figure(v, f, 1)).join(" / ");
        text.push_str(&format!(
            "| `{hook}` | {} | {} | {} |\n",
            figure(Variant::Monitor, |p| p.runs_per_request, 2),
            per(|p| p.ns_per_run),
            per(|p| p.ns_per_request),
        ));
    }
    text
}

fn profile_markdown(http: &Http) -> String {
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

fn accuracy_markdown(http: &Http, s: &Summary) -> String {
    let step = http
        .bounds
        .get(1)
        .zip(http.bounds.first())
        .map_or(f64::NAN, |(x, y)| x / y - 1.0);
    let mut text = format!(
        "\n#### Accuracy: the agent against the load generator\n\n\
         The agent ran with {n} duration buckets from {lo} µs to {hi} µs, each bound {step:.1} % \
         above the previous (placed by a pilot run around this host's latencies; \
         `--duration-buckets` takes at most {n}). Its percentiles are interpolated within the \
         bucket as Prometheus' `histogram_quantile` does, so they are within one bucket \
         ({step:.1} %) of the true value; the load generator's are exact. The client side is \
         the interval the load generator measures (from the write of the request to the read \
         of the response's end, seen in the kernel rather than in the load generator's event \
         loop); the server side is nginx's own part (from the read of the request to the write \
         of the response).\n\n\
         | variant, round | requests (oha) | agent: server | agent: client | p50 oha / client / server, µs | p99 oha / client / server, µs |\n\
         |---|---|---|---|---|---|\n",
        n = http.bounds.len(),
        lo = us(http.bounds.first().copied().unwrap_or(f64::NAN)),
        hi = us(http.bounds.last().copied().unwrap_or(f64::NAN)),
        step = step * 100.0,
    );
    let mut round_of: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &s.accuracy {
        let round = round_of.entry(r.variant.name()).or_default();
        *round += 1;
        let mark = |n: u64| {
            if n == r.requests {
                format!("{n} (equal)")
            } else {
                format!("**{n}** ({:+})", n as i64 - r.requests as i64)
            }
        };
        text.push_str(&format!(
            "| {} {} | {} | {} | {} | {} / {} / {} | {} / {} / {} |\n",
            r.variant.name(),
            round,
            r.requests,
            mark(r.server),
            r.client.map_or("not measured".to_owned(), mark),
            us(r.oha.0),
            us(r.client_quantiles.0),
            us(r.server_quantiles.0),
            us(r.oha.1),
            us(r.client_quantiles.1),
            us(r.server_quantiles.1),
        ));
    }
    let losses = &s.losses[Variant::Monitor.index()];
    text.push_str(&format!(
        "\nAt saturation the agent's count is compared with nginx's own (`stub_status`): wrk \
         stops on a deadline and does not count the requests it leaves in flight. With \
         `monitor`, requests counted as unanswered (closed before a response) in all rounds: \
         {}; responses without a request: {}.\n",
        losses.unanswered, losses.unmatched
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_each_round_with_no_agent_in_the_same_round() {
        // (round, variant, figure)
        let rounds = [
            (0, Variant::NoAgent, 100.0),
            (0, Variant::Monitor, 90.0),
            (1, Variant::Monitor, 50.0),
            (1, Variant::NoAgent, 50.0),
            (2, Variant::NoAgent, 200.0),
            (2, Variant::Monitor, 196.0),
        ];
        let p = paired(&rounds, Variant::Monitor, |r| (r.0, r.1), |r| r.2);
        assert_eq!((p.median, p.min, p.max), (0.98, 0.9, 1.0));
        assert_eq!(p.at_least(0.97), Verdict::Inconclusive);
        assert_eq!(p.at_least(0.85), Verdict::Met);
        assert_eq!(p.at_least(1.01), Verdict::Missed);
    }

    #[test]
    fn real_and_empty_programs_share_their_hook() {
        assert_eq!(hook_of("sys_exit_btf"), "sys_exit");
        assert_eq!(hook_of("sched_switch_empty"), "sched_switch");
        assert_eq!(hook_of("cpu_clock_tick"), "cpu_clock_tick");
        assert_eq!(hook_of("cpu_clock_tick_empty"), "cpu_clock_tick");
    }
}
