//! Refreshing the agent: the maps read into the model with the processes named, listeners'
//! ports checked, and the entries of exited processes freed.

use std::{cell::RefCell, collections::HashMap, time::Instant};

use anyhow::Result;

use super::Agent;
use crate::{
    collect::{
        execs::EarlyNames,
        http::HttpSnapshot,
        process::{self, Identifier, ProcessIdentity},
        sched::{ProcessSample, SchedSnapshot},
        sockets,
    },
    model::{
        http::HttpFacts,
        processes::{ProcessFacts, ProcessLedger},
    },
};

/// Refreshes between sweeps of the connection and route maps for processes that are gone.
const SWEEP_EVERY: u64 = 10;

/// How processes get their names: read at exec if the namer thread was quick enough (it
/// was there while the process lived), else from procfs and the kernel's record now.
struct Naming<'a> {
    identifier: &'a Identifier,
    early: &'a EarlyNames,
}

/// procfs and the process ledger, as the HTTP model sees them.
struct HttpProcesses<'a> {
    ledger: &'a ProcessLedger,
    /// The kernel's names, for a process that came and went between two refreshes.
    sched: &'a SchedSnapshot,
    naming: Naming<'a>,
}

impl HttpFacts for HttpProcesses<'_> {
    fn is_alive(&self, tgid: u32) -> bool {
        process::is_alive(tgid)
    }
    fn identity(&self, tgid: u32) -> ProcessIdentity {
        // Peek: the process ledger takes the early name when it first meets the process.
        self.ledger
            .identity(tgid)
            .or_else(|| self.naming.early.peek(tgid))
            .unwrap_or_else(|| {
                let meta = self
                    .sched
                    .processes
                    .get(&tgid)
                    .and_then(|s| s.meta.as_ref());
                self.naming.identifier.identify(tgid, meta)
            })
    }
}

impl ProcessFacts for Naming<'_> {
    fn is_alive(&self, tgid: u32) -> bool {
        process::is_alive(tgid)
    }
    fn identify(&self, tgid: u32, sample: &ProcessSample) -> ProcessIdentity {
        self.early
            .take(tgid)
            .unwrap_or_else(|| self.identifier.identify(tgid, sample.meta.as_ref()))
    }
    fn exec_since_named(&self, tgid: u32) -> bool {
        self.early.peek(tgid).is_some()
    }
}

impl Agent {
    /// Reads the maps into the model and frees the entries of processes that have exited.
    pub fn refresh(&mut self) {
        let started = Instant::now();
        self.refreshes += 1;
        // HTTP first: a process that served and exited between the two reads is then in the
        // scheduler's snapshot too, and named from it.
        let refreshed = self.http_maps.read().and_then(|http| {
            if let Err(error) = self.refresh_sched() {
                self.http_maps.keep_events(http);
                return Err(error);
            }
            self.refresh_http(http)
        });
        if let Err(error) = refreshed {
            self.refresh_errors += 1;
            log::warn!("reading the kernel maps failed: {error:#}");
        }
        self.refresh_durations.observe(started.elapsed());
    }

    fn refresh_sched(&mut self) -> Result<()> {
        let snapshot = self.maps.read()?;
        let naming = Naming {
            identifier: &self.identifier,
            early: &self.early_names,
        };
        let retired = self
            .ledger
            .apply(&snapshot, &naming, Instant::now(), monotonic_ns());
        for tgid in retired {
            self.maps.forget(tgid);
        }
        self.snapshot = snapshot;
        Ok(())
    }

    fn refresh_http(&mut self, snapshot: HttpSnapshot) -> Result<()> {
        let facts = HttpProcesses {
            ledger: &self.ledger,
            sched: &self.snapshot,
            naming: Naming {
                identifier: &self.identifier,
                early: &self.early_names,
            },
        };
        for &(tgid, fd) in &snapshot.unchecked_listeners {
            // A socket that is gone or not a TCP listener has no port to allow.
            let allowed = sockets::listener_port(tgid, fd).is_some_and(|p| self.ports.allows(p));
            self.http_maps.set_listener(tgid, fd, allowed);
        }
        let cleanup = self.http.apply(&snapshot, &facts, Instant::now());
        self.http_maps.forget(&cleanup);
        if self.refreshes % SWEEP_EVERY == 1 {
            // Asked once per process: a sweep looks at every connection, listener and budget.
            let known = RefCell::new(HashMap::new());
            let alive = |tgid| {
                *known
                    .borrow_mut()
                    .entry(tgid)
                    .or_insert_with(|| process::is_alive(tgid))
            };
            let sweep = self
                .http_maps
                .sweep(alive, monotonic_ns(), self.http_idle_timeout_ns);
            self.in_flight_at_exit.add(sweep.in_flight);
            let mut usage = sweep.usage;
            usage.push(
                self.http_maps
                    .duration_usage(snapshot.durations.len() - cleanup.forget.len()),
            );
            self.http_map_usage = usage;
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
