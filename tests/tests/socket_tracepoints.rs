//! `--syscall-hook socket-tracepoints`: the HTTP programs at the kernel's socket tracepoints
//! (`sock:sock_recv_length`, `sock:sock_send_length`) for reads and writes, and at the exits
//! of accept, connect, sendfile and getsockopt, count both ends as exactly as at every
//! syscall's exit. (Not in the second pass of `cargo xtask test`, whose `--syscall-hook`
//! would override this one.)

use monitor_tests::{
    MonitorAgent,
    http::{client_total, server_count, service_total, wait_until},
    servers::{STATIC_FILES, Server, ab, ab_with},
};

#[test]
fn both_ends_are_counted_exactly_at_the_socket_tracepoints() {
    let agent = MonitorAgent::start(&["--syscall-hook", "socket-tracepoints"]);
    let scrape = agent.scrape();
    for hook in ["sock_recv_length", "sock_send_length"] {
        assert_eq!(
            scrape.value(
                "monitor_bpf_program_info",
                &[("hook", hook), ("hook_kind", "tp_btf")]
            ),
            Some(1.0),
            "{hook} not attached:\n{}",
            agent.log()
        );
    }
    let server = Server::lighttpd();
    let [(small, _), (large, _)] = STATIC_FILES;
    // Keep-alive; a new connection per request (accept and close, fds reused); large files,
    // which lighttpd sends with sendfile.
    let done = (
        ab(&server.url(small), 10_000, 16),
        ab_with(&[], &server.url("/missing"), 1_000, 8),
        ab(&server.url(large), 200, 4),
    );
    assert_eq!(done, (10_000, 1_000, 200));
    let scrape = wait_until(&agent, "every request counted at both ends", |scrape| {
        server_count(scrape, &server.service, 200, small) == Some(10_000)
            && server_count(scrape, &server.service, 404, "/missing") == Some(1_000)
            && server_count(scrape, &server.service, 200, large) == Some(200)
            && client_total(scrape, "ab", 200) == 10_200
            && client_total(scrape, "ab", 404) == 1_000
    });
    assert_eq!(
        service_total(&scrape, &server.service),
        11_200,
        "nothing else, nothing twice"
    );
}
