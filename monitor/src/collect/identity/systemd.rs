//! The systemd service a host process runs in, from its cgroup: on a host without containers,
//! the unit is how its operators name a service (`shopfront.service` runs `python3 app.py`).

/// The service unit `/proc/<pid>/cgroup` puts the process in, without `.service` or a
/// template's instance (`worker@2.service`: `worker`). None outside a service (a login
/// session's or another scope, the root), for units that run other people's programs (ssh,
/// cron, a CI runner, a process manager) or name only the server software that runs an
/// application (`gunicorn.service`, `php8.2-fpm.service`): the command line names those
/// better.
pub fn service_unit(cgroup: &str) -> Option<String> {
    let path = systemd_path(cgroup)?;
    // The innermost unit: a scope inside a service (a user's tmux, `user@1000.service/
    // init.scope`) is not that service.
    let unit = path
        .split('/')
        .rev()
        .find(|segment| segment.ends_with(".service") || segment.ends_with(".scope"))?;
    let name = unit.strip_suffix(".service")?;
    let name = name.split_once('@').map_or(name, |(template, _)| template);
    let name = unescape(name);
    (is_unit_name(&name) && !names_no_application(&name)).then_some(name)
}

/// The characters systemd allows in a unit's name (`-` and the rest escaped into them).
fn is_unit_name(name: &str) -> bool {
    !name.is_empty()
        && !name.ends_with(".service")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// The path in the unified hierarchy (`0::/system.slice/x.service`), else in systemd's own
/// v1 hierarchy (`1:name=systemd:/system.slice/x.service`, hybrid and legacy set-ups).
fn systemd_path(cgroup: &str) -> Option<&str> {
    let mut named = None;
    for line in cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if hierarchy == "0" && controllers.is_empty() && path != "/" {
            return Some(path);
        }
        if controllers == "name=systemd" {
            named = Some(path);
        }
    }
    named
}

/// systemd's escapes in unit names: `\x2d` for `-` and the like.
fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("\\x") {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 2..at + 4)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match code {
            Some(byte) if byte.is_ascii() => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            _ => {
                out.push_str("\\x");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Units whose processes are not one application: logins, schedulers, runners and process
/// managers start whatever someone asks; container engines and the kubelet run containers
/// (named by the container rules); systemd's own; and server software that hosts
/// applications, whose scripts name them.
const NOT_AN_APPLICATION: &[&str] = &[
    // Logins and terminals.
    "ssh",
    "sshd",
    "getty",
    "serial-getty",
    "console-getty",
    "container-getty",
    "user",
    "login",
    "tmux",
    "screen",
    // Schedulers and runners.
    "cron",
    "crond",
    "anacron",
    "atd",
    "rc-local",
    "gitlab-runner",
    "buildkite-agent",
    "actions.runner",
    "jenkins",
    // Process managers.
    "supervisor",
    "supervisord",
    "circus",
    "pm2",
    // Containers.
    "containerd",
    "docker",
    "podman",
    "crio",
    "kubelet",
    "k3s",
    "k3s-agent",
    "snapd",
    // Application servers hosting scripts.
    "gunicorn",
    "uwsgi",
    "uvicorn",
    "puma",
    "unicorn",
    "passenger",
    "tomcat",
    "jetty",
    "wildfly",
    "php-fpm",
    "node",
    "python",
    "java",
    "ruby",
];

fn names_no_application(name: &str) -> bool {
    // The name without a trailing version (`tomcat10`, `python3.11`; the same name without
    // one); PHP's version is inside (`php8.2-fpm`), pm2 adds its user (`pm2-root`).
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let versioned_fpm = name.starts_with("php") && name.ends_with("-fpm");
    NOT_AN_APPLICATION.contains(&base)
        || versioned_fpm
        || name.starts_with("pm2-")
        || name.starts_with("systemd-")
        || name.starts_with("cloud-")
        // `systemd-run`'s transient units: `run-u42`, `run-r3f2a…`, `run-p1234-i1235`.
        || name.starts_with("run-")
        || is_hex_id(name)
}

/// A hash or UUID (a generated unit's name), not a name an operator gave. Digits in words
/// stay (`shop2`, `api-v2`): unit names are chosen, unlike the path segments
/// `launchers::looks_like_id` is made for.
fn is_hex_id(name: &str) -> bool {
    name.len() >= 8
        && name.bytes().any(|b| b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}
