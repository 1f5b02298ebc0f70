use std::{cell::RefCell, collections::HashSet};

use monitor_common::sched::ProcessMeta;

use super::*;

struct Facts {
    alive: HashSet<u32>,
    /// Processes with a name read at an exec waiting, and that name.
    exec_names: std::collections::HashMap<u32, String>,
    /// Service names of those names, where not the name itself.
    exec_services: std::collections::HashMap<u32, String>,
    /// Processes whose procfs reads fail: named by their executable alone, `incomplete`.
    failing: HashSet<u32>,
    /// `identify` calls per process.
    asked: RefCell<std::collections::HashMap<u32, u32>>,
}

impl ProcessFacts for Facts {
    fn is_alive(&self, tgid: u32) -> bool {
        self.alive.contains(&tgid)
    }
    fn identify(&self, tgid: u32, sample: &ProcessSample) -> ProcessIdentity {
        *self.asked.borrow_mut().entry(tgid).or_default() += 1;
        let name = self.exec_names.get(&tgid).cloned().unwrap_or_else(|| {
            sample
                .meta
                .map(|meta| crate::collect::process::comm_str(&meta.comm))
                .unwrap_or_else(|| "unknown".into())
        });
        let incomplete = self.failing.contains(&tgid);
        let service = match self.exec_services.get(&tgid) {
            Some(service) if !incomplete => service.clone(),
            _ => name.clone(),
        };
        ProcessIdentity {
            executable: name,
            service: crate::collect::process::Service::named(service),
            incomplete,
        }
    }
    fn exec_since_named(&self, tgid: u32) -> bool {
        self.exec_names.contains_key(&tgid)
    }
}

fn alive(pids: &[u32]) -> Facts {
    Facts {
        alive: pids.iter().copied().collect(),
        exec_names: Default::default(),
        exec_services: Default::default(),
        failing: Default::default(),
        asked: Default::default(),
    }
}

fn sample(comm: &str, cpu_ns: u64, exit_ns: u64) -> ProcessSample {
    let mut bytes = [0u8; COMM_LEN];
    bytes[..comm.len()].copy_from_slice(comm.as_bytes());
    ProcessSample {
        cpu_ns,
        runq: RunqCounts::default(),
        meta: Some(ProcessMeta {
            comm: bytes,
            exit_ns,
            from_exec: 1,
            forked_from: 0,
        }),
    }
}

/// A process the kernel first met running, not at an exec (a forked child, or a late flush):
/// its comm is whichever thread's ran first.
fn forked(comm: &str, cpu_ns: u64) -> ProcessSample {
    let mut sample = sample(comm, cpu_ns, 0);
    if let Some(meta) = &mut sample.meta {
        meta.from_exec = 0;
    }
    sample
}

fn snapshot(entries: &[(u32, ProcessSample)]) -> SchedSnapshot {
    SchedSnapshot {
        processes: entries.iter().cloned().collect(),
        ..SchedSnapshot::default()
    }
}

fn cpu_of(ledger: &ProcessLedger, pid: u32, name: &str) -> Option<u64> {
    ledger
        .processes()
        .find(|s| s.pid == Some(pid) && s.executable == name)
        .map(|s| s.cpu_ns)
}

const SECOND: u64 = 1_000_000_000;

#[test]
fn cpu_time_follows_the_kernel_totals() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    ledger.apply(
        &snapshot(&[(7, sample("nginx", 100, 0))]),
        &alive(&[7]),
        t0,
        SECOND,
    );
    ledger.apply(
        &snapshot(&[(7, sample("nginx", 250, 0))]),
        &alive(&[7]),
        t0,
        SECOND,
    );
    assert_eq!(cpu_of(&ledger, 7, "nginx"), Some(250));
}

#[test]
fn freed_and_recreated_entry_does_not_go_backwards() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    ledger.apply(
        &snapshot(&[(7, sample("nginx", 500, 0))]),
        &alive(&[7]),
        t0,
        SECOND,
    );
    // The entry was freed and the kernel started again from zero.
    ledger.apply(
        &snapshot(&[(7, sample("nginx", 40, 0))]),
        &alive(&[7]),
        t0,
        SECOND,
    );
    assert_eq!(cpu_of(&ledger, 7, "nginx"), Some(540));
}

#[test]
fn exited_process_is_retired_after_it_settles_and_kept_for_the_grace_period() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let exited = snapshot(&[(9, sample("burner", 300, 10 * SECOND))]);
    // Just exited: its last context switch may not be counted yet.
    let retire = ledger.apply(&exited, &alive(&[]), t0, 10 * SECOND + 1);
    assert!(retire.is_empty());
    let retire = ledger.apply(&exited, &alive(&[]), t0, 11 * SECOND);
    assert_eq!(retire, vec![9]);
    assert_eq!(ledger.retired_total(), 1);
    assert_eq!(cpu_of(&ledger, 9, "burner"), Some(300));

    let empty = snapshot(&[]);
    ledger.apply(
        &empty,
        &alive(&[]),
        t0 + Duration::from_secs(299),
        11 * SECOND,
    );
    assert_eq!(cpu_of(&ledger, 9, "burner"), Some(300));
    ledger.apply(
        &empty,
        &alive(&[]),
        t0 + Duration::from_secs(301),
        11 * SECOND,
    );
    assert_eq!(cpu_of(&ledger, 9, "burner"), None);
}

#[test]
fn exited_series_beyond_the_budget_fold_into_one_overflow_series_per_service() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 2);
    let t0 = Instant::now();
    // Five processes of one program exit one after the other, 100 ns of CPU each.
    for (n, tgid) in (100..105).enumerate() {
        let now = t0 + Duration::from_secs(n as u64);
        let exited = snapshot(&[(tgid, sample("once", 100, SECOND))]);
        ledger.apply(&exited, &alive(&[]), now, 2 * SECOND);
    }
    let pids: Vec<Option<u32>> = ledger.processes().map(|s| s.pid).collect();
    assert_eq!(pids.len(), 3, "two kept, one folded: {pids:?}");
    // The newest two keep their own series; the three oldest are summed.
    assert_eq!(cpu_of(&ledger, 103, "once"), Some(100));
    assert_eq!(cpu_of(&ledger, 104, "once"), Some(100));
    let folded = ledger.processes().find(|s| s.pid.is_none()).unwrap();
    assert_eq!((folded.executable.as_str(), folded.cpu_ns), ("once", 300));
    assert_eq!(ledger.folded_total(), 3);
    let total: u64 = ledger.processes().map(|s| s.cpu_ns).sum();
    assert_eq!(total, 500, "no CPU time lost to the budget");

    // The folded series expires like the others, a grace period after its last fold.
    ledger.apply(
        &snapshot(&[]),
        &alive(&[]),
        t0 + Duration::from_secs(310),
        2 * SECOND,
    );
    assert_eq!(ledger.processes().count(), 0);
}

/// Exited processes of as many services as there are short-lived containers: the folded
/// series are bounded too, the least recently folded ending first.
#[test]
fn folded_series_are_bounded_by_the_budget() {
    let budget = MIN_FOLDED_BUDGET;
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), budget);
    let t0 = Instant::now();
    let programs = budget as u32 + 8;
    // More programs (services) than the budget, each with more processes than the budget,
    // exiting one program after another.
    for program in 0..programs {
        let name = format!("job{program}");
        let exited: Vec<(u32, ProcessSample)> = (0..budget as u32 + 1)
            .map(|n| (10_000 + program * 1_000 + n, sample(&name, 100, SECOND)))
            .collect();
        let now = t0 + Duration::from_millis(program as u64);
        ledger.apply(&snapshot(&exited), &alive(&[]), now, 2 * SECOND);
    }
    let folded: Vec<String> = ledger
        .processes()
        .filter(|s| s.pid.is_none())
        .map(|s| s.executable.clone())
        .collect();
    assert_eq!(folded.len(), budget, "{folded:?}");
    let newest = format!("job{}", programs - 1);
    assert!(folded.contains(&newest), "{folded:?}");
    assert!(!folded.contains(&"job0".to_owned()), "{folded:?}");
}

#[test]
fn a_folded_series_adds_only_what_scrapes_did_not_see_rise() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1);
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    // A long-lived process, shown at 100 ns and at 5,000 ns, then exits at 5,200 ns.
    ledger.apply(
        &snapshot(&[(7, sample("svc", 100, 0))]),
        &alive(&[7]),
        at(0),
        SECOND,
    );
    ledger.note_shown();
    ledger.apply(
        &snapshot(&[(7, sample("svc", 5_000, 0))]),
        &alive(&[7]),
        at(1),
        SECOND,
    );
    ledger.note_shown();
    let exit = 2 * SECOND;
    ledger.apply(
        &snapshot(&[(7, sample("svc", 5_200, exit))]),
        &alive(&[]),
        at(2),
        3 * SECOND,
    );
    // A process never shown exits: over the budget of one, the long-lived one is folded.
    ledger.apply(
        &snapshot(&[(8, sample("svc", 40, exit))]),
        &alive(&[]),
        at(3),
        3 * SECOND,
    );
    assert_eq!(cpu_of(&ledger, 7, "svc"), None);
    let folded = ledger.processes().find(|s| s.pid.is_none()).unwrap();
    // Scrapes saw its series rise by 4,900 ns: a rate() summed by service counted them. The
    // fold adds the rest, the 100 before its first scrape and the 200 after its last.
    assert_eq!(folded.cpu_ns, 300);

    // A process never shown at all is folded whole.
    ledger.apply(
        &snapshot(&[(9, sample("svc", 60, exit))]),
        &alive(&[]),
        at(4),
        3 * SECOND,
    );
    let folded = ledger.processes().find(|s| s.pid.is_none()).unwrap();
    assert_eq!(folded.cpu_ns, 340);
}

#[test]
fn a_retired_process_is_still_named_for_its_last_requests() {
    let exited = snapshot(&[(12, sample("once", 100, SECOND))]);
    // Also once its series is folded away by a budget of none.
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 0);
    let now = Instant::now();
    ledger.apply(&exited, &alive(&[]), now, 2 * SECOND);
    assert_eq!(ledger.processes().filter(|s| s.pid.is_some()).count(), 0);
    let identity = ledger.identity(12).expect("named after it exited");
    assert_eq!(identity.service.name, "once");
    assert!(ledger.identity(13).is_none());
    // Until the grace period is over.
    ledger.apply(
        &snapshot(&[]),
        &alive(&[]),
        now + Duration::from_secs(301),
        2 * SECOND,
    );
    assert!(ledger.identity(12).is_none());
}

#[test]
fn a_retired_process_seen_again_without_a_name_keeps_its_own() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let now = Instant::now();
    let exited = snapshot(&[(21, sample("once", 100, SECOND))]);
    assert_eq!(
        ledger.apply(&exited, &alive(&[]), now, 2 * SECOND),
        vec![21]
    );
    // Its last slice flushed after its entries were freed: CPU time, no name.
    let late = ProcessSample {
        cpu_ns: 5,
        runq: RunqCounts::default(),
        meta: None,
    };
    ledger.apply(&snapshot(&[(21, late)]), &alive(&[]), now, 2 * SECOND);
    assert_eq!(ledger.identity(21).unwrap().service.name, "once");
    assert_eq!(cpu_of(&ledger, 21, "once"), Some(105));
    assert!(ledger.processes().all(|s| s.executable != "unknown"));
}

/// The last slice flushed late under the name of the thread that ran it: still the process.
#[test]
fn a_late_flush_under_a_thread_name_keeps_the_retired_name() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let now = Instant::now();
    let exited = snapshot(&[(21, sample("java", 100, SECOND))]);
    ledger.apply(&exited, &alive(&[]), now, 2 * SECOND);
    let late = snapshot(&[(21, forked("C2 CompilerThre", 5))]);
    ledger.apply(&late, &alive(&[]), now + Duration::from_secs(1), 2 * SECOND);
    assert_eq!(series_of(&ledger, 21), vec![("java".to_owned(), 105)]);
}

/// pid 4 is reused by a forked child (no exec): it is named by its own comm, and the exited
/// process's series does not grow with its CPU time.
#[test]
fn a_pid_reused_by_a_forked_child_is_not_named_after_the_exited_process() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let exited = snapshot(&[(4, sample("nginx", 100, SECOND))]);
    assert_eq!(ledger.apply(&exited, &alive(&[]), t0, 2 * SECOND), vec![4]);
    let child = snapshot(&[(4, forked("postgres", 700))]);
    ledger.apply(
        &child,
        &alive(&[4]),
        t0 + Duration::from_secs(1),
        3 * SECOND,
    );
    let mut series = series_of(&ledger, 4);
    series.sort();
    assert_eq!(
        series,
        vec![("nginx".to_owned(), 100), ("postgres".to_owned(), 700)]
    );
    assert_eq!(ledger.identity(4).unwrap().service.name, "postgres");
}

/// Past the window of a late flush, even a child with the retired process's comm (another
/// `python3`, maybe of another container) is named afresh.
#[test]
fn a_pid_reused_after_the_late_flush_window_is_named_afresh() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let mut facts = alive(&[]);
    facts.exec_services.insert(4, "shop".into());
    let exited = snapshot(&[(4, sample("python3", 100, SECOND))]);
    ledger.apply(&exited, &facts, t0, 2 * SECOND);
    let mut facts = alive(&[4]);
    facts.exec_services.insert(4, "billing".into());
    let later = t0 + LATE_FLUSH_WINDOW + Duration::from_secs(1);
    let child = snapshot(&[(4, forked("python3", 700))]);
    ledger.apply(&child, &facts, later, 20 * SECOND);
    let mut series = series_of(&ledger, 4);
    series.sort();
    assert_eq!(
        series,
        vec![("billing".to_owned(), 700), ("shop".to_owned(), 100)]
    );
}

#[test]
fn vanished_process_without_exit_event_is_retired() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let retire = ledger.apply(
        &snapshot(&[(5, sample("old", 10, 0))]),
        &alive(&[]),
        Instant::now(),
        SECOND,
    );
    assert_eq!(retire, vec![5]);
}

#[test]
fn exec_starts_a_new_series_with_only_the_later_time() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    ledger.apply(
        &snapshot(&[(3, sample("bash", 100, 0))]),
        &alive(&[3]),
        t0,
        SECOND,
    );
    ledger.apply(
        &snapshot(&[(3, sample("python3", 180, 0))]),
        &alive(&[3]),
        t0,
        SECOND,
    );
    assert_eq!(cpu_of(&ledger, 3, "bash"), Some(100));
    assert_eq!(cpu_of(&ledger, 3, "python3"), Some(80));
}

/// A `python3` shim script (pyenv's, a bash script) execs the real `python3`: the kernel's
/// name does not change, but the program does, and the name read at that exec says so.
#[test]
fn exec_of_a_program_with_the_same_kernel_name_renames_the_process() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let mut facts = alive(&[3]);
    facts.exec_names.insert(3, "bash".into());
    ledger.apply(
        &snapshot(&[(3, sample("python3", 100, 0))]),
        &facts,
        t0,
        SECOND,
    );
    assert_eq!(cpu_of(&ledger, 3, "bash"), Some(100));
    facts.exec_names.insert(3, "app".into());
    ledger.apply(
        &snapshot(&[(3, sample("python3", 180, 0))]),
        &facts,
        t0,
        SECOND,
    );
    assert_eq!(cpu_of(&ledger, 3, "bash"), Some(100));
    assert_eq!(cpu_of(&ledger, 3, "app"), Some(80));
    // No exec since: the name stays.
    let facts = alive(&[3]);
    ledger.apply(
        &snapshot(&[(3, sample("python3", 200, 0))]),
        &facts,
        t0,
        SECOND,
    );
    assert_eq!(cpu_of(&ledger, 3, "app"), Some(100));
}

/// A process first named from procfs while its exec was under way (no command line yet:
/// `node`), then by the name read at that exec (`shop`, same executable): renamed.
#[test]
fn a_name_read_at_exec_renames_a_process_first_named_by_its_executable_alone() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let facts = alive(&[3]);
    ledger.apply(
        &snapshot(&[(3, sample("node", 100, 0))]),
        &facts,
        t0,
        SECOND,
    );
    assert_eq!(series_of(&ledger, 3), vec![("node".to_owned(), 100)]);
    let mut facts = alive(&[3]);
    facts.exec_names.insert(3, "node".into());
    facts.exec_services.insert(3, "shop".into());
    ledger.apply(
        &snapshot(&[(3, sample("node", 150, 0))]),
        &facts,
        t0,
        SECOND,
    );
    // The series under the executable's name ends; the process goes on under its own.
    let mut series = series_of(&ledger, 3);
    series.sort();
    assert_eq!(
        series,
        vec![("node".to_owned(), 100), ("shop".to_owned(), 50)]
    );
}

/// (service, CPU ns) of every series of `tgid`.
fn series_of(ledger: &ProcessLedger, tgid: u32) -> Vec<(String, u64)> {
    ledger
        .processes()
        .filter(|series| series.pid == Some(tgid))
        .map(|series| (series.service.name.clone(), series.cpu_ns))
        .collect()
}

#[test]
fn reused_pid_with_the_same_program_continues_its_series() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    ledger.apply(
        &snapshot(&[(4, sample("worker", 100, SECOND))]),
        &alive(&[]),
        t0,
        5 * SECOND,
    );
    ledger.apply(
        &snapshot(&[(4, sample("worker", 30, 0))]),
        &alive(&[4]),
        t0,
        6 * SECOND,
    );
    let series: Vec<_> = ledger.processes().filter(|s| s.pid == Some(4)).collect();
    assert_eq!(series.len(), 1, "one series per label set");
    assert_eq!(series[0].cpu_ns, 130);
}

#[test]
fn run_queue_delays_add_up_per_service() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let with_delays = |comm: &str, count: u64| {
        let mut s = sample(comm, 0, 0);
        s.runq.buckets[3] = count;
        s.runq.sum_ns = count * 5000;
        s
    };
    let first = snapshot(&[(1, with_delays("app", 2)), (2, with_delays("app", 3))]);
    ledger.apply(&first, &alive(&[1, 2]), t0, SECOND);
    let second = snapshot(&[(1, with_delays("app", 4)), (2, with_delays("app", 3))]);
    ledger.apply(&second, &alive(&[1, 2]), t0, SECOND);
    let (service, counts) = ledger.runq_by_service().next().unwrap();
    assert_eq!(service, "app");
    assert_eq!(counts.buckets[3], 7);
    assert_eq!(counts.sum_ns, 35_000);
}

/// A process named `service` (its own service) that waited for a CPU once.
fn waited(service: &str, exit_ns: u64) -> ProcessSample {
    let mut s = sample(service, 10, exit_ns);
    s.runq.buckets[3] = 1;
    s.runq.sum_ns = 5000;
    s
}

/// A loop of short processes, each under a new service name (`OTEL_SERVICE_NAME=s$i`): the
/// histograms of services gone are bounded, the least recently updated dropped first, and a
/// service with a live process keeps its own.
#[test]
fn run_queue_histograms_of_services_gone_are_bounded() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(3600), 1000);
    let t0 = Instant::now();
    let services = RUNQ_SERVICES_MAX + 1000;
    // 100 exit per refresh, while `app` (pid 1) runs on.
    for (n, batch) in (0..services).collect::<Vec<_>>().chunks(100).enumerate() {
        let mut entries = vec![(1, waited("app", 0))];
        for &i in batch {
            entries.push((1000 + i as u32, waited(&format!("s{i}"), SECOND)));
        }
        let now = t0 + Duration::from_secs(n as u64);
        ledger.apply(&snapshot(&entries), &alive(&[1]), now, 2 * SECOND);
    }
    let kept: HashSet<&str> = ledger.runq_by_service().map(|(s, _)| s).collect();
    assert_eq!(kept.len(), RUNQ_SERVICES_MAX);
    // `app` and the newest survive; the oldest went first.
    assert!(kept.contains("app"));
    assert!(kept.contains(format!("s{}", services - 1).as_str()));
    assert!(!kept.contains("s0"));
    assert_eq!(
        ledger.runq_evicted_total(),
        (services + 1 - RUNQ_SERVICES_MAX) as u64
    );
}

/// More services with live processes than the bound: the one gone is dropped, none of the
/// live (each would come back from zero at the next refresh, a counter reset each time).
#[test]
fn run_queue_histograms_of_live_services_stay_beyond_the_bound() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let gone = snapshot(&[(99_999, waited("gone", SECOND))]);
    ledger.apply(&gone, &alive(&[]), t0, 2 * SECOND);
    let pids: Vec<u32> = (1..=RUNQ_SERVICES_MAX as u32 + 10).collect();
    let entries: Vec<_> = pids
        .iter()
        .map(|&pid| (pid, waited(&format!("s{pid}"), 0)))
        .collect();
    for n in 1..3 {
        let now = t0 + Duration::from_secs(n);
        ledger.apply(&snapshot(&entries), &alive(&pids), now, 2 * SECOND);
    }
    assert_eq!(ledger.runq_by_service().count(), pids.len());
    assert!(
        ledger
            .runq_by_service()
            .all(|(_, counts)| counts.buckets[3] == 1)
    );
    assert_eq!(ledger.runq_evicted_total(), 1);
}

/// Named while its reads of procfs failed (`python3`, not its `OTEL_SERVICE_NAME`): asked
/// again at the next refresh, it moves to its service's series, and its CPU time is in one
/// series or the other, never both.
#[test]
fn a_name_from_failed_reads_moves_to_the_full_name_once_reads_work() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let mut facts = alive(&[3]);
    facts.exec_services.insert(3, "shop".into());
    facts.failing.insert(3);
    let python = |cpu_ns| snapshot(&[(3, sample("python3", cpu_ns, 0))]);
    ledger.apply(&python(100), &facts, t0, SECOND);
    assert_eq!(series_of(&ledger, 3), vec![("python3".to_owned(), 100)]);
    facts.failing.clear();
    ledger.apply(&python(150), &facts, t0, SECOND);
    ledger.apply(&python(230), &facts, t0, SECOND);
    let mut series = series_of(&ledger, 3);
    series.sort();
    assert_eq!(
        series,
        vec![("python3".to_owned(), 100), ("shop".to_owned(), 130)]
    );
    assert_eq!(ledger.identity(3).unwrap().service.name, "shop");
    // Named whole: not asked again.
    for _ in 0..100 {
        ledger.apply(&python(230), &facts, t0, SECOND);
    }
    assert_eq!(facts.asked.borrow()[&3], 2);
}

/// Reads that keep failing (every procfs reader stuck for good): asked again after 1, 2,
/// 4, ... refreshes, `REASKS` times, then left as it is. A process named whole is asked once.
#[test]
fn a_process_whose_reads_keep_failing_is_asked_again_a_bounded_number_of_times() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let mut facts = alive(&[3, 4]);
    facts.failing.insert(3);
    let both = snapshot(&[(3, sample("python3", 100, 0)), (4, sample("nginx", 100, 0))]);
    let mut asked_at = Vec::new();
    for refresh in 0..200 {
        let before = facts.asked.borrow().get(&3).copied();
        ledger.apply(&both, &facts, t0, SECOND);
        if facts.asked.borrow().get(&3).copied() != before {
            asked_at.push(refresh);
        }
    }
    assert_eq!(asked_at, vec![0, 1, 3, 7, 15, 31, 63]);
    assert_eq!(asked_at.len() as u32, 1 + REASKS);
    assert_eq!(facts.asked.borrow()[&4], 1);
    assert_eq!(series_of(&ledger, 3), vec![("python3".to_owned(), 100)]);
}

/// Asked again just after it exited (its exit not settled yet): a zombie shows no environment,
/// so the answer, whole as it looks, is not taken.
#[test]
fn a_name_asked_again_after_the_process_exited_is_not_taken() {
    let mut ledger = ProcessLedger::new(Duration::from_secs(300), 1000);
    let t0 = Instant::now();
    let mut facts = alive(&[3]);
    facts.exec_services.insert(3, "shop".into());
    facts.failing.insert(3);
    ledger.apply(
        &snapshot(&[(3, sample("python3", 100, 0))]),
        &facts,
        t0,
        SECOND,
    );
    let mut facts = alive(&[]);
    facts.exec_services.insert(3, "python3-zombie".into());
    let exited = snapshot(&[(3, sample("python3", 120, 10 * SECOND))]);
    ledger.apply(&exited, &facts, t0, 10 * SECOND + 1);
    assert_eq!(facts.asked.borrow()[&3], 1, "asked again");
    assert_eq!(series_of(&ledger, 3), vec![("python3".to_owned(), 120)]);
}
