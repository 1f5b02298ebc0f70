//! The agent's userspace hot paths, on a synthetic host whose scrape has 10,000 samples:
//! folding a snapshot of the kernel maps into the model (each refresh), rendering `/metrics`
//! (each scrape), and templating a route (each route announcement).
//!
//! `cargo bench -p monitor --bench userspace` (`cargo xtask bench` runs it and copies the
//! figures into BENCHMARKS.md). Reading the real maps needs root and loaded programs: that part
//! is measured on the running agent (`monitor_refresh_duration_seconds`) by `cargo xtask bench`.
//!
//! Allocations are counted by a global allocator that wraps the system's; the counts of one
//! call of each measured function go to `$CARGO_TARGET_TMPDIR/userspace-allocations.json`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use monitor::{
    collect::{
        MapUsage,
        http::{DurationCounts, HttpSnapshot, RouteAnnouncement},
        process::{ProcessIdentity, Service},
        sched::{ProcessSample, RunqCounts, SchedSnapshot},
        usage,
    },
    export::metrics::{Exposition, render},
    model::{
        http::{HttpFacts, HttpLedger},
        processes::{ProcessFacts, ProcessLedger},
        timing::{REFRESH_BOUNDS, Timings},
    },
    probes::{AttachedProgram, HookKind, ProgramStats},
};
use monitor_common::{
    http::{DurationKey, event_kind, method, role, template_route},
    sched::{COMM_LEN, ProcessMeta, RUNQ_BUCKETS},
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes allocated by one call of `f`.
fn allocations_of<T>(f: impl FnOnce() -> T) -> (u64, u64) {
    let (count, bytes) = (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed));
    black_box(f());
    (
        ALLOCATIONS.load(Relaxed) - count,
        ALLOCATED_BYTES.load(Relaxed) - bytes,
    )
}

/// Samples (lines that are not comments) a scrape of the synthetic host has.
const TARGET_SAMPLES: usize = 10_000;
/// HTTP servers, each its own service, and the routes each serves: 500 duration histograms of
/// the default 14 buckets, 17 samples each.
const HTTP_SERVICES: u32 = 50;
const ROUTES_PER_SERVICE: u32 = 10;
const DEFAULT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Services the (many) other processes belong to: one run-queue histogram each.
const PROCESS_SERVICES: u32 = 10;
const FIRST_PROCESS: u32 = 10_000;

struct Host;

impl HttpFacts for Host {
    fn is_alive(&self, _tgid: u32) -> bool {
        true
    }
    fn identity(&self, tgid: u32) -> ProcessIdentity {
        let name = format!("web{tgid}");
        ProcessIdentity {
            executable: name.clone(),
            service: Service::named(name),
            incomplete: false,
        }
    }
}

impl ProcessFacts for Host {
    fn is_alive(&self, _tgid: u32) -> bool {
        true
    }
    fn identify(&self, tgid: u32, _sample: &ProcessSample) -> ProcessIdentity {
        ProcessIdentity {
            executable: format!("worker{}", tgid % PROCESS_SERVICES),
            service: Service::named(format!("svc{}", tgid % PROCESS_SERVICES)),
            incomplete: false,
        }
    }
    fn exec_since_named(&self, _tgid: u32) -> bool {
        false
    }
}

fn route_path(route: u32) -> String {
    format!("/api/v1/resource{route}/12345")
}

/// What one refresh reads from the HTTP maps: every (process, route) with some requests.
fn http_snapshot() -> HttpSnapshot {
    let mut snapshot = HttpSnapshot::default();
    for tgid in 1..=HTTP_SERVICES {
        for route in 0..ROUTES_PER_SERVICE {
            let path = route_path(route);
            let key = DurationKey {
                tgid,
                status: 200,
                method: method::GET,
                role: role::SERVER,
                route: template_route(path.as_bytes()).hash,
            };
            let mut counts = DurationCounts::default();
            for (i, bucket) in counts.buckets.iter_mut().take(15).enumerate() {
                *bucket = u64::from(tgid + route) * (i as u64 + 1);
            }
            counts.sum_ns = counts.count() * 3_000_000;
            snapshot.durations.push((key, counts));
            snapshot.announcements.push(RouteAnnouncement {
                tgid,
                route: key.route,
                kind: event_kind::TEMPLATE,
                path: path.into_bytes(),
            });
        }
    }
    snapshot
}

/// What one refresh reads from the scheduler maps: `processes` live processes.
fn sched_snapshot(processes: u32) -> SchedSnapshot {
    let mut snapshot = SchedSnapshot::default();
    for tgid in FIRST_PROCESS..FIRST_PROCESS + processes {
        let mut comm = [0u8; COMM_LEN];
        let name = format!("worker{}", tgid % PROCESS_SERVICES);
        comm[..name.len()].copy_from_slice(name.as_bytes());
        let mut runq = RunqCounts::default();
        runq.buckets[tgid as usize % RUNQ_BUCKETS] = 3;
        runq.sum_ns = 12_000;
        snapshot.processes.insert(
            tgid,
            ProcessSample {
                cpu_ns: u64::from(tgid) * 1_000_003,
                runq,
                meta: Some(ProcessMeta {
                    comm,
                    exit_ns: 0,
                    from_exec: 1,
                    forked_from: 0,
                }),
            },
        );
    }
    snapshot.maps = vec![
        usage("CPU_TIME", processes as usize, 16_384),
        usage("RUNQ_LATENCY", processes as usize, 16_384),
        usage("PROCESS_META", processes as usize, 16_384),
    ];
    snapshot
}

fn attached() -> Vec<AttachedProgram> {
    let mut attached: Vec<AttachedProgram> = [
        ("sched_switch", "sched_switch_btf"),
        ("sched_wakeup", "sched_wakeup_btf"),
        ("sched_wakeup_new", "sched_wakeup_new_btf"),
        ("sched_process_exec", "sched_process_exec_btf"),
        ("sched_process_exit", "sched_process_exit_btf"),
        ("sys_exit", "sys_exit_btf"),
    ]
    .into_iter()
    .map(|(hook, program)| AttachedProgram {
        hook,
        kind: HookKind::TpBtf,
        program,
    })
    .collect();
    attached.push(AttachedProgram {
        hook: "cpu_clock",
        kind: HookKind::PerfEvent,
        program: "cpu_clock_tick",
    });
    attached
}

/// The model of the synthetic host after a few refreshes, and what a scrape shows of it.
struct Model {
    http: HttpLedger,
    http_snapshot: HttpSnapshot,
    processes: ProcessLedger,
    sched_snapshot: SchedSnapshot,
    attached: Vec<AttachedProgram>,
    stats: Vec<ProgramStats>,
    http_maps: Vec<MapUsage>,
    refreshes: Timings,
}

impl Model {
    fn new(processes: u32) -> Self {
        let grace = Duration::from_secs(300);
        let mut http = HttpLedger::new(grace, 200, 100);
        let mut http_snapshot = http_snapshot();
        http.apply(&http_snapshot, &Host, Instant::now());
        // Routes are announced once; the refreshes after read the histograms only.
        http_snapshot.announcements.clear();
        let mut ledger = ProcessLedger::new(grace, 1000);
        let sched_snapshot = sched_snapshot(processes);
        ledger.apply(&sched_snapshot, &Host, Instant::now(), 0);
        let attached = attached();
        let stats = attached
            .iter()
            .map(|program| ProgramStats {
                program: program.program,
                run_time_ns: 123_456_789,
                run_count: 1_234_567,
            })
            .collect();
        let mut refreshes = Timings::new(&REFRESH_BOUNDS);
        refreshes.observe(Duration::from_micros(800));
        Self {
            http,
            http_snapshot,
            processes: ledger,
            sched_snapshot,
            attached,
            stats,
            http_maps: vec![usage("CONNECTIONS", 64, 65_536)],
            refreshes,
        }
    }

    fn render(&self) -> String {
        render(&Exposition {
            ledger: &self.processes,
            snapshot: &self.sched_snapshot,
            http: &self.http,
            duration_bounds: &DEFAULT_BUCKETS,
            http_map_usage: &self.http_maps,
            in_flight_at_exit: Default::default(),
            attached: &self.attached,
            unavailable: &[],
            program_stats: &self.stats,
            refresh_errors_total: 0,
            processes_named_at_exec_total: 0,
            refresh_durations: &self.refreshes,
            tls_libraries: 1,
        })
    }
}

fn samples(text: &str) -> usize {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// The host with as many processes as make its scrape exactly `TARGET_SAMPLES` samples long
/// (each process adds one CPU-time sample; their services' run-queue histograms are there
/// from the first `PROCESS_SERVICES` processes on).
fn host_of_10k_samples() -> Model {
    let base = samples(&Model::new(PROCESS_SERVICES).render());
    let processes = PROCESS_SERVICES + (TARGET_SAMPLES - base) as u32;
    let model = Model::new(processes);
    assert_eq!(samples(&model.render()), TARGET_SAMPLES);
    model
}

fn benches(c: &mut Criterion) {
    let mut model = host_of_10k_samples();
    let processes = model.sched_snapshot.processes.len();
    let mut counts = BTreeMap::new();

    let mut group = c.benchmark_group("model");
    group.bench_function("http_apply_500_series", |b| {
        b.iter(|| {
            model
                .http
                .apply(black_box(&model.http_snapshot), &Host, Instant::now())
        })
    });
    group.bench_function("processes_apply", |b| {
        b.iter(|| {
            model
                .processes
                .apply(black_box(&model.sched_snapshot), &Host, Instant::now(), 0)
        })
    });
    group.finish();
    counts.insert(
        "model/http_apply_500_series".to_owned(),
        allocations_of(|| {
            model
                .http
                .apply(&model.http_snapshot, &Host, Instant::now())
        }),
    );
    counts.insert(
        "model/processes_apply".to_owned(),
        allocations_of(|| {
            model
                .processes
                .apply(&model.sched_snapshot, &Host, Instant::now(), 0)
        }),
    );

    let mut group = c.benchmark_group("render");
    group.bench_function("metrics_10000_series", |b| b.iter(|| model.render()));
    group.finish();
    counts.insert(
        "render/metrics_10000_series".to_owned(),
        allocations_of(|| model.render()),
    );
    let output_bytes = model.render().len();

    let mut group = c.benchmark_group("route_template");
    for (name, path) in [
        ("root", "/"),
        ("ids", "/users/12345/orders/987"),
        (
            "uuid_query",
            "/api/v1/items/550e8400-e29b-41d4-a716-446655440000?page=2",
        ),
        (
            "long",
            "/docs/reference/configuration/server/listeners/options/timeouts/keep-alive.html",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| template_route(black_box(path.as_bytes())))
        });
        counts.insert(
            format!("route_template/{name}"),
            allocations_of(|| template_route(path.as_bytes())),
        );
    }
    group.finish();

    write_allocations(&counts, processes, output_bytes);
}

fn write_allocations(counts: &BTreeMap<String, (u64, u64)>, processes: usize, output_bytes: usize) {
    let entries: Vec<String> = counts
        .iter()
        .map(|(id, (allocations, bytes))| {
            format!("  \"{id}\": {{\"allocations\": {allocations}, \"bytes\": {bytes}}}")
        })
        .collect();
    let text = format!(
        "{{\n  \"host\": {{\"samples\": {TARGET_SAMPLES}, \"http_series\": {}, \"processes\": \
         {processes}, \"exposition_bytes\": {output_bytes}}},\n{}\n}}\n",
        HTTP_SERVICES * ROUTES_PER_SERVICE,
        entries.join(",\n")
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("userspace-allocations.json");
    if let Err(error) = std::fs::write(&path, text) {
        eprintln!("writing {}: {error}", path.display());
    }
}

criterion_group!(userspace, benches);
criterion_main!(userspace);
