//! `/proc/<pid>/net/tcp{,6}` and the fd links of `/proc/<pid>/fd`: listening sockets and the
//! server side of connections.
//!
//! Input: a table's text (any bytes, read lossily); each line is also tried as a link target.
//! Checks: at most one socket per row; a server-side connection is on a listening port; a
//! link gives an inode only when it is `socket:[N]`.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use monitor::collect::sockets::{classify, parse_socket_link, parse_tcp_table};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let sockets = parse_tcp_table(&text);
    assert!(sockets.len() <= text.lines().count().saturating_sub(1));
    let ports = classify(&sockets);
    let listening: HashSet<u16> = ports.listeners.values().copied().collect();
    for (&inode, port) in &ports.server_side {
        assert_ne!(inode, 0);
        assert!(listening.contains(port));
    }
    assert!(!ports.listeners.contains_key(&0));
    for line in text.lines() {
        if parse_socket_link(line).is_some() {
            assert!(
                line.starts_with("socket:[") && line.ends_with(']'),
                "{line:?}"
            );
        }
    }
});
