//! Per-process CPU series and per-service run-queue histograms, built from successive kernel
//! snapshots.
//!
//! The kernel maps hold running totals per process id. This ledger turns them into Prometheus
//! counters that never go backwards: it adds the *increase* since the previous snapshot to the
//! series the process currently belongs to. That keeps every series monotonic when a process
//! execs under a new name, when its map entries are freed after it exits, and when a pid is
//! reused.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use monitor_common::sched::COMM_LEN;

use crate::collect::{
    process::{ProcessIdentity, Service},
    sched::{ProcessSample, RunqCounts, SchedSnapshot},
};

/// Time after the kernel reported an exit before the process's maps are read for the last
/// time: its last context switch (the exiting task's own) comes after the exit event.
const EXIT_SETTLE_NS: u64 = 500_000_000;

/// Names of retired processes kept at most (a pid is reused only after the kernel's pid
/// space wraps, so a recent name is still the right one).
const RETIRED_NAMES: usize = 16_384;

/// How long after a process is retired a sample of its pid may still be its own last slice,
/// flushed late by a CPU (seen at one of the next refreshes); later, the pid is a new process.
const LATE_FLUSH_WINDOW: Duration = Duration::from_secs(10);

/// Times a process named from failed reads (`ProcessIdentity::incomplete`) is asked for its
/// name again: after 1, 2, 4, ... 32 refreshes, about a minute at a refresh a second. Enough
/// for descriptors to come back or a stuck procfs reader to return; bounded, because a read
/// refused for good (EACCES without `CAP_SYS_PTRACE`) or a process stuck for good would
/// otherwise be read again at every refresh, a stuck one for 2 s each time.
const REASKS: u32 = 6;

/// What the ledger asks procfs; a trait so the ledger can be tested from fixtures.
pub trait ProcessFacts {
    fn is_alive(&self, tgid: u32) -> bool;
    /// Its `incomplete` says whether asking again later may name the process better.
    fn identify(&self, tgid: u32, sample: &ProcessSample) -> ProcessIdentity;
    /// Whether the process exec'd since `identify` last named it: a name read at an exec is
    /// waiting for it.
    fn exec_since_named(&self, tgid: u32) -> bool;
}

/// One `process_cpu_time_seconds_total` series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSeries {
    /// `None` for the series that exited processes fold into beyond the budget
    /// (`process_pid="__overflow__"`).
    pub pid: Option<u32>,
    pub executable: String,
    pub service: Service,
    pub cpu_ns: u64,
    /// The increase of `cpu_ns` that scrapes have seen: a fold adds only the rest.
    pub shown: Shown,
}

/// What `/metrics` showed of a series: its value the first and the last time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    first_cpu_ns: Option<u64>,
    last_cpu_ns: u64,
}

impl Shown {
    fn note(&mut self, cpu_ns: u64) {
        self.first_cpu_ns.get_or_insert(cpu_ns);
        self.last_cpu_ns = cpu_ns;
    }

    /// The increase `rate()` and `increase()` have counted in the series: from its first
    /// exposure to its last.
    fn counted_increase(&self) -> u64 {
        self.first_cpu_ns
            .map_or(0, |first| self.last_cpu_ns.saturating_sub(first))
    }
}

impl ProcessSeries {
    /// The name this series was given.
    fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            executable: self.executable.clone(),
            service: self.service.clone(),
            // Whether it is asked for again is `Tracked::reask`'s business.
            incomplete: false,
        }
    }
}

struct Tracked {
    series: ProcessSeries,
    /// The kernel's name when the series was named; a change means the process exec'd.
    kernel_comm: Option<[u8; COMM_LEN]>,
    last_cpu_ns: u64,
    last_runq: RunqCounts,
    /// While its name is from failed reads, and asks are left: when to ask again.
    reask: Option<Reask>,
}

#[derive(Clone, Copy, Debug)]
struct Reask {
    /// Refreshes until the next ask.
    wait: u32,
    asked: u32,
}

impl Reask {
    fn after(identity: &ProcessIdentity) -> Option<Self> {
        identity.incomplete.then_some(Self { wait: 1, asked: 0 })
    }
}

impl Tracked {
    /// Counts a refresh of a process named from failed reads; true when its name is to be
    /// asked for again (after 1, 2, 4, ... refreshes, `REASKS` times).
    fn reask_due(&mut self) -> bool {
        let Some(reask) = &mut self.reask else {
            return false;
        };
        reask.wait -= 1;
        if reask.wait > 0 {
            return false;
        }
        reask.asked += 1;
        reask.wait = 1 << reask.asked;
        if reask.asked >= REASKS {
            self.reask = None;
        }
        true
    }
}

/// A retired process's name, kept for counts of it read late.
struct Retired {
    identity: ProcessIdentity,
    kernel_comm: Option<[u8; COMM_LEN]>,
    at: Instant,
}

struct ServiceRunq {
    counts: RunqCounts,
    updated: Instant,
}

/// Run-queue histograms (one per service) kept at most. Hosts run tens to hundreds of
/// services, and a CI host starting a container every second has some 300 within the default
/// grace; but a service name is the user's to choose (`OTEL_SERVICE_NAME` read at each exec),
/// so a loop of short processes would otherwise keep one per exec for the grace period.
/// Beyond, the least recently updated go first (see `super::evict_least_recent`).
pub const RUNQ_SERVICES_MAX: usize = 4096;

/// Folded series kept at least, whatever `--exited-process-budget`: a budget of zero folds
/// every exited process.
const MIN_FOLDED_BUDGET: usize = 100;

pub struct ProcessLedger {
    grace: Duration,
    live: HashMap<u32, Tracked>,
    /// Series of processes that exited (or exec'd under another name), kept for `grace`.
    ended: Vec<(ProcessSeries, Instant)>,
    /// Series of `ended` kept at most; the oldest beyond fold into `folded`.
    ended_budget: usize,
    /// One series per executable and service for the exited processes beyond the budget, so
    /// that sums by service stay whole; kept for `grace` after the last fold, and at most
    /// `ended_budget` of them, or `MIN_FOLDED_BUDGET` (the least recently folded go first).
    folded: HashMap<(String, Service), (ProcessSeries, Instant)>,
    folded_total: u64,
    /// Names of retired processes, for counts of theirs read after they were retired (an
    /// HTTP route learnt a refresh later); kept for `grace`, at most `RETIRED_NAMES`.
    retired_names: HashMap<u32, Retired>,
    /// Histograms per service, kept for `grace` after their last update, at most
    /// `RUNQ_SERVICES_MAX` of services without a live process.
    runq: BTreeMap<String, ServiceRunq>,
    runq_evicted: u64,
    retired_total: u64,
}

impl ProcessLedger {
    /// A ledger that keeps exited processes' series for `grace`, at most `ended_budget` of them.
    pub fn new(grace: Duration, ended_budget: usize) -> Self {
        Self {
            grace,
            live: HashMap::new(),
            ended: Vec::new(),
            ended_budget,
            folded: HashMap::new(),
            folded_total: 0,
            retired_names: HashMap::new(),
            runq: BTreeMap::new(),
            runq_evicted: 0,
            retired_total: 0,
        }
    }

    /// Takes in a snapshot read at `now` (kernel clock `ktime_ns`). Returns the processes whose
    /// map entries the caller should now free: they exited and their last values are taken.
    pub fn apply(
        &mut self,
        snapshot: &SchedSnapshot,
        facts: &dyn ProcessFacts,
        now: Instant,
        ktime_ns: u64,
    ) -> Vec<u32> {
        let mut retire = Vec::new();
        for (&tgid, sample) in &snapshot.processes {
            self.observe(tgid, sample, facts, now);
            let exited = match sample.meta {
                Some(meta) if meta.exit_ns != 0 => {
                    ktime_ns.saturating_sub(meta.exit_ns) >= EXIT_SETTLE_NS
                }
                _ => !facts.is_alive(tgid),
            };
            if exited {
                retire.push(tgid);
            }
        }
        for &tgid in &retire {
            if let Some(tracked) = self.live.remove(&tgid) {
                let retired = Retired {
                    identity: tracked.series.identity(),
                    kernel_comm: tracked.kernel_comm,
                    at: now,
                };
                self.retired_names.insert(tgid, retired);
                self.ended.push((tracked.series, now));
                self.retired_total += 1;
            }
        }
        self.expire(now);
        retire
    }

    fn observe(
        &mut self,
        tgid: u32,
        sample: &ProcessSample,
        facts: &dyn ProcessFacts,
        now: Instant,
    ) {
        let kernel_comm = sample.meta.map(|meta| meta.comm);
        // An exec shows as a new kernel name, or, when the new program has the same name (a
        // `python3` shim script that execs the real `python3`, an entrypoint that execs its
        // program), as a name read at that exec waiting for the process.
        let renamed = self.live.get(&tgid).is_some_and(|tracked| {
            (kernel_comm.is_some() && tracked.kernel_comm != kernel_comm)
                || facts.exec_since_named(tgid)
        });
        let ask_again = !renamed && self.live.get_mut(&tgid).is_some_and(Tracked::reask_due);
        let identity = if renamed || !self.live.contains_key(&tgid) {
            // A process retired a moment ago can come back: a CPU still held its last slice
            // and flushed it after the entries were freed, maybe without a name, or under the
            // name of the thread that ran last. It keeps its name, unless the pid is reused:
            // by an exec, or by a forked child (alive, its own comm), or later than a flush.
            let exec = sample.meta.is_some_and(|meta| meta.from_exec != 0);
            match self.retired_names.get(&tgid) {
                Some(retired)
                    if !renamed
                        && !exec
                        && now.saturating_duration_since(retired.at) < LATE_FLUSH_WINDOW
                        && (kernel_comm.is_none()
                            || kernel_comm == retired.kernel_comm
                            || !facts.is_alive(tgid)) =>
                {
                    retired.identity.clone()
                }
                _ => facts.identify(tgid, sample),
            }
        } else if ask_again {
            // Named while procfs reads were failing: a name that is whole now moves the process
            // to its series the way an exec does. One incomplete again is no better than the
            // first; one read after the process exited (a zombie shows no environment), worse.
            let identity = facts.identify(tgid, sample);
            if identity.incomplete || !facts.is_alive(tgid) {
                return self.add_increase(tgid, sample, now);
            }
            identity
        } else {
            return self.add_increase(tgid, sample, now);
        };
        let previous = self.live.remove(&tgid);
        let (last_cpu_ns, last_runq) = match previous {
            Some(previous)
                if previous.series.executable == identity.executable
                    && previous.series.service == identity.service =>
            {
                // Same name after all (e.g. re-exec of itself): keep the series. The same
                // executable under another service is a rename: a process first named
                // while its exec was under way (its command line still empty) gets the
                // name read at that exec.
                self.live.insert(
                    tgid,
                    Tracked {
                        kernel_comm,
                        reask: Reask::after(&identity),
                        ..previous
                    },
                );
                return self.add_increase(tgid, sample, now);
            }
            Some(previous) => {
                self.ended.push((previous.series, now));
                (previous.last_cpu_ns, previous.last_runq)
            }
            None => (0, RunqCounts::default()),
        };
        let reask = Reask::after(&identity);
        let series = self.resume_or_start(tgid, identity);
        self.live.insert(
            tgid,
            Tracked {
                series,
                kernel_comm,
                last_cpu_ns,
                last_runq,
                reask,
            },
        );
        self.add_increase(tgid, sample, now);
    }

    /// A series with these labels that ended recently continues (pid reused by the same
    /// program, or a process seen again after its entries were freed); else a new one starts.
    fn resume_or_start(&mut self, tgid: u32, identity: ProcessIdentity) -> ProcessSeries {
        if let Some(index) = self.ended.iter().position(|(series, _)| {
            series.pid == Some(tgid)
                && series.executable == identity.executable
                && series.service == identity.service
        }) {
            return self.ended.swap_remove(index).0;
        }
        ProcessSeries {
            pid: Some(tgid),
            executable: identity.executable,
            service: identity.service,
            cpu_ns: 0,
            shown: Shown::default(),
        }
    }

    fn add_increase(&mut self, tgid: u32, sample: &ProcessSample, now: Instant) {
        let Some(tracked) = self.live.get_mut(&tgid) else {
            return;
        };
        // A total below the last one means the entry was freed and started again from zero.
        let cpu_increase = if sample.cpu_ns >= tracked.last_cpu_ns {
            sample.cpu_ns - tracked.last_cpu_ns
        } else {
            sample.cpu_ns
        };
        tracked.series.cpu_ns += cpu_increase;
        tracked.last_cpu_ns = sample.cpu_ns;

        let restarted = sample.runq.sum_ns < tracked.last_runq.sum_ns;
        let base = if restarted {
            RunqCounts::default()
        } else {
            tracked.last_runq
        };
        tracked.last_runq = sample.runq;
        let increase = difference(&sample.runq, &base);
        let service = self
            .runq
            .entry(tracked.series.service.name.clone())
            .or_insert_with(|| ServiceRunq {
                counts: RunqCounts::default(),
                updated: now,
            });
        if increase != RunqCounts::default() {
            for (total, added) in service.counts.buckets.iter_mut().zip(increase.buckets) {
                *total += added;
            }
            service.counts.sum_ns += increase.sum_ns;
        }
        service.updated = now;
    }

    fn expire(&mut self, now: Instant) {
        let grace = self.grace;
        self.ended
            .retain(|(_, ended)| now.saturating_duration_since(*ended) < grace);
        if self.ended.len() > self.ended_budget {
            // Oldest first; `resume_or_start` does not keep the order.
            self.ended.sort_by_key(|(_, ended)| *ended);
            let excess = self.ended.len() - self.ended_budget;
            for (series, _) in self.ended.drain(..excess).collect::<Vec<_>>() {
                self.fold(series, now);
            }
        }
        self.folded
            .retain(|_, (_, updated)| now.saturating_duration_since(*updated) < grace);
        let folded_budget = self.ended_budget.max(MIN_FOLDED_BUDGET);
        if self.folded.len() > folded_budget {
            // One per executable and service, and a service is per container: many short-lived
            // containers would make many. The least recently folded end first, as they would
            // at the end of their grace period.
            super::keep_latest(&mut self.folded, folded_budget, |(_, updated)| *updated);
        }
        self.retired_names
            .retain(|_, retired| now.saturating_duration_since(retired.at) < grace);
        if self.retired_names.len() > RETIRED_NAMES {
            // Keep the newest half: a rare pass, not one per exit.
            super::keep_latest(&mut self.retired_names, RETIRED_NAMES / 2, |retired| {
                retired.at
            });
        }
        // At most: with a grace of zero, histograms updated by this refresh stay.
        self.runq
            .retain(|_, service| now.saturating_duration_since(service.updated) <= grace);
        // Every process in the snapshot updated its service's histogram at `now`: only those
        // of services with none left can go.
        let evicted = &mut self.runq_evicted;
        super::evict_least_recent(
            &mut self.runq,
            RUNQ_SERVICES_MAX,
            now,
            |service| service.updated,
            |_| *evicted += 1,
        );
    }

    /// Adds an exited process's CPU time to its service's `__overflow__` series: what its own
    /// series did not show as an increase. All of it would count twice in a `rate()` summed
    /// by service: once in the process's series while it was shown, again as a jump of the
    /// overflow series.
    fn fold(&mut self, series: ProcessSeries, now: Instant) {
        let key = (series.executable.clone(), series.service.clone());
        let (total, updated) = self.folded.entry(key).or_insert_with(|| {
            let empty = ProcessSeries {
                pid: None,
                cpu_ns: 0,
                shown: Shown::default(),
                ..series.clone()
            };
            (empty, now)
        });
        total.cpu_ns += series.cpu_ns - series.shown.counted_increase().min(series.cpu_ns);
        *updated = now;
        self.folded_total += 1;
    }

    /// Notes the values about to be shown in `/metrics` (see [`Shown`]).
    pub fn note_shown(&mut self) {
        let live = self.live.values_mut().map(|tracked| &mut tracked.series);
        let ended = self.ended.iter_mut().map(|(series, _)| series);
        for series in live.chain(ended) {
            series.shown.note(series.cpu_ns);
        }
    }

    /// Exited processes' series folded into `__overflow__` since start.
    pub fn folded_total(&self) -> u64 {
        self.folded_total
    }

    /// Run-queue histograms dropped before their grace period ended by `RUNQ_SERVICES_MAX`.
    pub fn runq_evicted_total(&self) -> u64 {
        self.runq_evicted
    }

    /// How a process is named, if the ledger has seen it: live, or exited within the grace
    /// period (its last requests may be read after it is retired).
    pub fn identity(&self, tgid: u32) -> Option<ProcessIdentity> {
        match self.live.get(&tgid) {
            Some(tracked) => Some(tracked.series.identity()),
            None => self
                .retired_names
                .get(&tgid)
                .map(|retired| retired.identity.clone()),
        }
    }

    /// Every series to export: live processes and those ended within the grace period.
    pub fn processes(&self) -> impl Iterator<Item = &ProcessSeries> {
        self.live
            .values()
            .map(|tracked| &tracked.series)
            .chain(self.ended.iter().map(|(series, _)| series))
            .chain(self.folded.values().map(|(series, _)| series))
    }

    pub fn runq_by_service(&self) -> impl Iterator<Item = (&str, &RunqCounts)> {
        self.runq
            .iter()
            .map(|(service, runq)| (service.as_str(), &runq.counts))
    }

    /// Processes whose exit was seen and whose kernel entries were freed, since start.
    pub fn retired_total(&self) -> u64 {
        self.retired_total
    }
}

fn difference(now: &RunqCounts, before: &RunqCounts) -> RunqCounts {
    let mut increase = RunqCounts {
        sum_ns: now.sum_ns.saturating_sub(before.sum_ns),
        ..RunqCounts::default()
    };
    for ((out, now), before) in increase
        .buckets
        .iter_mut()
        .zip(now.buckets)
        .zip(before.buckets)
    {
        *out = now.saturating_sub(before);
    }
    increase
}

#[cfg(test)]
mod tests;
