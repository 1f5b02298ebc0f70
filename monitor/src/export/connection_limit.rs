//! Caps on the endpoint's open connections, in total and per peer: an acceptor that closes a
//! connection beyond them at once, before TLS or HTTP spend anything on it.

use std::{
    collections::HashMap,
    future::Ready,
    io,
    net::{IpAddr, Ipv6Addr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use axum_server::accept::Accept;
use prometheus::proto::MetricFamily;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::families;

/// Legitimate clients hold a few connections: a Prometheus keeps one per target (an HA pair
/// two, from two peers), a kubelet probe opens one and closes it, a person runs curl. 64 in
/// all bounds what a flood can take: one descriptor, one task and hyper's and the kernel's
/// buffers each (at worst some 0.5 MiB with a large header sent slowly, so about 32 MiB, next
/// to the DaemonSet's 128 MiB limit).
pub const TOTAL: usize = 64;
/// A quarter of the total per peer, with room for a scraper that reconnects while its old
/// connection closes: one client in a loop cannot lock out Prometheus and the probes.
pub const PER_PEER: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub total: usize,
    pub per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            total: TOTAL,
            per_peer: PER_PEER,
        }
    }
}

/// Why a connection was closed unserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Total,
    Peer,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Total => "total_limit",
            Self::Peer => "peer_limit",
        }
    }
}

/// The acceptor: clones share the counts.
#[derive(Clone, Default)]
pub struct ConnectionLimit {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    limits: Limits,
    open: Mutex<Open>,
    refused_total: AtomicU64,
    refused_peer: AtomicU64,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

impl ConnectionLimit {
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Arc::new(State {
                limits,
                ..State::default()
            }),
        }
    }

    /// A slot for one more connection from `peer`, held until the slot is dropped.
    fn admit(&self, peer: IpAddr) -> Result<Slot, Refusal> {
        let peer = peer_key(peer);
        let state = &self.state;
        let mut open = state.open.lock().unwrap_or_else(PoisonError::into_inner);
        let from_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
        let refusal = if open.total >= state.limits.total {
            Some((Refusal::Total, &state.refused_total))
        } else if from_peer >= state.limits.per_peer {
            Some((Refusal::Peer, &state.refused_peer))
        } else {
            None
        };
        if let Some((refusal, counter)) = refusal {
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(refusal);
        }
        open.total += 1;
        open.by_peer.insert(peer, from_peer + 1);
        Ok(Slot {
            state: state.clone(),
            peer,
        })
    }

    pub fn families(&self) -> Vec<Option<MetricFamily>> {
        let state = &self.state;
        let open = state
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total;
        vec![
            families::counter(
                "monitor_web_connections_refused_total",
                "Connections to /metrics and /healthz closed at once, unserved, because too \
                 many were open: in all (total_limit) or from the same peer address \
                 (peer_limit).",
            )
            .value(
                &[("reason", Refusal::Total.label())],
                state.refused_total.load(Ordering::Relaxed) as f64,
            )
            .value(
                &[("reason", Refusal::Peer.label())],
                state.refused_peer.load(Ordering::Relaxed) as f64,
            )
            .build(),
            families::gauge(
                "monitor_web_connections_open",
                "Connections to /metrics and /healthz open now, this scrape's included.",
            )
            .value(&[], open as f64)
            .build(),
        ]
    }
}

/// The peer a connection counts against: its IPv4 address (also when it comes mapped into
/// IPv6 on a dual-stack listener), or the /64 of an IPv6 one, since a single host commonly
/// has a whole /64 to take addresses from.
fn peer_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// One open connection's place in the counts, given back when the connection is dropped.
struct Slot {
    state: Arc<State>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .state
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(count) = open.by_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

impl<S> Accept<TcpStream, S> for ConnectionLimit {
    type Stream = Limited;
    type Service = S;
    type Future = Ready<io::Result<(Limited, S)>>;

    /// An error drops (closes) `stream`; the server reports it to its accept-error handler.
    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream.peer_addr().and_then(|peer| {
            self.admit(peer.ip()).map_err(|refusal| {
                io::Error::other(format!(
                    "closed unserved: too many connections open ({})",
                    refusal.label()
                ))
            })
        });
        std::future::ready(admitted.map(|slot| {
            (
                Limited {
                    stream,
                    _slot: slot,
                },
                service,
            )
        }))
    }
}

/// A connection holding its slot: the stream, read and written as it is.
pub struct Limited {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn limit(total: usize, per_peer: usize) -> ConnectionLimit {
        ConnectionLimit::new(Limits { total, per_peer })
    }

    #[test]
    fn a_peer_at_its_cap_is_refused_until_one_of_its_connections_closes() {
        let limit = limit(10, 2);
        let first = limit.admit(ip("10.0.0.1")).unwrap();
        let _second = limit.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limit.admit(ip("10.0.0.1")).err(), Some(Refusal::Peer));
        assert!(limit.admit(ip("10.0.0.2")).is_ok(), "another peer");
        drop(first);
        assert!(limit.admit(ip("10.0.0.1")).is_ok());
        assert_eq!(limit.state.refused_peer.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_total_cap_holds_across_peers() {
        let limit = limit(2, 2);
        let _a = limit.admit(ip("10.0.0.1")).unwrap();
        let b = limit.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(limit.admit(ip("10.0.0.3")).err(), Some(Refusal::Total));
        drop(b);
        assert!(limit.admit(ip("10.0.0.3")).is_ok());
        assert_eq!(limit.state.refused_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn closed_connections_leave_no_count_behind() {
        let limit = limit(4, 4);
        let slots: Vec<Slot> = ["10.0.0.1", "10.0.0.2", "::1"]
            .into_iter()
            .map(|peer| limit.admit(ip(peer)).unwrap())
            .collect();
        drop(slots);
        let open = limit.state.open.lock().unwrap();
        assert_eq!((open.total, open.by_peer.len()), (0, 0));
    }

    #[test]
    fn mapped_ipv4_is_its_ipv4_peer_and_ipv6_counts_by_its_64() {
        assert_eq!(peer_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(peer_key(ip("2001:db8:1:2:a::1")), ip("2001:db8:1:2::"));
        let limit = limit(10, 1);
        let _held = limit.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            limit.admit(ip("2001:db8:1:2::ffff")).err(),
            Some(Refusal::Peer)
        );
        assert!(limit.admit(ip("2001:db8:1:3::1")).is_ok());
    }
}
