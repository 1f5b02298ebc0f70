//! What `monitor-ebpf/src/server.rs` does with the reads of a request line, on the host: the
//! templater runs over each read's captured bytes and is kept in the connection between
//! reads; the path bytes are kept (at most `MAX_PATH_LEN`) for the route's announcement.

use monitor_common::http::{CAPTURE_LEN, Fed, MAX_PATH_LEN, RouteTemplater};

/// A request line the kernel finished: what it counted and what it announced.
pub struct KernelRoute {
    pub hash: u64,
    pub collapsed_hash: u64,
    /// The bytes of the route announcement (`HttpEvent::path`).
    pub announced: Vec<u8>,
}

/// Runs the request line in `reads` (each at most `CAPTURE_LEN` bytes; the target starts at
/// `target` in the first) through the kernel's steps. `None` while the line is still open.
pub fn request_line(reads: &[&[u8]], target: usize) -> Option<KernelRoute> {
    let mut templater = RouteTemplater::new();
    let mut path = Vec::new();
    for (i, read) in reads.iter().enumerate() {
        assert!(read.len() <= CAPTURE_LEN, "the model takes captured reads");
        let from = if i == 0 { target } else { 0 };
        let bytes = &read[from..];
        let ended = bytes
            .iter()
            .any(|&b| templater.feed(b, &mut ()) == Fed::End);
        // `save_partial_path`/`append_partial_path`, and `announce`'s clamp.
        let room = MAX_PATH_LEN - path.len();
        path.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if ended {
            return Some(KernelRoute {
                hash: templater.finish(&mut ()),
                collapsed_hash: templater.collapsed_hash(),
                announced: path,
            });
        }
        // The kernel ends a line at a full capture; the templater must have ended it already.
        assert!(
            read.len() < CAPTURE_LEN,
            "a full capture ({} path bytes so far) did not end the request line",
            templater.path_len
        );
    }
    None
}
