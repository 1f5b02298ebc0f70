//! How processes are named the way their owners name them: OpenTelemetry's service name
//! from the environment, the container and Kubernetes pod from the cgroup and the kubelet's
//! pod log directories, the systemd service of a host process, and the script an interpreter
//! runs.
//!
//! Pure parsers here (tested from fixtures); `process` reads the files.

mod launchers;
mod systemd;

pub use launchers::app_directory;
pub use systemd::service_unit;

use std::{collections::HashMap, fs, path::Path};

/// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, from a process's
/// environment (`/proc/<pid>/environ`: NUL-separated `KEY=value`).
pub fn otel_service_name(environ: &[u8]) -> Option<String> {
    let mut attributes = None;
    for entry in environ.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        if let Some(name) = entry.strip_prefix("OTEL_SERVICE_NAME=") {
            let name = name.trim();
            if !name.is_empty() {
                return Some(name.to_owned());
            }
        } else if let Some(value) = entry.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
            attributes = value.split(',').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                if key.trim() != "service.name" {
                    return None;
                }
                // Trimmed once decoded too: `%20` is a blank.
                let name = percent_decode(value.trim()).trim().to_owned();
                (!name.is_empty()).then_some(name)
            });
        }
    }
    attributes
}

/// OTEL_RESOURCE_ATTRIBUTES values are percent-encoded (W3C baggage style).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A container, as its cgroup path shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// The 64-hex-digit id.
    pub id: String,
    /// The pod's UID (dashed form) when the path is a Kubernetes pod's.
    pub pod_uid: Option<String>,
}

/// Finds the container in `/proc/<pid>/cgroup`. Knows the shapes kubelets (cgroupfs and
/// systemd drivers), containerd, CRI-O, Docker and Podman give: a 64-hex-digit segment, bare
/// or as `<runtime>-<id>.scope`; `pod<uid>` or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// before it.
pub fn container_of(cgroup: &str) -> Option<ContainerRef> {
    for line in cgroup.lines() {
        // `hierarchy:controllers:path`; v2 has one line `0::/path`.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let mut pod_uid = None;
        for segment in path.split('/') {
            if let Some(uid) = pod_uid_of(segment) {
                pod_uid = Some(uid);
            }
            if let Some(id) = container_id_of(segment) {
                return Some(ContainerRef { id, pod_uid });
            }
        }
    }
    None
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope` (not `libpod-conmon-`, podman's monitor).
fn container_id_of(segment: &str) -> Option<String> {
    let core = segment.strip_suffix(".scope").unwrap_or(segment);
    if core.contains("conmon") {
        return None;
    }
    let id = core.rsplit('-').next()?;
    is_container_id(id).then(|| id.to_ascii_lowercase())
}

/// `pod<uid>` (cgroupfs) or `kubepods-burstable-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    let core = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = match core.strip_prefix("pod") {
        Some(uid) => uid,
        None => &core[core.rfind("-pod")? + 4..],
    };
    let uid = uid.replace('_', "-");
    let looks_like_uid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    looks_like_uid.then_some(uid)
}

/// A pod as the kubelet's log directory names it: `<namespace>_<pod>_<uid>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Container directories under it.
    pub containers: Vec<String>,
}

/// Parses a pod log directory's name. Namespaces and pod names cannot contain `_`, so the
/// split is unambiguous.
pub fn parse_pod_dir(name: &str) -> Option<(String, String, String)> {
    let mut parts = name.splitn(3, '_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (!namespace.is_empty() && !pod.is_empty() && uid.len() == 36)
        .then(|| (namespace.to_owned(), pod.to_owned(), uid.to_owned()))
}

/// The pods of a node by UID, from its pod log directory (`/var/log/pods`).
pub fn scan_pod_logs(root: &Path) -> HashMap<String, Pod> {
    let Ok(entries) = fs::read_dir(root) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (namespace, name, uid) = parse_pod_dir(&name)?;
            let mut containers: Vec<String> = fs::read_dir(entry.path())
                .ok()?
                .flatten()
                .filter(|c| c.path().is_dir())
                .map(|c| c.file_name().to_string_lossy().into_owned())
                .collect();
            containers.sort();
            Some((
                uid.clone(),
                Pod {
                    namespace,
                    name,
                    uid,
                    containers,
                },
            ))
        })
        .collect()
}

/// Which of a pod's containers has this id: from the kubelet's symlinks
/// `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`, else the pod's only container.
pub fn container_name(pod: &Pod, container_id: &str, containers_dir: &Path) -> Option<String> {
    let prefix = format!("{}_{}_", pod.name, pod.namespace);
    let suffix = format!("-{container_id}.log");
    if let Ok(links) = fs::read_dir(containers_dir) {
        for link in links.flatten() {
            let name = link.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&prefix)
                && let Some(container) = rest.strip_suffix(&suffix)
            {
                return Some(container.to_owned());
            }
        }
    }
    match pod.containers.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// A command line's arguments from `/proc/<pid>/cmdline` (NUL-separated; empty ones dropped).
pub fn cmdline_args(cmdline: &[u8]) -> Vec<String> {
    cmdline
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The script or main module an interpreter runs, from its command line: `python3 app.py` ->
/// `app`, `python -m my.module` -> `module`, `node server.js` -> `server`, `java -jar
/// billing.jar` -> `billing`, `java com.shop.Main` -> `Main`, `ruby app.rb`, `php index.php`;
/// for a Python launcher, the application it runs (`gunicorn shop.wsgi:application` ->
/// `shop`), and for a server that retitled itself or embeds the interpreter, the application
/// it names (`puma ... [shop]`, `uwsgi --module shop:app`; see `launchers`); none for inline
/// code (`python -c`, `node -e`) or `php -S addr` without a router script.
pub fn script_name(executable: &str, args: &[String]) -> Option<String> {
    let name = match script_arg(executable, args) {
        Some(Script { name, rest, .. }) => launchers::launched_app(&name, rest).unwrap_or(name),
        None => launchers::retitled_app(args).or_else(|| launchers::uwsgi_app(executable, args))?,
    };
    // `python -m pkg.` or `node dist/` name nothing.
    Some(name).filter(|name| !name.is_empty())
}

/// For a program named after the directory it runs in (`launchers::directory_suffix`: puma,
/// sidekiq, a framework's launcher that Node runs from `node_modules`, such as `node
/// /srv/shop/node_modules/.bin/next start`), what is added to the directory's name.
pub fn directory_suffix(executable: &str, args: &[String]) -> Option<&'static str> {
    let script = script_arg(executable, args);
    let package_program = interpreter(executable, args) == Some(Interpreter::Node)
        && script
            .as_ref()
            .is_some_and(|script| script.path.contains("node_modules/"));
    launchers::directory_suffix(script.map(|s| s.name).as_deref(), args, package_program)
}

/// Whether the process is a child that Python's `multiprocessing` started to work for its
/// parent (`uvicorn --workers 4`, `hypercorn -w 4`): `python3 -c 'from multiprocessing.spawn
/// import spawn_main; ...' --multiprocessing-fork`. It is its parent's service.
pub fn is_multiprocessing_child(executable: &str, args: &[String]) -> bool {
    interpreter(executable, args) == Some(Interpreter::Python)
        && (args.iter().any(|arg| arg == "--multiprocessing-fork")
            || args
                .windows(2)
                .any(|pair| pair[0] == "-c" && pair[1].starts_with("from multiprocessing.")))
}

/// What an interpreter runs, from its command line.
struct Script<'a> {
    /// The script's or main module's name.
    name: String,
    /// The argument it was named from.
    path: &'a str,
    /// The arguments after it: the script's own.
    rest: &'a [String],
}

/// The interpreter a command line runs. A script run by its `#!` line has the script's name
/// for its executable (`/usr/bin/gunicorn`: `gunicorn`); the interpreter is then the command
/// line's first word.
fn interpreter(executable: &str, args: &[String]) -> Option<Interpreter> {
    Interpreter::of(executable).or_else(|| {
        let program = args.first()?;
        Interpreter::of(program.rsplit('/').next().unwrap_or(program))
    })
}

fn script_arg<'a>(executable: &str, args: &'a [String]) -> Option<Script<'a>> {
    let interpreter = interpreter(executable, args)?;
    let script = |name: String, path: &'a String, rest: &'a [String]| Script {
        name,
        path: path.as_str(),
        rest,
    };
    let mut i = 1;
    // The argument at `i`, and those after it.
    let at = |i: usize| {
        args.get(i)
            .map(|arg| (arg, &args[(i + 1).min(args.len())..]))
    };
    while let Some((arg, rest)) = at(i) {
        i += 1;
        if arg == "--" {
            continue;
        }
        if let Some(flag) = arg.strip_prefix('-') {
            let value = at(i);
            match interpreter {
                Interpreter::Python if flag == "m" => {
                    return value.map(|(m, rest)| script(last_part(m, '.'), m, rest));
                }
                _ if interpreter.option_is_inline_code(flag) => return None,
                // `php -f index.php`: the script is the option's value.
                Interpreter::Php if flag == "f" => {
                    return value.map(|(file, rest)| script(stem(file), file, rest));
                }
                Interpreter::Java if flag == "jar" => {
                    return value.map(|(jar, rest)| script(unversioned(&stem(jar)), jar, rest));
                }
                // `--module shop/com.shop.Main`: the main class, else the module.
                Interpreter::Java if flag == "m" || flag == "-module" => {
                    return value.map(|(module, rest)| {
                        let class = module.rsplit('/').next().unwrap_or(module);
                        script(last_part(class, '.'), module, rest)
                    });
                }
                _ if interpreter.option_takes_value(flag) => i += 1,
                _ => {}
            }
            continue;
        }
        let name = match interpreter {
            // A source file run as it is (`java Server.java`, Java 11+), else a class name.
            Interpreter::Java if arg.ends_with(".java") => stem(arg),
            Interpreter::Java => last_part(arg, '.'),
            _ => stem(arg),
        };
        return Some(script(name, arg, rest));
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Interpreter {
    Python,
    Node,
    Java,
    Ruby,
    Php,
}

impl Interpreter {
    fn of(executable: &str) -> Option<Self> {
        let name = executable.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        match name {
            "python" | "pypy" => Some(Self::Python),
            "node" | "nodejs" => Some(Self::Node),
            "java" => Some(Self::Java),
            "ruby" => Some(Self::Ruby),
            "php" | "php-fpm" | "php-cgi" => Some(Self::Php),
            _ => None,
        }
    }

    /// Options whose value is a separate argument.
    fn option_takes_value(self, flag: &str) -> bool {
        match self {
            Self::Python => matches!(flag, "W" | "X" | "Q"),
            Self::Node => matches!(
                flag,
                "r" | "-require" | "-import" | "-loader" | "e" | "-eval"
            ),
            Self::Java => matches!(
                flag,
                "cp" | "classpath" | "-class-path" | "p" | "-module-path"
            ),
            Self::Ruby => matches!(flag, "I" | "r"),
            // `-S addr` (the built-in web server), `-t docroot`.
            Self::Php => matches!(flag, "c" | "d" | "S" | "t" | "z"),
        }
    }

    /// Options that give the program itself on the command line: the arguments after them
    /// are its arguments, not a script.
    fn option_is_inline_code(self, flag: &str) -> bool {
        match self {
            Self::Python => flag == "c",
            Self::Node => matches!(flag, "e" | "-eval" | "p" | "-print"),
            Self::Java => false,
            Self::Ruby => flag == "e",
            Self::Php => matches!(flag, "r" | "B" | "R" | "F" | "E"),
        }
    }
}

/// `/srv/app.py` -> `app`.
fn stem(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    match file.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_owned(),
        _ => file.to_owned(),
    }
}

/// A jar's name without the version its build gave it (`billing-1.4.2-SNAPSHOT` ->
/// `billing`, as Maven and Gradle name jars `<artifact>-<version>`): a service keeps its
/// name from one release to the next. A version is a dash, then numbers joined by dots (two
/// at least), then anything.
fn unversioned(name: &str) -> String {
    let version_at = name.match_indices('-').find_map(|(at, _)| {
        let mut numbers = name[at + 1..].split(['.', '-']);
        let is_number = |part: Option<&str>| {
            part.is_some_and(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        };
        (at > 0 && is_number(numbers.next()) && is_number(numbers.next())).then_some(at)
    });
    match version_at {
        Some(at) => name[..at].to_owned(),
        None => name.to_owned(),
    }
}

fn last_part(name: &str, separator: char) -> String {
    name.rsplit(separator).next().unwrap_or(name).to_owned()
}

#[cfg(test)]
mod tests;
