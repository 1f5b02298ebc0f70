//! HTTPS through OpenSSL's libssl, read as plain text at SSL_read and SSL_write (and their
//! `_ex` forms) by the agent's uprobes: nginx and ApacheBench (SSL_read/SSL_write), Python's
//! ssl module at both ends (SSL_read_ex/SSL_write_ex). Certificates are made with rcgen.

use std::{fs, os::unix::fs::FileExt as _, path::Path, process::Command, time::Duration};

use monitor_tests::{
    MonitorAgent, Scrape,
    agent::require_root,
    bpf,
    capabilities::{
        DAEMONSET, DAEMONSET_HTTPS, assert_threads_hold_the_run_time_set, capsh_keeping,
        perf_event_uprobes, tls_scan_thread,
    },
    http::{client_total, describe_http, server_count, wait_until},
    https, poll_until,
    servers::{Server, ab_program, ab_with, fixture, renamed_copy},
    workload::unique_name,
};
use tempfile::TempDir;

const CLIENT_DURATION: &str = "http_client_request_duration_seconds";
const SERVER_DURATION: &str = "http_server_request_duration_seconds";

#[test]
fn https_through_nginx_and_apachebench_is_counted_exactly_at_both_ends() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let agent = MonitorAgent::start(&[]);
    let server = Server::nginx_https(
        &pem,
        "    location /items/ { return 200 \"item\\n\"; }\n    location /gone { return 503; }",
    );
    let base = format!("https://127.0.0.1:{}", server.port);
    const REQUESTS: usize = 20_000;
    // ApacheBench under its own name: the client side's service.
    let ab_name = unique_name("ab");
    let ab_copy = renamed_copy(dir.path(), "/usr/bin/ab", &ab_name);
    let completed = ab_at(
        &ab_copy,
        &format!("{base}/items/5f0c9e2a-7d41-4b8e-9c3a-1e2f3a4b5c6d?token=s3cr3t"),
        REQUESTS,
    );
    assert_eq!(completed, REQUESTS);
    // A connection, and a handshake, per request, 16 at once: each connection's socket is
    // known from its first request.
    const ONE_EACH: usize = 1000;
    let gone = format!("{base}/gone");
    assert_eq!(ab_program(&ab_copy, &[], &gone, ONE_EACH, 16), ONE_EACH);

    let scrape = wait_until(&agent, "every HTTPS request counted at both ends", |s| {
        server_count(s, "nginx", 200, "/items/{id}") == Some(REQUESTS as u64)
            && server_count(s, "nginx", 503, "/gone") == Some(ONE_EACH as u64)
            && client_total(s, &ab_name, 200) == REQUESTS as u64
            && client_total(s, &ab_name, 503) == ONE_EACH as u64
    });
    // The plain text was read at the library (the syscalls carry ciphertext), and the raw
    // path and query string stayed out of the labels.
    assert!(
        scrape
            .value("monitor_http_tls_connections_total", &[])
            .unwrap()
            >= 2.0
    );
    assert!(scrape.value("monitor_tls_libraries_probed", &[]).unwrap() >= 1.0);
    let text = agent.metrics_text();
    assert!(
        !text.contains("5f0c9e2a") && !text.contains("s3cr3t"),
        "{}",
        describe_http(&text)
    );
}

/// ApacheBench (`program`, a copy of it) with keep-alive over 16 connections; the requests
/// it completed.
fn ab_at(program: &Path, url: &str, requests: usize) -> usize {
    ab_program(program, &["-k"], url, requests, 16)
}

/// Python's http.server fixture serving HTTPS with `pem`, under a name of its own beginning
/// with `prefix`.
fn python_https_server(dir: &TempDir, pem: &Path, prefix: &str) -> Server {
    https::python_https_server(dir.path(), pem, prefix, &[])
}

#[test]
fn python_https_server_and_client_are_counted_and_timed_through_the_ex_calls() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let agent = MonitorAgent::start(&[]);
    let server = python_https_server(&dir, &pem, "pys");
    let server_name = server.service.clone();

    // One keep-alive connection: statuses, and a handler that sleeps 100 ms.
    let client_name = unique_name("pyc");
    let script = dir.path().join(format!("{client_name}.py"));
    fs::copy(fixture("keep_alive_client.py"), &script).unwrap();
    let host = format!("secure.test:{}", server.port);
    let mut requests = Vec::new();
    for path in [
        "/status/200",
        "/status/201",
        "/status/404",
        "/status/500",
        "/sleep/100",
    ] {
        for _ in 0..3 {
            requests.push(format!("{host},{path}"));
        }
    }
    let output = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(server.port.to_string())
        .args(&requests)
        .env("TLS", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let client = |s: &Scrape, status: u16| -> Option<u64> {
        let status = status.to_string();
        s.histogram_count(
            CLIENT_DURATION,
            &[
                ("service_name", &client_name),
                ("server_address", &host),
                ("http_response_status_code", &status),
            ],
        )
    };
    let scrape = wait_until(&agent, "the Python HTTPS requests at both ends", |s| {
        [(200, 6), (201, 3), (404, 3), (500, 3)]
            .into_iter()
            .all(|(status, n)| client(s, status) == Some(n))
            && server_count(s, &server_name, 200, "/sleep/{id}") == Some(3)
            && [200, 201, 404, 500]
                .into_iter()
                .all(|status| server_count(s, &server_name, status, "/status/{id}") == Some(3))
    });
    // The sleeping handler: every observation in (0.1, 0.25] at both ends.
    let server_sleeps = scrape
        .histogram(
            SERVER_DURATION,
            &[
                ("service_name", &server_name),
                ("http_route", "/sleep/{id}"),
            ],
        )
        .unwrap();
    assert_eq!(count_in(&server_sleeps, 0.1, 0.25), 3, "{server_sleeps:?}");
    let client_all = scrape
        .histogram(
            CLIENT_DURATION,
            &[
                ("service_name", &client_name),
                ("http_response_status_code", "200"),
            ],
        )
        .unwrap();
    assert_eq!(count_in(&client_all, 0.1, 0.25), 3, "{client_all:?}");
}

/// Observations of a cumulative histogram in (low, high].
fn count_in(buckets: &[(f64, u64)], low: f64, high: f64) -> u64 {
    let at = |bound: f64| {
        buckets
            .iter()
            .find(|&&(le, _)| (le - bound).abs() < 1e-9)
            .map(|&(_, count)| count)
            .unwrap_or_else(|| panic!("no bucket {bound} in {buckets:?}"))
    };
    at(high) - at(low)
}

#[test]
fn http2_over_tls_is_counted_as_http2_and_not_as_requests() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let agent = MonitorAgent::start(&[]);
    let server = Server::nginx_https_with(
        "",
        " http2",
        &pem,
        "    location /h2/ { return 200 \"two\\n\"; }",
    );
    let url = format!("https://127.0.0.1:{}/h2/1", server.port);
    let output = Command::new("curl")
        .args(["-sk", "--http2", "-w", "%{http_version}"])
        .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
        .args([&url, &url, &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "222", "{output:?}");

    let scrape = wait_until(&agent, "the HTTP/2 preface inside TLS counted", |s| {
        s.value("monitor_http_reads_not_http_total", &[("reason", "http2")]) >= Some(1.0)
    });
    // HTTP/2 frames are not HTTP/1.x requests: nothing recorded for nginx.
    assert_eq!(
        scrape
            .histograms(SERVER_DURATION, &[("service_name", "nginx")])
            .count(),
        0,
        "{}",
        describe_http(&agent.metrics_text())
    );
}

/// A big body that a non-blocking client (curl) reads in many SSL_reads, some of which may
/// find no whole record yet and return -1: the response ends with its last byte.
#[test]
fn a_big_https_body_read_in_pieces_is_timed_to_its_last_byte() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let agent = MonitorAgent::start(&[]);
    let server = python_https_server(&dir, &pem, "pyb");
    let curl_name = unique_name("curlb");
    let curl = renamed_copy(dir.path(), "/usr/bin/curl", &curl_name);
    let url = format!("https://127.0.0.1:{}/bytes/40000000", server.port);
    let output = Command::new(curl)
        .args(["-sk", "-o", "/dev/null", "-w", "%{time_total}", &url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let seconds: f64 = String::from_utf8_lossy(&output.stdout).parse().unwrap();

    let labels = [("service_name", curl_name.as_str())];
    let scrape = wait_until(&agent, "curl's one HTTPS request recorded", |s| {
        s.histogram_count(CLIENT_DURATION, &labels) == Some(1)
    });
    let buckets = scrape.histogram(CLIENT_DURATION, &labels).unwrap();
    // Observed no shorter than half of what curl took (its connect and handshake included).
    let too_short = buckets
        .iter()
        .filter(|&&(le, _)| le < seconds / 2.0)
        .map(|&(_, count)| count)
        .max()
        .unwrap_or(0);
    assert_eq!(
        too_short, 0,
        "curl took {seconds} s; the agent's buckets: {buckets:?}"
    );
}

/// A process that calls OpenSSL (and so has its socket syscalls looked at for a library call
/// in progress) keeps its clear-text requests measured: one client alternates HTTPS and clear
/// text on two keep-alive connections.
#[test]
fn clear_text_requests_of_a_process_that_also_speaks_https_are_counted_exactly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let agent = MonitorAgent::start(&[]);
    let secure = python_https_server(&dir, &pem, "pym");
    let plain = Server::python();
    let client_name = unique_name("mix");
    let script = dir.path().join(format!("{client_name}.py"));
    fs::copy(fixture("mixed_client.py"), &script).unwrap();
    const EACH: u64 = 50;
    let output = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([secure.port.to_string(), plain.port.to_string()])
        .arg(EACH.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let client = |s: &Scrape, host: &str| {
        s.histogram_count(
            CLIENT_DURATION,
            &[
                ("service_name", &client_name),
                ("server_address", host),
                ("http_response_status_code", "200"),
            ],
        )
    };
    wait_until(&agent, "both kinds of request counted at both ends", |s| {
        client(s, "secure.test") == Some(EACH)
            && client(s, "plain.test") == Some(EACH)
            && server_count(s, &secure.service, 200, "/status/{id}") == Some(EACH)
            && server_count(s, &plain.service, 200, "/status/{id}") == Some(EACH)
    });
}

/// A TLS library that no process mapped when the agent started (as a container image's own
/// copy, started later, would be) is found by the scan of the processes' maps and probed, with
/// the capabilities the DaemonSet grants (uprobe_multi links), or those deploy/kubernetes/https
/// grants where the programs are perf-event uprobes: HTTPS through it is counted exactly from
/// then on, and no thread but the scanning one, for perf events, kept CAP_SYS_ADMIN.
#[test]
fn a_tls_library_first_mapped_after_start_up_is_probed_and_its_https_counted() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let capabilities = if perf_event_uprobes() {
        &DAEMONSET_HTTPS[..]
    } else {
        &DAEMONSET[..]
    };
    let agent = MonitorAgent::start_with(
        capsh_keeping(capabilities),
        &["--tls-scan-interval", "1s", "--log-level", "info"],
    );
    let probed = |s: &Scrape| s.value("monitor_tls_libraries_probed", &[]).unwrap_or(0.0);
    let at_start = probed(&agent.scrape());
    let links_at_start = bpf::held_by(agent.pid()).links.len();

    // Python's ssl module loads the copy: a file no probe sits on.
    let (server, library) = https::python_https_server_with_own_libssl(dir.path(), &pem, "pyl");
    let name = server.service.clone();
    let maps = fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(
        maps.contains(&*library.to_string_lossy()),
        "the server maps another libssl: {maps}"
    );
    wait_until(&agent, "the library mapped since start-up probed", |s| {
        probed(s) == at_start + 1.0
    });

    const REQUESTS: u64 = 40;
    let host = format!("late.test:{}", server.port);
    let client_name = https::keep_alive_https_requests(
        dir.path(),
        "pyk",
        server.port,
        (&host, "/status/201"),
        REQUESTS as usize,
    );
    wait_until(&agent, "every request to the late library's server", |s| {
        server_count(s, &name, 201, "/status/{id}") == Some(REQUESTS)
            && client_total(s, &client_name, 201) == REQUESTS
    });
    assert!(
        agent.log().contains("is measured from now on"),
        "{}",
        agent.log()
    );
    assert_threads_hold_the_run_time_set(agent.pid(), tls_scan_thread());
    assert!(bpf::held_by(agent.pid()).links.len() > links_at_start);

    // Once no process maps it (two scans of every process in a row: 6 to 12 s at this
    // interval) and it is deleted (as a removed image's files are), its probes go.
    drop(server);
    fs::remove_file(&library).unwrap();
    // (The links are dropped after the count falls, outside the agent's lock.)
    poll_until("the library no process maps released", RELEASE_WAIT, || {
        (probed(&agent.scrape()) == at_start
            && bpf::held_by(agent.pid()).links.len() == links_at_start)
            .then_some(())
    });
    assert!(
        agent
            .log()
            .contains("no process maps any more, and deleted, released")
    );
}

/// A library deleted while a process maps it (a package upgraded under a running server) is
/// no longer at its path when the agent starts: it is probed through the process's mapping of
/// it, and the server's HTTPS counted exactly.
#[test]
fn a_tls_library_deleted_before_start_up_is_probed_through_the_process_that_maps_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let (server, library) = https::python_https_server_with_own_libssl(dir.path(), &pem, "pyd");
    let name = server.service.clone();
    fs::remove_file(&library).unwrap();
    let maps = fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(
        maps.contains(&format!("{} (deleted)", library.display())),
        "the server maps another libssl: {maps}"
    );
    let agent = MonitorAgent::start(&[]);

    const REQUESTS: u64 = 40;
    let host = format!("deleted.test:{}", server.port);
    let client_name = https::keep_alive_https_requests(
        dir.path(),
        "pyk",
        server.port,
        (&host, "/status/202"),
        REQUESTS as usize,
    );
    wait_until(
        &agent,
        "every request to the deleted library's server",
        |s| {
            server_count(s, &name, 202, "/status/{id}") == Some(REQUESTS)
                && client_total(s, &client_name, 202) == REQUESTS
        },
    );
}

/// Two scans of every process in a row at a 1 s interval, with room to spare.
const RELEASE_WAIT: Duration = Duration::from_secs(60);

/// A client that goes away mid-response makes the library's write of ciphertext fail inside
/// SSL_write: the response is recorded up to its last write and counted as aborted, as a
/// failed clear-text write is.
#[test]
fn an_https_response_the_client_cuts_off_is_counted_as_aborted() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let server = python_https_server(&dir, &pem, "pya");
    let port = server.port;
    let name = server.service.clone();
    // Only this server's port: the counter is this test's alone.
    let agent = MonitorAgent::start(&["--http-ports", &port.to_string()]);
    let aborted = |s: &Scrape| s.value("monitor_http_responses_aborted_total", &[]);
    assert_eq!(aborted(&agent.scrape()), Some(0.0));

    // curl reads slowly and gives up after a second, with most of the body unread: its close
    // resets the connection, and the server's next write fails.
    let url = format!("https://127.0.0.1:{}/bytes/200000000", server.port);
    let output = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "--limit-rate", "200k"])
        .args(["--max-time", "1", &url])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(28), "curl timed out: {output:?}");
    wait_until(
        &agent,
        "the cut-off HTTPS response recorded and aborted",
        |s| server_count(s, &name, 200, "/bytes/{id}") == Some(1) && aborted(s) == Some(1.0),
    );
}

/// A TLS library built for Intel's CET (Ubuntu's and Fedora's libssl) opens each function with
/// `endbr64`, which the kernel single-steps under a uprobe, a second trap that costs a KVM
/// guest an exit to the hypervisor, where it emulates the `push` that follows: the probes go
/// past `endbr64`, on the push, and the requests are counted exactly as before.
#[test]
fn a_cet_built_tls_library_is_probed_past_endbr64_and_its_requests_counted_exactly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (server, library) = https::cet_tls_server(dir.path(), "cet");
    let code = |function: &str| code_in_process(server.pid(), &library, function, 5);
    assert_eq!(
        code("SSL_read"),
        ENDBR64_PUSH_RBP,
        "not a CET-built function"
    );
    let agent = MonitorAgent::start(&[]);

    // The kernel writes a uprobe's breakpoint (int3) into every process that maps the file.
    let probed = [0xf3, 0x0f, 0x1e, 0xfa, 0xcc];
    poll_until(
        "the breakpoint in the server's SSL_read",
        Duration::from_secs(10),
        || (code("SSL_read") == probed).then_some(()),
    );
    for function in ["SSL_write", "SSL_new"] {
        assert_eq!(code(function), probed, "{function}");
    }

    const REQUESTS: usize = 2000;
    assert_eq!(
        ab_with(&["-k"], &server.url("/cet/1234"), REQUESTS, 4),
        REQUESTS
    );
    wait_until(&agent, "every request to the CET library's server", |s| {
        server_count(s, &server.service, 200, "/cet/{id}") == Some(REQUESTS as u64)
    });
}

/// A syscall inside `SSL_read` on a descriptor that is no connection's (the stand-in library
/// wakes an event loop through an eventfd there, as Node's callbacks, which run inside its
/// calls, can) leaves the call on its socket: the requests are counted exactly. Taken for the
/// call's socket, the eventfd would get every request, and the socket every response.
#[test]
fn a_syscall_inside_ssl_read_on_another_descriptor_leaves_the_call_on_its_socket() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (server, _) =
        https::stand_in_tls_server(dir.path(), "wakes", &[("STAND_IN_WAKE_LOOP", "1")]);
    let agent = MonitorAgent::start(&[]);
    const REQUESTS: usize = 1000;
    assert_eq!(
        ab_with(&["-k"], &server.url("/wakes/1234"), REQUESTS, 4),
        REQUESTS
    );
    wait_until(
        &agent,
        "every request to the server that wakes a loop",
        |s| server_count(s, &server.service, 200, "/wakes/{id}") == Some(REQUESTS as u64),
    );
}

/// endbr64, then push %rbp.
const ENDBR64_PUSH_RBP: [u8; 5] = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];

/// The first `len` bytes of `function` (a dynamic symbol of `library`) as process `pid` has
/// them in memory: where a uprobe sits, the kernel wrote its breakpoint over them.
fn code_in_process(pid: u32, library: &Path, function: &str, len: usize) -> Vec<u8> {
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(library)
        .output()
        .expect("running nm (binutils)");
    let symbols = String::from_utf8_lossy(&nm.stdout);
    let address = symbols
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 3 && fields[2] == function)
                .then(|| u64::from_str_radix(fields[0], 16).ok())?
        })
        .unwrap_or_else(|| panic!("{function} not in {}: {symbols}", library.display()));
    // Where the library is loaded: its mapping of the file's start.
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = maps
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 6 && Path::new(fields[5]) == library && fields[2] == "00000000")
                .then(|| u64::from_str_radix(fields[0].split('-').next()?, 16).ok())?
        })
        .unwrap_or_else(|| panic!("{} not mapped: {maps}", library.display()));
    let memory = fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut code = vec![0; len];
    memory.read_exact_at(&mut code, base + address).unwrap();
    code
}
