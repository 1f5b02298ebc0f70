//! Finds the server side of TCP connections that were open before the agent started, so their
//! next requests are measured too: established sockets whose local port is a listening port
//! of the same network namespace, and the (process, fd) pairs that hold them.

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

/// Inodes of established sockets on a listening port, from one namespace's tables.
pub fn server_side_inodes(sockets: &[TcpSocket]) -> HashSet<u64> {
    let listening: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TCP_LISTEN)
        .map(|s| s.local_port)
        .collect();
    sockets
        .iter()
        .filter(|s| s.state == TCP_ESTABLISHED && s.inode != 0)
        .filter(|s| listening.contains(&s.local_port))
        .map(|s| s.inode)
        .collect()
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

/// (tgid, fd) of every server-side connection on the host, except the agent's own.
pub fn server_connections(own_tgid: u32) -> HashSet<(u32, u32)> {
    let pids = pids();
    // Tables per network namespace: containers have their own.
    let mut tables: HashMap<String, ()> = HashMap::new();
    let mut inodes = HashSet::new();
    for &pid in &pids {
        let Ok(namespace) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let namespace = namespace.to_string_lossy().into_owned();
        if tables.insert(namespace, ()).is_some() {
            continue;
        }
        let mut sockets = Vec::new();
        for table in ["tcp", "tcp6"] {
            if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
                sockets.extend(parse_tcp_table(&text));
            }
        }
        inodes.extend(server_side_inodes(&sockets));
    }
    let mut found = HashSet::new();
    if inodes.is_empty() {
        return found;
    }
    for pid in pids.into_iter().filter(|&pid| pid != own_tgid) {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in fds.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if inode.is_some_and(|inode| inodes.contains(&inode)) {
                found.insert((pid, fd));
            }
        }
    }
    found
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
        // 1002: accepted on :8080 (server side). 1003: the client's end. 1004: port 22 is not
        // listening in this table.
        let inodes = server_side_inodes(&parse_tcp_table(TCP));
        assert_eq!(inodes, HashSet::from([1002]));
    }
}
