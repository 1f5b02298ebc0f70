//! `/proc/<pid>/cgroup`: the container and pod a process runs in, and its systemd service.
//!
//! Input: the file's text (any bytes, read lossily as the agent does).
//! Checks: an id is 64 lower-case hex digits found in the text; a pod UID is 36 hex digits
//! and dashes; a line that holds no id gives no container. A service's name is not empty,
//! has no control character, path separator, template instance or `.service` suffix, and
//! comes from a line that names a `.service`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::collect::identity::{container_of, service_unit};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(unit) = service_unit(&text) {
        assert!(!unit.is_empty());
        assert!(!unit.chars().any(char::is_control), "{unit:?}");
        assert!(!unit.contains(['/', '@']), "{unit:?}");
        assert!(!unit.ends_with(".service"), "{unit:?}");
        assert!(text.contains(".service"));
    }
    let Some(container) = container_of(&text) else {
        return;
    };
    assert_eq!(container.id.len(), 64);
    assert!(
        container
            .id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{:?}",
        container.id
    );
    assert!(text.to_ascii_lowercase().contains(&container.id));
    if let Some(uid) = &container.pod_uid {
        assert_eq!(uid.len(), 36);
        assert!(
            uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{uid:?}"
        );
    }
});
