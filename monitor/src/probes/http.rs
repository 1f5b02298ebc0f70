//! The syscall hook of the HTTP programs: classic tracepoints at the socket syscalls' exits,
//! else `sys_exit` at every syscall's exit as a BTF tracepoint, else as a raw tracepoint (no
//! BTF needed); the hooks beside it (close, sendmsg, fork, the idle sweep's
//! clock); and the settings those programs read.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{BtfTracePoint, PerfEvent, RawTracePoint, TracePoint},
};
use monitor_common::http::{HttpConfig, MAX_DURATION_BOUNDS, MAX_EXCLUDED_COMMS, allowed_port_bit};

use crate::cli::SyscallHook;

use super::{
    AttachedProgram, HookKind, KernelBtf, attach_cpu_clock, online_cpus, program_mut, refusal,
    tracefs,
};

/// What the user chose for HTTP, checked.
pub struct HttpSettings {
    pub duration_buckets: Vec<f64>,
    pub route_budget: u32,
    pub exclude_comm: Vec<String>,
    pub idle_timeout: std::time::Duration,
    /// `--http-ports`; empty for all ports.
    pub ports: Vec<u16>,
    /// Distinct server addresses per client process (and service).
    pub host_budget: u32,
    /// Tests only: `monitor_common::http::test_fault` bits.
    pub test_faults: u32,
}

/// Builds the programs' configuration; errors say which option is wrong and why.
pub fn http_config(settings: &HttpSettings, agent_tgid: u32) -> Result<HttpConfig> {
    let buckets = &settings.duration_buckets;
    if buckets.is_empty() || buckets.len() > MAX_DURATION_BOUNDS {
        bail!(
            "--duration-buckets takes 1 to {MAX_DURATION_BOUNDS} bounds, got {}",
            buckets.len()
        );
    }
    let mut duration_bounds_ns = [u64::MAX; MAX_DURATION_BOUNDS];
    for (i, &seconds) in buckets.iter().enumerate() {
        if !(seconds.is_finite() && seconds > 0.0) {
            bail!("--duration-buckets: {seconds} is not a positive number of seconds");
        }
        if i > 0 && seconds <= buckets[i - 1] {
            bail!(
                "--duration-buckets must be ascending: {} then {seconds}",
                buckets[i - 1]
            );
        }
        duration_bounds_ns[i] = (seconds * 1e9).round() as u64;
    }
    if settings.exclude_comm.len() > MAX_EXCLUDED_COMMS {
        bail!("--exclude-comm takes at most {MAX_EXCLUDED_COMMS} names");
    }
    let mut excluded_comms = [[0u8; 16]; MAX_EXCLUDED_COMMS];
    for (slot, name) in excluded_comms.iter_mut().zip(&settings.exclude_comm) {
        // The kernel keeps 15 bytes of a name: compare what it can see.
        let bytes = &name.as_bytes()[..name.len().min(15)];
        if bytes.is_empty() {
            bail!("--exclude-comm: empty name");
        }
        slot[..bytes.len()].copy_from_slice(bytes);
    }
    if settings.route_budget == 0 {
        bail!("--route-budget must be at least 1");
    }
    Ok(HttpConfig {
        duration_bounds_ns,
        duration_bound_count: buckets.len() as u32,
        route_budget: settings.route_budget,
        agent_tgid,
        port_filter: u32::from(!settings.ports.is_empty()),
        host_budget: settings.host_budget,
        test_faults: settings.test_faults,
        idle_timeout_ns: settings.idle_timeout.as_nanos() as u64,
        fingerprint_seed: fingerprint_seed()?,
        excluded_comms,
    })
}

/// A seed nobody outside the agent knows, so that nobody can pick two request lines with one
/// fingerprint (`monitor_common::fingerprint`).
fn fingerprint_seed() -> Result<u64> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut seed = [0u8; 8];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow!("the kernel's random number generator failed"))?;
    Ok(u64::from_ne_bytes(seed))
}

pub fn write_config(ebpf: &mut Ebpf, config: HttpConfig) -> Result<()> {
    let map = ebpf
        .map_mut("HTTP_CONFIG")
        .ok_or_else(|| anyhow!("map HTTP_CONFIG missing from the BPF object"))?;
    let mut array: Array<_, HttpConfig> = Array::try_from(map)?;
    array.set(0, config, 0)?;
    Ok(())
}

/// Sets the bits of `ports` (`--http-ports`) in `ALLOWED_PORTS`, which the programs check
/// where they can read a listener's port themselves.
pub fn write_allowed_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<()> {
    let map = ebpf
        .map_mut("ALLOWED_PORTS")
        .ok_or_else(|| anyhow!("map ALLOWED_PORTS missing from the BPF object"))?;
    let mut array: Array<_, u64> = Array::try_from(map)?;
    for (word, bits) in allowed_port_words(ports) {
        array.set(word, bits, 0)?;
    }
    Ok(())
}

/// The non-zero words of the `ALLOWED_PORTS` bitmap for `ports`.
fn allowed_port_words(ports: &[u16]) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for &port in ports {
        let (word, bit) = allowed_port_bit(port);
        *words.entry(word).or_default() |= bit;
    }
    words
}

/// Attaches the HTTP programs' syscall hook, `sys_exit` as `metrics` name it, as `choice`
/// asks (`--syscall-hook`): at the socket syscalls' exits alone, else at every syscall's
/// exit. With `empty`, a program that does nothing (the benchmarks' floor).
pub fn attach_syscalls(
    ebpf: &mut Ebpf,
    empty: bool,
    btf: &KernelBtf,
    choice: SyscallHook,
) -> Result<Vec<AttachedProgram>> {
    let chosen = match choice {
        SyscallHook::EveryExit => return Ok(vec![attach_every_exit(ebpf, empty, btf)?]),
        SyscallHook::SocketExits => {
            attach_socket_exits(ebpf, empty, &SOCKET_EXITS).map(|p| vec![p])
        }
        SyscallHook::SocketTracepoints => attach_socket_tracepoints(ebpf, empty, btf),
    };
    match chosen {
        Ok(programs) => Ok(programs),
        Err(error) => {
            log::warn!(
                "the socket tracepoints cannot be used ({}): every syscall's exit runs the \
                 HTTP program",
                refusal::brief(&error)
            );
            Ok(vec![attach_every_exit(ebpf, empty, btf)?])
        }
    }
}

/// The socket syscalls that move no bytes through `sock_recvmsg` or `sock_sendmsg`, seen at
/// their exits beside the socket tracepoints (`is_socket_data` in the BPF crate).
const EXITS_BESIDE_SOCKET_TRACEPOINTS: [&str; 5] = [
    "sys_exit_sendfile64",
    "sys_exit_connect",
    "sys_exit_accept",
    "sys_exit_accept4",
    "sys_exit_getsockopt",
];

/// The socket tracepoints (Linux 6.3+), as BTF tracepoints, for the reads and writes, and the
/// socket exits' program at the exits of the other socket syscalls: a program runs only where
/// a socket moves bytes or a connection starts. All of them, or none.
fn attach_socket_tracepoints(
    ebpf: &mut Ebpf,
    empty: bool,
    btf: &KernelBtf,
) -> Result<Vec<AttachedProgram>> {
    let btf = btf
        .as_ref()
        .map_err(|error| anyhow!("no kernel BTF: {error}"))?;
    let mut attached = Vec::new();
    for hook in SOCKET_TRACEPOINTS {
        let name = if empty { hook.1 } else { hook.0 };
        if let Err(error) = attach_btf(ebpf, btf, hook.0, name) {
            detach(ebpf, &attached);
            return Err(error);
        }
        attached.push(AttachedProgram {
            hook: hook.0,
            kind: HookKind::TpBtf,
            program: name,
        });
    }
    match attach_socket_exits(ebpf, empty, &EXITS_BESIDE_SOCKET_TRACEPOINTS) {
        Ok(program) => {
            // First: the program that sees close at its exit where its entry cannot be had.
            attached.insert(0, program);
            Ok(attached)
        }
        Err(error) => {
            detach(ebpf, &attached);
            Err(error)
        }
    }
}

/// The socket tracepoints, each the name of its program, and of its empty program.
const SOCKET_TRACEPOINTS: [(&str, &str); 2] = [
    ("sock_recv_length", "sock_recv_length_empty"),
    ("sock_send_length", "sock_send_length_empty"),
];

/// Unloads BTF tracepoints attached here, which detaches them, when their partners cannot
/// be attached: beside every syscall's exit, they would see the same reads and writes again.
fn detach(ebpf: &mut Ebpf, attached: &[AttachedProgram]) {
    for program in attached {
        let unloaded = program_mut(ebpf, program.program).and_then(|program| {
            let program: &mut BtfTracePoint = program.try_into()?;
            Ok(program.unload()?)
        });
        if let Err(error) = unloaded {
            log::warn!("{} left attached: {error:#}", program.program);
        }
    }
}

/// The HTTP program's name, and the hook as the metrics name it.
const SYSCALL_HOOK: &str = "sys_exit";
const SOCKET_EXITS_PROGRAM: &str = "sys_exit_each";

/// The x86_64 tracepoints at the exits of the syscalls the programs watch
/// (`syscalls::is_watched` in the BPF crate), but close: it is seen at its entry
/// (`attach_close`), else at its exit (`attach_close_exit`).
const SOCKET_EXITS: [&str; 13] = [
    "sys_exit_read",
    "sys_exit_write",
    "sys_exit_readv",
    "sys_exit_writev",
    "sys_exit_sendfile64",
    "sys_exit_connect",
    "sys_exit_accept",
    "sys_exit_accept4",
    "sys_exit_sendto",
    "sys_exit_recvfrom",
    "sys_exit_sendmsg",
    "sys_exit_recvmsg",
    "sys_exit_getsockopt",
];

/// One program attached at each of `exits`; none attached if one cannot be.
fn attach_socket_exits(ebpf: &mut Ebpf, empty: bool, exits: &[&str]) -> Result<AttachedProgram> {
    tracefs::ensure_mounted()?;
    let name = if empty {
        "sys_exit_each_empty"
    } else {
        SOCKET_EXITS_PROGRAM
    };
    let program: &mut TracePoint = program_mut(ebpf, name)?.try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    for &exit in exits {
        if let Err(error) = program.attach("syscalls", exit) {
            // Half attached, the other hook would see the same syscalls twice.
            let _ = program.unload();
            return Err(error).with_context(|| format!("attaching {name} at {exit}"));
        }
    }
    Ok(AttachedProgram {
        hook: SYSCALL_HOOK,
        kind: HookKind::Tracepoint,
        program: name,
    })
}

/// Where close(2) cannot be seen at its entry, the socket exits' program (if it is
/// `syscall_program`, the one attached) is attached at its exit too (every syscall's exit
/// sees it anyway).
pub fn attach_close_exit(ebpf: &mut Ebpf, syscall_program: &str) -> Result<()> {
    if syscall_program != SOCKET_EXITS_PROGRAM {
        return Ok(());
    }
    let program: &mut TracePoint = program_mut(ebpf, SOCKET_EXITS_PROGRAM)?.try_into()?;
    program
        .attach("syscalls", "sys_exit_close")
        .context("attaching sys_exit_each at sys_exit_close")?;
    Ok(())
}

/// The `sys_exit` program at every syscall's exit: BTF tracepoint, else raw tracepoint.
fn attach_every_exit(ebpf: &mut Ebpf, empty: bool, btf: &KernelBtf) -> Result<AttachedProgram> {
    let btf_error = match btf {
        Ok(btf) => {
            let name = if empty {
                "sys_exit_empty"
            } else {
                "sys_exit_btf"
            };
            match attach_btf(ebpf, btf, SYSCALL_HOOK, name) {
                Ok(()) => {
                    return Ok(AttachedProgram {
                        hook: SYSCALL_HOOK,
                        kind: HookKind::TpBtf,
                        program: name,
                    });
                }
                Err(error) => refusal::brief(&error),
            }
        }
        Err(error) => format!("no kernel BTF: {error}"),
    };
    if empty {
        bail!("empty programs are BTF tracepoints: {btf_error}");
    }
    log::warn!("BTF tracepoint sys_exit unavailable ({btf_error}); using a raw tracepoint");
    const RAW: &str = "sys_exit_raw";
    let program: &mut RawTracePoint = program_mut(ebpf, RAW)?.try_into()?;
    program.load().context("loading sys_exit_raw")?;
    program
        .attach(SYSCALL_HOOK)
        .map_err(|error| anyhow!("cannot attach sys_exit: tp_btf: {btf_error}; raw_tp: {error}"))?;
    Ok(AttachedProgram {
        hook: SYSCALL_HOOK,
        kind: HookKind::RawTracepoint,
        program: RAW,
    })
}

/// How often the idle sweep runs: the scheduler tick's period. The sweep acts once per idle
/// timeout (`--http-idle-timeout`), within a period of its end.
const IDLE_SWEEP_PERIOD_NS: u64 = monitor_common::sched::TICK_PERIOD_NS;

/// The idle sweep's hook, as `monitor_bpf_program_info` and `monitor_hook_unavailable` name it.
pub const IDLE_SWEEP_HOOK: &str = "cpu_clock_one_cpu";

/// Attaches the idle sweep, which ends the responses keep-alive connections left waiting
/// (`http_idle_sweep` in the BPF crate), to a clock event on the first online CPU: one CPU
/// sweeps. With `empty`, a program that does nothing.
pub fn attach_idle_sweep(ebpf: &mut Ebpf, empty: bool) -> Result<AttachedProgram> {
    let name = if empty {
        "http_idle_sweep_empty"
    } else {
        "http_idle_sweep"
    };
    let program: &mut PerfEvent = program_mut(ebpf, name)?.try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    let cpu = *online_cpus()?.first().context("no online CPU listed")?;
    attach_cpu_clock(program, name, &[cpu], IDLE_SWEEP_PERIOD_NS)?;
    Ok(AttachedProgram {
        hook: IDLE_SWEEP_HOOK,
        kind: HookKind::PerfEvent,
        program: name,
    })
}

/// Attaches the program at close(2)'s entry and hands close over to it (see
/// `sys_enter_close` in the BPF crate): a classic tracepoint, run by close alone.
pub fn attach_close(ebpf: &mut Ebpf, empty: bool) -> Result<AttachedProgram> {
    attach_fed_tracepoint(
        ebpf,
        &FedTracepoint {
            category: "syscalls",
            hook: "sys_enter_close",
            programs: ("sys_enter_close", "sys_enter_close_empty"),
            field: ("fd", 8),
            map: "CLOSE_FD_OFFSET",
        },
        empty,
    )
}

/// Attaches the program at sendmsg(2)'s entry, which notes the server connections a process
/// passes to another (see `handoff` in the BPF crate) before the receiver can take them: at
/// the exit, a worker on another CPU may already have received one.
pub fn attach_sendmsg(ebpf: &mut Ebpf, empty: bool) -> Result<AttachedProgram> {
    attach_fed_tracepoint(
        ebpf,
        &FedTracepoint {
            category: "syscalls",
            hook: "sys_enter_sendmsg",
            programs: ("sys_enter_sendmsg", "sys_enter_sendmsg_empty"),
            field: ("msg", 8),
            map: "SENDMSG_MSG_OFFSET",
        },
        empty,
    )
}

/// Attaches the program at `sched:sched_process_fork`, which notes the children of processes
/// with connections (see `fork` in the BPF crate): a forking server's child serves the
/// connection its parent accepted.
pub fn attach_fork(ebpf: &mut Ebpf, empty: bool) -> Result<AttachedProgram> {
    attach_fed_tracepoint(
        ebpf,
        &FedTracepoint {
            category: "sched",
            hook: "sched_process_fork",
            programs: ("sched_process_fork", "sched_process_fork_empty"),
            field: ("child_pid", 4),
            map: "FORK_CHILD_PID_OFFSET",
        },
        empty,
    )
}

/// A classic tracepoint whose program reads one field of its records, at the offset the
/// agent writes into a one-slot map once it is attached (0 until then).
struct FedTracepoint {
    category: &'static str,
    hook: &'static str,
    /// The program, and the empty one that stands in for it (`--empty-programs`).
    programs: (&'static str, &'static str),
    /// The field's name and size in bytes, as the tracepoint's format gives them.
    field: (&'static str, u32),
    map: &'static str,
}

/// Attaches `<category>:<hook>` and, unless `empty`, writes the offset of the field in its
/// records into the map.
fn attach_fed_tracepoint(
    ebpf: &mut Ebpf,
    tracepoint: &FedTracepoint,
    empty: bool,
) -> Result<AttachedProgram> {
    let FedTracepoint {
        category,
        hook,
        programs,
        field: (field, size),
        map,
    } = *tracepoint;
    let root = tracefs::ensure_mounted()?;
    let offset = tracefs::field_offset(&root, (category, hook), field, size)?;
    let name = if empty { programs.1 } else { programs.0 };
    let program: &mut TracePoint = program_mut(ebpf, name)?.try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    program
        .attach(category, hook)
        .with_context(|| format!("attaching {name}"))?;
    if !empty {
        let mut offsets: Array<_, u32> = Array::try_from(
            ebpf.map_mut(map)
                .ok_or_else(|| anyhow!("map {map} missing from the BPF object"))?,
        )?;
        offsets
            .set(0, offset, 0)
            .with_context(|| format!("writing {map}"))?;
    }
    Ok(AttachedProgram {
        hook,
        kind: HookKind::Tracepoint,
        program: name,
    })
}

/// Loads the BTF tracepoint program `name` for `hook` and attaches it; unloaded again if it
/// cannot be attached.
fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, hook: &str, name: &str) -> Result<()> {
    let program: &mut BtfTracePoint = program_mut(ebpf, name)?.try_into()?;
    program
        .load(hook, btf)
        .with_context(|| format!("loading {name}"))?;
    if let Err(error) = program.attach() {
        let _ = program.unload();
        return Err(error).with_context(|| format!("attaching {name}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_ports_are_bits_of_their_words() {
        let words = allowed_port_words(&[0, 63, 64, 8080, 65535]);
        let expected = BTreeMap::from([
            (0, 1 | 1 << 63),
            (1, 1),
            (8080 / 64, 1 << (8080 % 64)),
            (1023, 1 << 63),
        ]);
        assert_eq!(words, expected);
    }

    fn settings(buckets: &[f64]) -> HttpSettings {
        HttpSettings {
            duration_buckets: buckets.to_vec(),
            route_budget: 200,
            exclude_comm: vec!["nginx".into()],
            idle_timeout: std::time::Duration::from_secs(1),
            ports: vec![],
            host_budget: 100,
            test_faults: 0,
        }
    }

    #[test]
    fn buckets_become_nanoseconds() {
        let config = http_config(&settings(&[0.001, 0.0025, 1.0]), 42).unwrap();
        assert_eq!(config.duration_bound_count, 3);
        assert_eq!(
            &config.duration_bounds_ns[..4],
            &[1_000_000, 2_500_000, 1_000_000_000, u64::MAX]
        );
        assert_eq!(config.agent_tgid, 42);
        assert_eq!(&config.excluded_comms[0][..6], b"nginx\0");
    }

    #[test]
    fn bad_buckets_are_explained() {
        let error = |b: &[f64]| http_config(&settings(b), 1).unwrap_err().to_string();
        assert!(error(&[0.1, 0.05]).contains("ascending"));
        assert!(error(&[]).contains("1 to 32"));
        assert!(error(&[-1.0]).contains("positive"));
        assert!(error(&[0.001; 33]).contains("1 to 32"));
    }
}
