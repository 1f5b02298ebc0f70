//! The HTTP families of `/metrics`: durations (server and client), client errors, and the
//! agent's own HTTP counters.

use monitor_common::http::{client_error, counter, method, not_http, role};
use prometheus::proto::MetricFamily;

use super::families::{self, BucketCounts};
use crate::{collect::http::InFlightAtExit, model::http::HttpLedger};

const NS_PER_SECOND: f64 = 1e9;

fn method_name(method: u8) -> &'static str {
    method::NAMES
        .get(usize::from(method))
        .copied()
        .unwrap_or(method::NAMES[0])
}

pub fn families(http: &HttpLedger, bounds: &[f64]) -> Vec<Option<MetricFamily>> {
    let mut all = vec![
        durations(
            http,
            bounds,
            role::SERVER,
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, from the read that brought the request's first \
             bytes to the write that sent the response's last bytes.",
            "http_route",
        ),
        durations(
            http,
            bounds,
            role::CLIENT,
            "http_client_request_duration_seconds",
            "Duration of HTTP client requests, from the write of the request's first bytes to \
             the read of the response's last bytes.",
            "server_address",
        ),
        client_errors(http),
        connect_errors(http),
    ];
    all.extend(counters(http));
    all
}

fn durations(
    http: &HttpLedger,
    bounds: &[f64],
    wanted: u8,
    name: &str,
    help: &str,
    target_label: &'static str,
) -> Option<MetricFamily> {
    http.series()
        .filter(|(key, _)| key.role == wanted)
        .fold(families::histogram(name, help), |family, (key, counts)| {
            let status = key.status.to_string();
            let mut labels = key.service.labels();
            labels.extend([
                ("http_request_method", method_name(key.method)),
                ("http_response_status_code", status.as_str()),
                (target_label, key.target.as_str()),
            ]);
            family.buckets(
                &labels,
                BucketCounts {
                    bounds,
                    counts: &counts.buckets[..bounds.len()],
                    above_last: counts.buckets[bounds.len()..].iter().sum(),
                    sum: counts.sum_ns as f64 / NS_PER_SECOND,
                },
            )
        })
        .build()
}

fn client_errors(http: &HttpLedger) -> Option<MetricFamily> {
    http.client_errors()
        .fold(
            families::counter(
                "http_client_request_errors_total",
                "HTTP client requests without a complete response, by kind: no_response (the \
                 connection closed or was reset first), response_cut_off (it stopped before its \
                 declared length or last chunk).",
            ),
            |family, (key, count)| {
                let mut labels = key.service.labels();
                labels.extend([
                    ("http_request_method", method_name(key.method)),
                    ("server_address", key.server_address.as_str()),
                    (
                        "error_type",
                        client_error::NAMES
                            .get(usize::from(key.kind))
                            .copied()
                            .unwrap_or("other"),
                    ),
                ]);
                family.value(&labels, count as f64)
            },
        )
        .build()
}

fn connect_errors(http: &HttpLedger) -> Option<MetricFamily> {
    http.connect_errors()
        .fold(
            families::counter(
                "tcp_client_connect_errors_total",
                "Outgoing TCP connections that failed (refused, unreachable, timed out, no local \
                 port left, blocked by the local firewall), before any HTTP: by the service \
                 that tried.",
            ),
            |family, (service, count)| family.value(&service.labels(), count as f64),
        )
        .build()
}

/// Reads where a request should have started, by what they were (`not_http::NAMES`).
fn not_http_reads(http: &HttpLedger) -> Option<MetricFamily> {
    let kinds = [
        not_http::TLS,
        not_http::HTTP2,
        not_http::BINARY,
        not_http::INVALID_METHOD,
        not_http::TEXT,
    ];
    kinds
        .into_iter()
        .fold(
            families::counter(
                "monitor_http_reads_not_http_total",
                "Reads on server connections, where a request should start, that were not an \
                 HTTP/1.x request, by reason: tls (a TLS handshake: a TLS client on a clear-text \
                 port, or an HTTPS connection, whose plain text is measured apart where it goes \
                 through a probed libssl: monitor_http_tls_connections_total), http2 \
                 (the HTTP/2 preface), binary (another protocol, or noise), invalid_method (a \
                 request line whose method is not 3 to 12 upper-case letters), text (anything \
                 else). A connection that never spoke HTTP is dropped at the first.",
            ),
            |family, kind| {
                let value = http.kernel_counters[counter::not_http_counter(kind) as usize];
                family.value(
                    &[("reason", not_http::NAMES[usize::from(kind)])],
                    value as f64,
                )
            },
        )
        .build()
}

/// The kernel's HTTP counters and the model's: what was seen, recorded, skipped and why.
fn counters(http: &HttpLedger) -> Vec<Option<MetricFamily>> {
    let kernel = |index: u32| http.kernel_counters[index as usize] as f64;
    let single = |name: &str, help: &str, value: f64| {
        families::counter(name, help).value(&[], value).build()
    };
    vec![
        single(
            "monitor_http_requests_seen_total",
            "HTTP/1.x requests recognised on server connections.",
            kernel(counter::REQUESTS),
        ),
        single(
            "monitor_http_requests_recorded_total",
            "Server requests paired with their response and recorded in a duration histogram.",
            kernel(counter::RESPONSES),
        ),
        single(
            "monitor_http_client_requests_seen_total",
            "HTTP/1.x requests written on client connections.",
            kernel(counter::CLIENT_REQUESTS),
        ),
        single(
            "monitor_http_client_requests_recorded_total",
            "Client requests recorded with their complete response.",
            kernel(counter::CLIENT_RECORDED),
        ),
        single(
            "monitor_http_client_responses_before_request_total",
            "Client responses read before the write of their request had returned: a client \
             that reads on another thread than it writes (Java's, Go's), answered while that \
             write was still in the kernel (an upload refused before it was read, a writer \
             preempted in the write). Recorded when the write returns, with the time from \
             then to the response's end: 0 when the whole response came first.",
            kernel(counter::CLIENT_ANSWERED_EARLY),
        ),
        single(
            "monitor_http_responses_ended_idle_total",
            "Responses ended by the idle timeout: their keep-alive connection stayed open \
             without a write or a new request.",
            kernel(counter::ENDED_IDLE),
        ),
        single(
            "monitor_http_idle_sweeps_full_total",
            "Idle sweeps that walked the whole connection table (about a millisecond at its \
             default size) instead of the connections whose responses started in the last \
             timeout: a candidate ring overflowed or a sweep was missed.",
            kernel(counter::IDLE_FULL_SWEEPS),
        ),
        single(
            "monitor_http_connections_received_total",
            "Server connections a process received from another over a Unix socket (Node's \
             cluster module and pm2 accept in the primary and pass each connection to a \
             worker), tracked from then on.",
            kernel(counter::CONNECTIONS_RECEIVED),
        ),
        single(
            "monitor_http_connections_inherited_total",
            "Server connections a forked child took over from its parent (a forking server \
             accepts in the parent and serves in a child), found by the request line the \
             child read on them.",
            kernel(counter::CONNECTIONS_INHERITED),
        ),
        families::counter(
            "monitor_http_requests_unanswered_total",
            "Server requests without an HTTP/1.x response, by reason: closed (the connection \
             closed first), no_status_line (answered without one: HTTP/0.9).",
        )
        .value(&[("reason", "closed")], kernel(counter::UNANSWERED))
        .value(
            &[("reason", "no_status_line")],
            kernel(counter::NO_STATUS_LINE),
        )
        .build(),
        families::counter(
            "monitor_http_responses_unmatched_total",
            "Server responses with no request to pair, by reason: request_not_seen (a \
             connection picked up mid-request), not_http_read (the answer to bytes that were \
             not a request, such as a 400 to noise).",
        )
        .value(
            &[("reason", "request_not_seen")],
            kernel(counter::UNMATCHED_RESPONSES),
        )
        .value(
            &[("reason", "not_http_read")],
            kernel(counter::UNMATCHED_NOT_HTTP),
        )
        .build(),
        not_http_reads(http),
        single(
            "monitor_http_responses_aborted_total",
            "Server responses cut short because the client reset or closed the connection \
             (recorded with their status, up to the last write that succeeded).",
            kernel(counter::RESPONSES_ABORTED),
        ),
        single(
            "monitor_http_connections_tracked_total",
            "Server connections the kernel started tracking at accept.",
            kernel(counter::CONNECTIONS_ACCEPTED),
        ),
        families::counter(
            "monitor_http_client_connections_total",
            "Client connections followed from connect, and those dropped because their first \
             write was not HTTP/1.x (DNS over connected UDP, TLS, other protocols).",
        )
        .value(
            &[("outcome", "tracked")],
            kernel(counter::CLIENT_CONNECTIONS),
        )
        .value(&[("outcome", "not_http")], kernel(counter::CLIENT_NOT_HTTP))
        .build(),
        single(
            "monitor_http_tls_connections_total",
            "HTTPS connections, server and client, whose HTTP/1.x the kernel reads as plain \
             text at the TLS library's SSL_read and SSL_write (see monitor_tls_libraries_probed).",
            kernel(counter::TLS_CONNECTIONS),
        ),
        single(
            "monitor_http_tls_calls_skipped_total",
            "Plain text that a TLS library call moved on a socket the kernel could not tell (a \
             call served from the library's buffer on a connection it had not seen; through \
             memory BIOs, a read with no socket read on its thread in the second before, or a \
             write whose ciphertext did not go out on its thread): skipped.",
            kernel(counter::TLS_SOCKET_UNKNOWN),
        ),
        single(
            "monitor_http_route_events_total",
            "Announcements the kernel submitted to the agent (new routes, server addresses and \
             listeners only).",
            kernel(counter::EVENTS_SUBMITTED),
        ),
        families::counter(
            "monitor_http_events_dropped_total",
            "HTTP observations or announcements the kernel could not record, by reason.",
        )
        .value(
            &[("reason", "histogram_full")],
            kernel(counter::HISTOGRAM_FULL),
        )
        .value(
            &[("reason", "connections_full")],
            kernel(counter::CONNECTIONS_FULL),
        )
        .value(
            &[("reason", "route_event_lost")],
            kernel(counter::EVENTS_LOST),
        )
        .value(
            &[("reason", "observation_lost")],
            kernel(counter::OBSERVATIONS_LOST),
        )
        .build(),
        single(
            "monitor_http_observations_carried_total",
            "Requests whose histogram the kernel could not allocate when they ended (a burst \
             of new routes or statuses), carried to the agent on the ring buffer and counted \
             all the same.",
            kernel(counter::OBSERVATIONS_CARRIED),
        ),
        families::counter(
            "monitor_http_connections_skipped_total",
            "Accepted connections not tracked with --http-ports: on another port, or on a \
             listener whose port the agent had not checked yet.",
        )
        .value(
            &[("reason", "port_filtered")],
            kernel(counter::PORT_FILTERED),
        )
        .value(
            &[("reason", "listener_unchecked")],
            kernel(counter::LISTENER_UNCHECKED),
        )
        .build(),
        families::counter(
            "monitor_http_routes_limited_total",
            "Requests counted under a collapsed route (/<first>/{*}) or __overflow__ because a \
             budget was spent (the kernel's per process, or the agent's per service).",
        )
        .value(
            &[("outcome", "collapsed")],
            kernel(counter::ROUTES_COLLAPSED) + http.collapsed as f64,
        )
        .value(
            &[("outcome", "overflow")],
            kernel(counter::ROUTES_OVERFLOWED) + http.overflowed as f64,
        )
        .build(),
        single(
            "monitor_http_route_mismatches_total",
            "Announcements whose bytes did not give the announced hash (not learnt).",
            http.route_text_mismatches() as f64,
        ),
    ]
}

/// Requests the kernel could not end because their process exited first.
pub fn in_flight_at_exit(counts: InFlightAtExit) -> Option<MetricFamily> {
    families::counter(
        "monitor_http_requests_in_flight_at_exit_total",
        "Requests in progress when their process exited without closing the connection, \
         which no histogram records: role=server, not answered yet; role=client, without \
         their whole response. Responses already written wait for the idle timeout and are \
         recorded.",
    )
    .value(&[("role", "server")], counts.server as f64)
    .value(&[("role", "client")], counts.client as f64)
    .build()
}
