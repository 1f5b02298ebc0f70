//! The per-CPU counters of the HTTP programs (`monitor_http_*`).

use super::*;

/// Indexes into the per-CPU `HTTP_COUNTERS` array, exported as `monitor_http_*`.
pub mod counter {
    /// Requests recognised (request lines parsed).
    pub const REQUESTS: u32 = 0;
    /// Responses paired with their request and recorded in a histogram.
    pub const RESPONSES: u32 = 1;
    /// Responses seen with no request to pair (a connection picked up mid-request).
    pub const UNMATCHED_RESPONSES: u32 = 2;
    /// Reads on a server connection, between requests, that were not an HTTP/1.x request
    /// but text (`not_http::TEXT`); the other kinds have their own counters, see
    /// [`not_http_counter`].
    pub const NOT_HTTP: u32 = 3;
    /// Requests whose connection closed before any response.
    pub const UNANSWERED: u32 = 4;
    /// Observations lost because `HTTP_DURATION` was full.
    pub const HISTOGRAM_FULL: u32 = 5;
    /// Connections not tracked because `CONNECTIONS` was full.
    pub const CONNECTIONS_FULL: u32 = 6;
    /// Route announcements written to the ring buffer.
    pub const EVENTS_SUBMITTED: u32 = 7;
    /// Route announcements lost (ring buffer full); their requests still count.
    pub const EVENTS_LOST: u32 = 8;
    /// Requests whose route was collapsed to `/<first>/{*}` by the budget.
    pub const ROUTES_COLLAPSED: u32 = 9;
    /// Requests counted under `__overflow__`.
    pub const ROUTES_OVERFLOWED: u32 = 10;
    /// Connections accepted and tracked.
    pub const CONNECTIONS_ACCEPTED: u32 = 11;
    /// Responses ended by the idle sweep (their connection stayed open without a request).
    pub const ENDED_IDLE: u32 = 12;
    /// Connections not tracked: accepted on a port outside `--http-ports`.
    pub const PORT_FILTERED: u32 = 13;
    /// Connections not tracked: accepted on a listener whose port the agent had not checked
    /// yet (a server that started listening after the agent, with `--http-ports`).
    pub const LISTENER_UNCHECKED: u32 = 14;
    /// Client connections tracked at connect.
    pub const CLIENT_CONNECTIONS: u32 = 15;
    /// Client connections dropped: their first write was not an HTTP/1.x request.
    pub const CLIENT_NOT_HTTP: u32 = 16;
    /// Client requests written.
    pub const CLIENT_REQUESTS: u32 = 17;
    /// Client requests recorded with their response.
    pub const CLIENT_RECORDED: u32 = 18;
    /// Reads that were not requests, by kind (`not_http::*`, text excepted).
    pub const NOT_HTTP_TLS: u32 = 19;
    pub const NOT_HTTP_HTTP2: u32 = 20;
    pub const NOT_HTTP_BINARY: u32 = 21;
    pub const NOT_HTTP_INVALID_METHOD: u32 = 22;
    /// Requests answered without a status line: HTTP/0.9, or a server that does not speak
    /// HTTP/1.x.
    pub const NO_STATUS_LINE: u32 = 23;
    /// Responses to reads that were not requests (a 400 to noise on a keep-alive
    /// connection): not recorded, and not taken for a pipelined request.
    pub const UNMATCHED_NOT_HTTP: u32 = 24;
    /// Responses whose writes failed because the client had reset or closed the connection
    /// (recorded with their status, up to the last write that succeeded).
    pub const RESPONSES_ABORTED: u32 = 25;
    /// Idle sweeps that walked the whole connection table instead of the epoch's candidates
    /// (a ring overflowed, a candidate could not be listed, or a sweep was missed).
    pub const IDLE_FULL_SWEEPS: u32 = 26;
    /// Server connections a process received from another over a Unix socket (SCM_RIGHTS),
    /// tracked from then on (`FileTableOffsets`).
    pub const CONNECTIONS_RECEIVED: u32 = 27;
    /// Server connections a forked child took over from its parent (`fork` in the kernel
    /// crate): found by a request line read on a descriptor nobody tracked.
    pub const CONNECTIONS_INHERITED: u32 = 28;
    /// Observations whose histogram could not be allocated when their request ended, carried
    /// to the agent on the ring buffer (`ObservationEvent`); counted as recorded too.
    pub const OBSERVATIONS_CARRIED: u32 = 29;
    /// Observations lost: their histogram could not be allocated and the ring buffer was
    /// full.
    pub const OBSERVATIONS_LOST: u32 = 30;
    /// Client responses whose status line was read before the write of their request
    /// returned (`conn_flags::ANSWERED_EARLY`).
    pub const CLIENT_ANSWERED_EARLY: u32 = 31;
    /// Connections whose HTTP was read as plain text at the TLS library (`tls` in the kernel
    /// crate), from their first request.
    pub const TLS_CONNECTIONS: u32 = 32;
    /// Plain text a TLS library call returned on a connection whose socket the programs had
    /// not seen that library use: skipped.
    pub const TLS_SOCKET_UNKNOWN: u32 = 33;
    pub const COUNT: u32 = 34;

    /// The counter of a read that was not a request, by its `not_http::*` kind.
    #[inline(always)]
    pub const fn not_http_counter(kind: u8) -> u32 {
        match kind {
            super::not_http::TLS => NOT_HTTP_TLS,
            super::not_http::HTTP2 => NOT_HTTP_HTTP2,
            super::not_http::BINARY => NOT_HTTP_BINARY,
            super::not_http::INVALID_METHOD => NOT_HTTP_INVALID_METHOD,
            _ => NOT_HTTP,
        }
    }
}
