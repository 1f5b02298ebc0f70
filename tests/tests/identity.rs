//! Service identity: the names processes get in every metric.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use monitor_tests::{
    MonitorAgent,
    agent::free_port,
    http::{client, get, server_count, wait_until},
    poll::try_poll,
    servers::{Server, fixture},
    workload::unique_name,
};

const WAIT: Duration = Duration::from_secs(20);

/// Sends 3 requests to `route` of each server, then finds them counted under the server's
/// own service name, and a CPU series of its process (with `executable`, when given) under
/// that name too.
fn assert_served_and_named(
    agent: &MonitorAgent,
    servers: &[Server],
    route: &str,
    executable: Option<&str>,
) {
    const REQUESTS: u64 = 3;
    let http = client();
    for server in servers {
        for _ in 0..REQUESTS {
            assert_eq!(get(&http, &server.url(route)), 200);
        }
    }
    let scrape = wait_until(agent, "every server's requests under its name", |scrape| {
        servers
            .iter()
            .all(|server| server_count(scrape, &server.service, 200, route) == Some(REQUESTS))
    });
    for server in servers {
        let pid = server.pid().to_string();
        let mut labels = vec![
            ("process_pid", pid.as_str()),
            ("service_name", server.service.as_str()),
        ];
        labels.extend(executable.map(|executable| ("process_executable_name", executable)));
        assert!(
            scrape
                .value("process_cpu_time_seconds_total", &labels)
                .is_some(),
            "no CPU series named {} for {pid}",
            server.service
        );
    }
}

#[test]
fn otel_service_name_names_server_client_and_cpu_series() {
    let service = unique_name("svc");
    let agent = MonitorAgent::start(&[]);
    let port = free_port();
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg(fixture("http_server.py"))
        .env("OTEL_SERVICE_NAME", &service);
    let server = Server::started_by(command, port, &service);
    // A client under the same name, through the resource attributes this time, calling a
    // server of its own.
    let upstream = Server::python();
    let output = Command::new("/usr/bin/python3")
        .arg(fixture("http_client.py"))
        .arg(upstream.url("/checkout"))
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("deployment.environment=test,service.name={service}"),
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(get(&client(), &server.url("/pay")), 200);

    let upstream_address = format!("127.0.0.1:{}", upstream.port);
    let pid = server.pid().to_string();
    wait_until(
        &agent,
        "server, client and CPU series named after the service",
        |scrape| {
            let client_labels = [
                ("service_name", service.as_str()),
                ("server_address", upstream_address.as_str()),
            ];
            let cpu_labels = [
                ("process_pid", pid.as_str()),
                ("service_name", service.as_str()),
            ];
            server_count(scrape, &service, 200, "/pay") == Some(1)
                && scrape.histogram_count("http_client_request_duration_seconds", &client_labels)
                    == Some(1)
                && scrape
                    .value("process_cpu_time_seconds_total", &cpu_labels)
                    .is_some()
        },
    );
}

#[test]
fn an_interpreter_is_named_after_its_script() {
    let agent = MonitorAgent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::copy(fixture("http_server.py"), &script).unwrap();
    let port = free_port();
    let mut command = Command::new("/usr/bin/python3");
    command.arg(&script);
    let server = Server::started_by(command, port, "app");
    assert_eq!(get(&client(), &server.url("/hello")), 200);
    let scrape = wait_until(&agent, "the server named app", |scrape| {
        server_count(scrape, "app", 200, "/hello") == Some(1)
    });
    let pid = server.pid().to_string();
    let labels = [
        ("process_pid", pid.as_str()),
        ("process_executable_name", "python3"),
        ("service_name", "app"),
    ];
    assert!(
        scrape
            .value("process_cpu_time_seconds_total", &labels)
            .is_some()
    );
}

/// A host service run by systemd: `python3 app.py` in `<unit>.service` is named after its
/// unit, the name its operators gave it, not after its script. Here the process is put in a
/// cgroup of the path systemd gives a service (`/system.slice/<unit>.service`) before it
/// execs Python, as systemd does.
#[test]
fn a_host_process_is_named_after_its_systemd_service() {
    let agent = MonitorAgent::start(&[]);
    let unit = unique_name("shopfront");
    let cgroup = ServiceCgroup::create(&unit);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::copy(fixture("http_server.py"), &script).unwrap();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"echo $$ > "$1" && shift && exec /usr/bin/python3 "$@""#)
        .arg("sh")
        .arg(cgroup.procs())
        .arg(&script);
    let server = Server::started_by(command, free_port(), &unit);
    assert_served_and_named(&agent, &[server], "/orders", Some("python3"));
}

/// A cgroup at the path systemd gives a service, in the unified hierarchy; removed on drop
/// (after the processes in it are gone).
struct ServiceCgroup {
    dir: PathBuf,
}

impl ServiceCgroup {
    fn create(unit: &str) -> Self {
        let root = cgroup2_mount().expect("no cgroup2 hierarchy mounted");
        let dir = root.join("system.slice").join(format!("{unit}.service"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|error| panic!("creating {}: {error}", dir.display()));
        Self { dir }
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        // The server is killed before; its exit may take a moment to empty the cgroup.
        let removed = try_poll(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.dir).ok()
        });
        if removed.is_none() {
            eprintln!("could not remove {}", self.dir.display());
        }
        // Only if this test made it and nothing else is in it.
        if let Some(slice) = self.dir.parent() {
            let _ = std::fs::remove_dir(slice);
        }
    }
}

/// Where the cgroup2 (unified) hierarchy is mounted: `/sys/fs/cgroup` on cgroup v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| Path::new(fields[1]).to_path_buf())
    })
}

/// A script that lives for a few dozen milliseconds is gone long before the agent's next
/// refresh (10 s here); it is still named after its script, read from procfs at its exec.
#[test]
fn a_short_lived_script_is_named_after_its_script() {
    let agent = MonitorAgent::start(&["--refresh-interval", "10s"]);
    let upstream = Server::python();
    let address = format!("127.0.0.1:{}", upstream.port);
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3).map(|_| unique_name("brief")).collect();
    for name in &names {
        let script = dir.path().join(format!("{name}.py"));
        std::fs::copy(fixture("http_client.py"), &script).unwrap();
        let output = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(upstream.url("/brief"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let scrape = wait_until(
        &agent,
        "every short-lived client named after its script",
        |scrape| {
            names.iter().all(|name| {
                let labels = [
                    ("service_name", name.as_str()),
                    ("server_address", address.as_str()),
                ];
                scrape.histogram_count("http_client_request_duration_seconds", &labels) == Some(1)
            })
        },
    );
    assert!(
        scrape
            .value("monitor_processes_named_at_exec_total", &[])
            .unwrap()
            >= 3.0
    );
}

/// A server in a podman container (runc) that shares the host's root file system (an
/// overlay, so nothing is written to it) and network: no image is needed.
struct Container {
    name: String,
    id: String,
}

impl Container {
    /// `global` goes before `run` (podman's own options), `run` after it.
    fn python_server(port: u16, global: &[&str], run: &[&str]) -> Self {
        monitor_tests::agent::require_root();
        let name = unique_name("ctr");
        let output = Command::new("podman")
            .args(global)
            .args(["run", "-d", "--rm", "--name", &name, "--runtime", "runc"])
            .args(run)
            .args(["--network", "host", "--rootfs", "/:O", "/usr/bin/python3"])
            .arg(fixture("http_server.py"))
            .arg(port.to_string())
            .output()
            .expect("running podman (installed by `cargo xtask setup`)");
        assert!(output.status.success(), "podman run: {output:?}");
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert_eq!(id.len(), 64, "podman printed {id:?}");
        try_poll(WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("the containerised server to listen");
        Self { name, id }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

#[test]
fn a_containerised_server_carries_its_container_id() {
    let agent = MonitorAgent::start(&[]);
    let port = free_port();
    let container = Container::python_server(port, &[], &[]);
    assert_eq!(
        get(&client(), &format!("http://127.0.0.1:{port}/in-a-box")),
        200
    );
    let short = &container.id[..12];
    wait_until(&agent, "the container's series", |scrape| {
        let labels = [
            ("service_name", short),
            ("container_id", container.id.as_str()),
            ("http_route", "/in-a-box"),
        ];
        scrape.histogram_count("http_server_request_duration_seconds", &labels) == Some(1)
    });
}

#[test]
fn a_pod_container_gets_its_kubernetes_labels_from_the_pod_log_directory() {
    // The kubelet's log directory, as on a node: /var/log/pods/<ns>_<pod>_<uid>/<container>/.
    let logs = tempfile::tempdir().unwrap();
    let uid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    let uid = uid.trim();
    let pod = unique_name("web");
    std::fs::create_dir_all(
        logs.path()
            .join(format!("shop_{pod}_{uid}"))
            .join("checkout"),
    )
    .unwrap();
    let pod_logs = logs.path().to_str().unwrap().to_owned();
    let agent = MonitorAgent::start(&["--pod-logs", &pod_logs]);
    // A kubelet with the cgroupfs driver puts a pod's containers under this parent.
    let port = free_port();
    let parent = format!("--cgroup-parent=/kubepods/burstable/pod{uid}");
    let container = Container::python_server(port, &["--cgroup-manager", "cgroupfs"], &[&parent]);
    assert_eq!(
        get(&client(), &format!("http://127.0.0.1:{port}/in-a-pod")),
        200
    );
    wait_until(&agent, "the pod's labels", |scrape| {
        let labels = [
            ("service_name", "checkout"),
            ("container_id", container.id.as_str()),
            ("k8s_namespace_name", "shop"),
            ("k8s_pod_name", pod.as_str()),
            ("k8s_container_name", "checkout"),
        ];
        scrape.histogram_count("http_server_request_duration_seconds", &labels) == Some(1)
    });
}

/// `gunicorn shop:app` and `uvicorn shop:asgi` (Debian's, run by their `#!/usr/bin/python3`
/// scripts): every service under one of them would otherwise be called after it.
#[test]
fn python_application_servers_are_named_after_their_application() {
    let agent = MonitorAgent::start(&[]);
    let servers = [
        Server::python_app(
            "/usr/bin/gunicorn",
            &[
                "--workers",
                "2",
                "--bind",
                "127.0.0.1:{port}",
                "--log-level",
                "warning",
            ],
            "app",
        ),
        Server::python_app(
            "/usr/bin/uvicorn",
            &[
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--log-level",
                "warning",
            ],
            "asgi",
        ),
        // Its workers are `multiprocessing` children, `python3 -c 'from multiprocessing...'`:
        // they serve, under their parent's name.
        Server::python_app(
            "/usr/bin/uvicorn",
            &["--workers", "2", "--host", "127.0.0.1", "--port", "{port}"],
            "asgi",
        ),
    ];
    assert_served_and_named(&agent, &servers, "/orders", None);
}

/// puma (Debian's, a Ruby script) serving from `<dir>/config.ru`, alone and as a cluster of
/// forked workers: named after its directory, as puma's own title `[dir]` names it, not `puma`.
#[test]
fn puma_is_named_after_its_application_directory() {
    let agent = MonitorAgent::start(&[]);
    let servers = [Server::puma(0), Server::puma(2)];
    assert_served_and_named(&agent, &servers, "/cart", None);
}

/// A framework's launcher run by Node from `node_modules` (`next start`, `nest start`) names
/// every application that uses it alike: the application is the directory it runs in.
#[test]
fn a_node_package_program_is_named_after_its_application_directory() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::node_package_program();
    assert_served_and_named(&agent, &[server], "/shop", Some("node"));
}

/// `java -jar <app>-1.4.2-SNAPSHOT.jar`: named after the artifact, not the release, so the
/// service keeps its name from one version to the next.
#[test]
fn a_jar_is_named_without_its_version() {
    let agent = MonitorAgent::start(&[]);
    let server = Server::java_jar();
    assert_served_and_named(&agent, &[server], "/invoices", Some("java"));
}
