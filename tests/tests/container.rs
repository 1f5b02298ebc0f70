//! The container image (deploy/container), built by `cargo xtask image` and run with podman the
//! way deploy/kubernetes/daemonset.yaml runs it: the host's PID namespace, all capabilities
//! dropped but the DaemonSet's, its read-only host mounts, its user, read-only root file system,
//! no privilege escalation, its resource limits. The flags are read from the DaemonSet itself,
//! so the two cannot drift apart. Needs root, podman and runc.
//!
//! Two differences, both of the test host: the network is the host's (the DaemonSet's pod has
//! its own; the agent's hooks do not care, and the test reaches it on 127.0.0.1), and the
//! seccomp profile is deploy/container/seccomp.json, podman's default plus `bpf` and
//! `perf_event_open` for holders of CAP_BPF and CAP_PERFMON, which the DaemonSet's
//! `RuntimeDefault` means on containerd and CRI-O (Debian 12's podman allows them only with
//! CAP_SYS_ADMIN).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use monitor_tests::{
    Scrape,
    agent::{free_port, require_root},
    http::{describe_http, server_count},
    https,
    poll::try_poll,
    poll_until,
    servers::{Server, ab},
    workload::unique_name,
};
use serde_yaml::Value;
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running podman (apt-get install podman runc)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An image built by `cargo xtask image` under a name of its own; removed when dropped.
struct Image {
    name: String,
}

impl Image {
    fn build() -> Self {
        require_root();
        let name = format!("localhost/monitor-test:{}", unique_name("t"));
        let started = Instant::now();
        let status = Command::new(env!("CARGO"))
            .current_dir(repo(""))
            .args(["xtask", "image"])
            .env("MONITOR_IMAGE", &name)
            .stdin(Stdio::null())
            .status()
            .expect("running cargo xtask image");
        assert!(status.success(), "`cargo xtask image` failed: {status}");
        eprintln!("image {name} built in {:?}", started.elapsed());
        let image = Self { name };
        let inspect = podman(&["image", "inspect", "--format", "{{.Size}}", &image.name]);
        assert!(inspect.status.success(), "{}", text(&inspect.stderr));
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", &self.name]);
    }
}

/// One read-only host mount of the DaemonSet.
struct Mount {
    host: PathBuf,
    path: String,
    propagation: Option<&'static str>,
    /// The volume is `DirectoryOrCreate`: the kubelet makes it when the node lacks it.
    create: bool,
}

/// What the DaemonSet asks of the runtime, read from deploy/kubernetes/daemonset.yaml.
struct DaemonSet {
    capabilities: Vec<String>,
    mounts: Vec<Mount>,
    env: Vec<(String, String)>,
    user: String,
    memory_limit: String,
    cpu_limit: String,
}

fn string(value: &Value, what: &str) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("daemonset.yaml: {what} is not a string: {value:?}"))
        .to_owned()
}

fn sequence<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("daemonset.yaml: {what} is not a list: {value:?}"))
}

fn daemonset() -> DaemonSet {
    let path = repo("deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("reading daemonset.yaml");
    let doc: Value = serde_yaml::from_str(&text).expect("daemonset.yaml parses");
    let pod = &doc["spec"]["template"]["spec"];
    let container = &sequence(&pod["containers"], "containers")[0];
    let security = &container["securityContext"];
    // The flags below mirror these settings; anything else would need a flag of its own.
    assert_eq!(pod["hostPID"], Value::Bool(true));
    assert_eq!(
        pod["hostNetwork"],
        Value::Null,
        "the pod has its own network"
    );
    assert_eq!(security["privileged"], Value::Bool(false));
    assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(security["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let dropped: Vec<String> = sequence(&security["capabilities"]["drop"], "drop")
        .iter()
        .map(|c| string(c, "a dropped capability"))
        .collect();
    assert_eq!(dropped, ["ALL"]);
    let capabilities = sequence(&security["capabilities"]["add"], "add")
        .iter()
        .map(|c| string(c, "a capability"))
        .collect();
    let user = format!(
        "{}:{}",
        security["runAsUser"].as_u64().expect("runAsUser"),
        security["runAsGroup"].as_u64().expect("runAsGroup")
    );
    let volumes = sequence(&pod["volumes"], "volumes");
    let mounts = sequence(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|mount| {
            let name = &mount["name"];
            let volume = volumes
                .iter()
                .find(|v| &v["name"] == name)
                .unwrap_or_else(|| panic!("no volume {name:?}"));
            assert_eq!(
                mount["readOnly"],
                Value::Bool(true),
                "{name:?} is read-only"
            );
            let propagation = match mount["mountPropagation"].as_str() {
                None | Some("None") => None,
                Some("HostToContainer") => Some("rslave"),
                Some(other) => panic!("{name:?}: no podman flag for propagation {other}"),
            };
            Mount {
                host: PathBuf::from(string(&volume["hostPath"]["path"], "hostPath.path")),
                path: string(&mount["mountPath"], "mountPath"),
                propagation,
                create: volume["hostPath"]["type"] == "DirectoryOrCreate",
            }
        })
        .collect();
    let env = sequence(&container["env"], "env")
        .iter()
        .map(|e| {
            (
                string(&e["name"], "env name"),
                string(&e["value"], "env value"),
            )
        })
        .collect();
    let limits = &container["resources"]["limits"];
    let memory_limit = string(&limits["memory"], "memory limit");
    let memory_limit = format!(
        "{}m",
        memory_limit
            .strip_suffix("Mi")
            .expect("a memory limit in Mi")
    );
    let cpu_limit = string(&limits["cpu"], "cpu limit");
    let millis: f64 = cpu_limit
        .strip_suffix('m')
        .and_then(|m| m.parse().ok())
        .expect("a CPU limit in millicores");
    DaemonSet {
        capabilities,
        mounts,
        env,
        user,
        memory_limit,
        cpu_limit: format!("{}", millis / 1000.0),
    }
}

/// A container of the image run as the DaemonSet runs it, listening on 127.0.0.1:`port`;
/// removed when dropped.
struct Container {
    name: String,
    port: u16,
    _empty: TempDir,
}

impl Container {
    /// `podman run` arguments for the DaemonSet's settings with `capabilities`.
    fn run_arguments(
        daemonset: &DaemonSet,
        capabilities: &[String],
        name: &str,
        port: u16,
        empty: &Path,
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--name",
            name,
            "--runtime",
            "runc",
            "--pid=host",
            "--network=host",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            "--read-only",
            "--read-only-tmpfs=false",
        ]
        .map(String::from)
        .into();
        let seccomp = repo("deploy/container/seccomp.json");
        args.push(format!("--security-opt=seccomp={}", seccomp.display()));
        args.push(format!("--user={}", daemonset.user));
        args.push(format!("--memory={}", daemonset.memory_limit));
        args.push(format!("--cpus={}", daemonset.cpu_limit));
        for capability in capabilities {
            args.push(format!("--cap-add={capability}"));
        }
        for mount in &daemonset.mounts {
            // Nothing is created on this host: a missing DirectoryOrCreate volume is the empty
            // directory the kubelet would make.
            let host = if mount.create && !mount.host.exists() {
                empty
            } else {
                &mount.host
            };
            let mut options = String::from("ro");
            if let Some(propagation) = mount.propagation {
                options.push(',');
                options.push_str(propagation);
            }
            args.push(format!(
                "--volume={}:{}:{options}",
                host.display(),
                mount.path
            ));
        }
        for (name, value) in &daemonset.env {
            let value = match name.as_str() {
                "MONITOR_LISTEN" => format!("127.0.0.1:{port}"),
                _ => value.clone(),
            };
            args.push(format!("--env={name}={value}"));
        }
        args
    }

    /// Starts the container with `capabilities` in the background and waits until it answers
    /// /healthz.
    fn start(image: &Image, daemonset: &DaemonSet, capabilities: &[String]) -> Self {
        let name = format!("monitor-test-{}", unique_name("c"));
        let port = free_port();
        let empty = tempfile::tempdir().unwrap();
        let mut args = Self::run_arguments(daemonset, capabilities, &name, port, empty.path());
        args.insert(1, "--detach".into());
        args.push(image.name.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = podman(&args);
        let container = Self {
            name,
            port,
            _empty: empty,
        };
        assert!(
            run.status.success(),
            "podman {}: {}",
            args.join(" "),
            text(&run.stderr)
        );
        let started = Instant::now();
        try_poll(WAIT, || {
            assert!(
                container.running(),
                "the container stopped during start-up:\n{}",
                container.logs()
            );
            container.get("/healthz").filter(|(code, _)| *code == 200)
        })
        .unwrap_or_else(|| {
            panic!(
                "the container did not serve /healthz within {WAIT:?}:\n{}",
                container.logs()
            )
        });
        eprintln!("container healthy after {:?}", started.elapsed());
        container
    }

    fn inspect(&self, format: &str) -> String {
        let output = podman(&["inspect", "--format", format, &self.name]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout).trim().to_owned()
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    fn logs(&self) -> String {
        let output = podman(&["logs", &self.name]);
        text(&output.stdout) + &text(&output.stderr)
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = ureq::get(&format!("http://127.0.0.1:{}{path}", self.port))
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .call()
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.into_body().read_to_string().ok()?))
    }

    fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").expect("scraping the container");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "2", &self.name]);
    }
}

/// A path segment of letters only, unique to this run: a route the agent keeps as it is (no
/// digits, so not an identifier) and that no other nginx on the host serves.
fn unique_segment() -> String {
    unique_name("c")
        .chars()
        .map(|c| match c.to_digit(16) {
            Some(digit) => char::from(b'g' + digit as u8),
            None => c,
        })
        .collect()
}

#[test]
fn the_image_run_like_the_daemonset_counts_host_http_traffic_exactly() {
    let image = Image::build();
    let daemonset = daemonset();
    let container = Container::start(&image, &daemonset, &daemonset.capabilities);
    let mut capabilities: Vec<String> = daemonset
        .capabilities
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    capabilities.sort();
    assert_eq!(
        container.inspect("{{.EffectiveCaps}}"),
        format!("[{}]", capabilities.join(" ")),
        "the container holds exactly the DaemonSet's capabilities"
    );

    let segment = unique_segment();
    let nginx = Server::nginx(&format!(
        "    location = /{segment}/ok {{ return 200 \"ok\\n\"; }}\n    \
         location = /{segment}/missing {{ return 404; }}\n"
    ));
    let ok = format!("/{segment}/ok");
    let missing = format!("/{segment}/missing");
    assert_eq!(ab(&nginx.url(&ok), 2_000, 8), 2_000);
    assert_eq!(ab(&nginx.url(&missing), 300, 8), 300);

    let scrape = try_poll(WAIT, || {
        let scrape = Scrape::parse(&container.metrics());
        let counts = (
            server_count(&scrape, "nginx", 200, &ok),
            server_count(&scrape, "nginx", 404, &missing),
        );
        (counts == (Some(2_000), Some(300))).then_some(scrape)
    })
    .unwrap_or_else(|| {
        panic!(
            "the container's agent did not count 2000 × 200 {ok} and 300 × 404 {missing}; it \
             has:\n{}\nlogs:\n{}",
            describe_http(&container.metrics()),
            container.logs()
        )
    });
    // Nothing else under these routes (no other status, nothing counted twice).
    for route in [&ok, &missing] {
        let total: u64 = scrape
            .histograms(
                "http_server_request_duration_seconds",
                &[("service_name", "nginx"), ("http_route", route)],
            )
            .map(|buckets| buckets.last().map_or(0, |(_, count)| *count))
            .sum();
        assert_eq!(total, if route == &ok { 2_000 } else { 300 }, "{route}");
    }
    // The host's PID namespace: nginx's host PID names its series.
    let pid = nginx.pid().to_string();
    assert!(
        scrape
            .value(
                "process_cpu_time_seconds_total",
                &[("process_pid", &pid), ("service_name", "nginx")]
            )
            .is_some(),
        "no CPU time for nginx's host PID {pid}"
    );

    // SIGTERM (what the kubelet sends) stops it cleanly well within the grace period.
    let stopped = Instant::now();
    let stop = podman(&["stop", "--time", "10", &container.name]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "{}",
        container.logs()
    );
}

/// With the DaemonSet's capabilities alone (uprobe_multi links, Linux 6.6+, need no
/// CAP_SYS_ADMIN, which the https component adds for older kernels), the container reads
/// HTTPS on the host, also through a libssl that a process loads after the agent started (as
/// a container image's own copy would be): its scan finds it, at the default interval, and the
/// requests are counted exactly.
#[test]
fn the_image_run_like_the_daemonset_reads_https_through_a_library_loaded_later() {
    let image = Image::build();
    let daemonset = daemonset();
    let container = Container::start(&image, &daemonset, &daemonset.capabilities);
    let probed = || {
        Scrape::parse(&container.metrics())
            .value("monitor_tls_libraries_probed", &[])
            .unwrap_or(0.0)
    };
    let at_start = probed();

    let dir = tempfile::tempdir().unwrap();
    let pem = https::certificate(dir.path());
    let (server, _) = https::python_https_server_with_own_libssl(dir.path(), &pem, "pyc");
    try_poll(WAIT, || (probed() == at_start + 1.0).then_some(())).unwrap_or_else(|| {
        panic!(
            "the library loaded later was not probed within {WAIT:?}:\n{}",
            container.logs()
        )
    });

    const REQUESTS: usize = 30;
    let url = format!("https://127.0.0.1:{}/status/202", server.port);
    let output = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}\n"])
        .args(std::iter::repeat_n(&url, REQUESTS))
        .output()
        .unwrap();
    assert_eq!(
        text(&output.stdout)
            .lines()
            .filter(|code| *code == "202")
            .count(),
        REQUESTS,
        "{output:?}"
    );
    try_poll(WAIT, || {
        let scrape = Scrape::parse(&container.metrics());
        (server_count(&scrape, &server.service, 202, "/status/{id}") == Some(REQUESTS as u64))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the container's agent did not count {REQUESTS} HTTPS requests; it has:\n{}\nlogs:\n{}",
            describe_http(&container.metrics()),
            container.logs()
        )
    });
}

#[test]
fn without_cap_bpf_or_cap_perfmon_the_image_exits_naming_it() {
    let image = Image::build();
    let daemonset = daemonset();
    for missing in ["BPF", "PERFMON"] {
        assert!(daemonset.capabilities.iter().any(|c| c == missing));
        let capabilities: Vec<String> = daemonset
            .capabilities
            .iter()
            .filter(|c| *c != missing)
            .cloned()
            .collect();
        let name = format!("monitor-test-{}", unique_name("c"));
        let empty = tempfile::tempdir().unwrap();
        let mut args =
            Container::run_arguments(&daemonset, &capabilities, &name, free_port(), empty.path());
        args.insert(1, "--rm".into());
        args.push(image.name.clone());
        let mut child = Command::new("podman")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running podman");
        let status = try_poll(WAIT, || child.try_wait().expect("waiting for podman"));
        let Some(status) = status else {
            let _ = podman(&["rm", "--force", "--time", "0", &name]);
            let _ = child.wait();
            panic!("without CAP_{missing} the agent still runs after {WAIT:?}");
        };
        let output = child.wait_with_output().unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(status.code(), Some(1), "without CAP_{missing}: {stderr}");
        let line = stderr
            .lines()
            .find(|line| line.contains("missing capabilities"))
            .unwrap_or_else(|| panic!("no `missing capabilities` line: {stderr}"));
        assert!(line.contains(&format!("CAP_{missing}")), "{line}");
        poll_until("podman to remove the container", WAIT, || {
            let exists = podman(&["container", "exists", &name]);
            (exists.status.code() == Some(1)).then_some(())
        });
    }
}

/// The source build installs what `cargo xtask setup` installs: the same bpf-linker, and the
/// workspace's Rust version.
#[test]
fn the_source_containerfile_pins_what_setup_installs() {
    let read = |path: &str| std::fs::read_to_string(repo(path)).expect(path);
    let quoted_after = |text: &str, prefix: &str| -> String {
        let line = text
            .lines()
            .find(|line| line.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix}"));
        line.split('"').nth(1).expect("a quoted value").to_owned()
    };
    let arg = |name: &str| -> String {
        let containerfile = read("deploy/container/Containerfile");
        let prefix = format!("ARG {name}=");
        containerfile
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("Containerfile has no {prefix}"))
            .to_owned()
    };
    let setup = read("xtask/src/setup.rs");
    assert_eq!(
        arg("BPF_LINKER_VERSION"),
        quoted_after(&setup, "const BPF_LINKER_VERSION"),
        "bpf-linker in deploy/container/Containerfile and xtask/src/setup.rs"
    );
    let rust_version = quoted_after(&read("Cargo.toml"), "rust-version");
    assert!(
        arg("RUST_VERSION").starts_with(&format!("{rust_version}.")),
        "Containerfile's RUST_VERSION {} is not the workspace's rust-version {rust_version}",
        arg("RUST_VERSION")
    );
}
