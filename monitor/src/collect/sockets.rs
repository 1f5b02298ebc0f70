//! TCP sockets held by processes, from /proc: listening sockets and their ports (for
//! `--http-ports`), and the server side of connections that were open before the agent
//! started (established sockets on a listening port), so their next requests are measured.

use std::{
    collections::{HashMap, HashSet},
    fs,
};

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0a;

/// One row of `/proc/net/tcp` or `tcp6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    pub state: u8,
    pub inode: u64,
}

/// Parses `/proc/<pid>/net/tcp{,6}`; malformed rows are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(TcpSocket {
                local_port: port,
                state,
                inode,
            })
        })
        .collect()
}

/// What one namespace's tables say: listening sockets' ports and server-side connections'
/// ports (established sockets on a listening port), by inode.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PortsByInode {
    pub listeners: HashMap<u64, u16>,
    pub server_side: HashMap<u64, u16>,
}

pub fn classify(sockets: &[TcpSocket]) -> PortsByInode {
    let listeners: HashMap<u64, u16> = sockets
        .iter()
        .filter(|s| s.state == TCP_LISTEN && s.inode != 0)
        .map(|s| (s.inode, s.local_port))
        .collect();
    let listening: HashSet<u16> = listeners.values().copied().collect();
    let server_side = sockets
        .iter()
        .filter(|s| s.state == TCP_ESTABLISHED && s.inode != 0)
        .filter(|s| listening.contains(&s.local_port))
        .map(|s| (s.inode, s.local_port))
        .collect();
    PortsByInode {
        listeners,
        server_side,
    }
}

fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A socket held by a process: (tgid, fd) and its local port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeldSocket {
    pub tgid: u32,
    pub fd: u32,
    pub port: u16,
}

/// Every listening socket and every server-side connection on the host, by holder.
#[derive(Debug, Default)]
pub struct HostSockets {
    pub listeners: Vec<HeldSocket>,
    pub server_connections: Vec<HeldSocket>,
}

fn tables_of(pid: u32) -> Vec<TcpSocket> {
    let mut sockets = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            sockets.extend(parse_tcp_table(&text));
        }
    }
    sockets
}

fn socket_inode(link: &std::path::Path) -> Option<u64> {
    parse_socket_link(fs::read_link(link).ok()?.to_str()?)
}

/// The inode of an fd link's target `socket:[12345]`; `None` for anything else.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Scans /proc: every process's socket fds against its network namespace's TCP tables
/// (containers have their own). The agent's own sockets are left out.
pub fn scan(own_tgid: u32) -> HostSockets {
    let pids = pids();
    let mut namespaces: HashSet<String> = HashSet::new();
    let mut ports = PortsByInode::default();
    for &pid in &pids {
        let Ok(namespace) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if namespaces.insert(namespace.to_string_lossy().into_owned()) {
            let found = classify(&tables_of(pid));
            ports.listeners.extend(found.listeners);
            ports.server_side.extend(found.server_side);
        }
    }
    let mut host = HostSockets::default();
    for pid in pids.into_iter().filter(|&pid| pid != own_tgid) {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in fds.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Some(inode) = socket_inode(&entry.path()) else {
                continue;
            };
            let held = |port| HeldSocket {
                tgid: pid,
                fd,
                port,
            };
            if let Some(&port) = ports.listeners.get(&inode) {
                host.listeners.push(held(port));
            } else if let Some(&port) = ports.server_side.get(&inode) {
                host.server_connections.push(held(port));
            }
        }
    }
    host
}

/// The port a process's listening socket is bound to, if it is a TCP listener.
pub fn listener_port(tgid: u32, fd: u32) -> Option<u16> {
    let inode = socket_inode(std::path::Path::new(&format!("/proc/{tgid}/fd/{fd}")))?;
    classify(&tables_of(tgid)).listeners.get(&inode).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:0016 0A00020F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
   garbage line
";

    #[test]
    fn rows_are_parsed_and_garbage_skipped() {
        let sockets = parse_tcp_table(TCP);
        assert_eq!(sockets.len(), 4);
        assert_eq!(
            sockets[0],
            TcpSocket {
                local_port: 8080,
                state: TCP_LISTEN,
                inode: 1001
            }
        );
    }

    #[test]
    fn only_the_server_side_of_connections_to_listening_ports_is_taken() {
        // 1001 listens on :8080; 1002 was accepted on it (server side); 1003 is the client's
        // end; port 22 (1004) is not listening in this table.
        let ports = classify(&parse_tcp_table(TCP));
        assert_eq!(ports.listeners, HashMap::from([(1001, 8080)]));
        assert_eq!(ports.server_side, HashMap::from([(1002, 8080)]));
    }

    #[test]
    fn socket_links_give_their_inode() {
        assert_eq!(parse_socket_link("socket:[1002]"), Some(1002));
        assert_eq!(parse_socket_link("pipe:[1002]"), None);
        assert_eq!(parse_socket_link("socket:[]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn this_test_process_own_listener_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        use std::os::fd::AsRawFd as _;
        let fd = listener.as_raw_fd() as u32;
        assert_eq!(listener_port(std::process::id(), fd), Some(port));
        let host = scan(0);
        assert!(host.listeners.iter().any(|s| s.fd == fd && s.port == port));
    }
}
