//! Real HTTP servers for the tests, each under a name of its own so its `service_name` is its
//! own: nginx (its name is nginx), Python's http.server and Node's http module run from copies
//! of their interpreters named after the test.

use std::{
    fs,
    net::TcpStream,
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    agent::free_port,
    poll_until,
    workload::{unique_name, unique_word},
};

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// The `service_name` its metrics carry.
    pub service: String,
    _dir: TempDir,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A copy of the program at `path` named `name`, so its comm (and service name) is `name`.
pub fn renamed_copy(dir: &Path, program: &str, name: &str) -> PathBuf {
    let original = fs::canonicalize(program).unwrap_or_else(|e| panic!("{program}: {e}"));
    let copy = dir.join(name);
    fs::copy(&original, &copy).expect("copying the interpreter");
    copy
}

impl Server {
    /// Python's ThreadingHTTPServer running tests/fixtures/http_server.py.
    pub fn python() -> Self {
        Self::python_on(free_port())
    }

    pub fn python_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = unique_name("py");
        let python = renamed_copy(dir.path(), "/usr/bin/python3", &name);
        let mut command = Command::new(python);
        command.arg(fixture("http_server.py")).arg(port.to_string());
        Self::spawn(command, port, name, dir)
    }

    /// Python's http.server on the Unix socket `dir/app.sock` (its `port` is 0), as
    /// gunicorn or uvicorn serve behind nginx.
    pub fn python_unix() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = unique_name("pyunix");
        let python = renamed_copy(dir.path(), "/usr/bin/python3", &name);
        let socket = dir.path().join("app.sock");
        let mut child = Command::new(python)
            .arg(fixture("http_server.py"))
            .arg(format!("unix:{}", socket.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the server");
        poll_until("the server to listen", Duration::from_secs(15), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited during start-up: {status}");
            }
            UnixStream::connect(&socket).ok()
        });
        // nginx's workers run as an unprivileged user.
        for (path, mode) in [(dir.path(), 0o755), (socket.as_path(), 0o777)] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Self {
            child: Some(child),
            port: 0,
            service: name,
            _dir: dir,
        }
    }

    /// The Unix socket of a `python_unix` server.
    pub fn unix_socket(&self) -> PathBuf {
        self._dir.path().join("app.sock")
    }

    /// Python's forking server (`socketserver.ForkingMixIn`): each connection is accepted by
    /// the parent and served by a child forked for it.
    pub fn python_forking() -> Self {
        Self::python_forking_reading(None)
    }

    /// The forking server, whose children read `file` before their connection.
    pub fn python_forking_reading(file: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = unique_name("pyfork");
        let python = renamed_copy(dir.path(), "/usr/bin/python3", &name);
        let port = free_port();
        let mut command = Command::new(python);
        command
            .arg(fixture("forking_server.py"))
            .arg(port.to_string())
            .args(file);
        Self::spawn(command, port, name, dir)
    }

    /// The server started by `command` (its program, arguments and environment are the
    /// test's; the port is added as its last argument), expected to serve as `service`.
    pub fn started_by(mut command: Command, port: u16, service: &str) -> Self {
        command.arg(port.to_string());
        Self::spawn(
            command,
            port,
            service.to_owned(),
            tempfile::tempdir().unwrap(),
        )
    }

    fn spawn(mut command: Command, port: u16, service: String, dir: TempDir) -> Self {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the server");
        Self::started(child, port, service, dir)
    }

    /// A Python application server (`gunicorn`, `uvicorn`: Debian's, installed by `cargo xtask
    /// setup`) running an application in tests/fixtures/python_app.py, copied to a module of a
    /// name of its own: the `service_name` its metrics carry. `attribute` is the application
    /// in that module (`app`, WSGI; `asgi`); `args`, where `{port}` is the port, come before
    /// the application.
    pub fn python_app(launcher: &str, args: &[&str], attribute: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let module = unique_name("pyapp");
        fs::copy(
            fixture("python_app.py"),
            dir.path().join(format!("{module}.py")),
        )
        .unwrap();
        let port = free_port();
        let mut command = Command::new(launcher);
        command
            .args(
                args.iter()
                    .map(|arg| arg.replace("{port}", &port.to_string())),
            )
            .arg(format!("{module}:{attribute}"))
            .current_dir(dir.path());
        Self::spawn(command, port, module, dir)
    }

    /// Debian's puma (installed by `cargo xtask setup`) serving tests/fixtures/config.ru from
    /// a directory of a name of its own, its working directory: the `service_name` its
    /// metrics carry. `workers` > 0 is cluster mode (a master and forked workers).
    pub fn puma(workers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = unique_word("rbapp");
        let app_dir = dir.path().join(&app);
        fs::create_dir(&app_dir).unwrap();
        fs::copy(fixture("config.ru"), app_dir.join("config.ru")).unwrap();
        let port = free_port();
        let mut command = Command::new("/usr/bin/puma");
        command
            .args(["--bind", &format!("tcp://127.0.0.1:{port}")])
            .args(["--workers", &workers.to_string()])
            .stdout(Stdio::null())
            .current_dir(&app_dir);
        Self::spawn(command, port, app, dir)
    }

    /// Node's http module running tests/fixtures/http_server.js.
    pub fn node() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Not `node<digits>`: the agent takes that for a versioned Node interpreter and names
        // the service after its script (`http_server`).
        let name = unique_name("nodesrv");
        let node = renamed_copy(dir.path(), "/usr/bin/node", &name);
        let port = free_port();
        let child = Command::new(node)
            .arg(fixture("http_server.js"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the Node server");
        Self::started(child, port, name, dir)
    }

    /// Node running a package's program, as `npm start` runs a framework's launcher: the
    /// fixture as `<app>/node_modules/.bin/serve`, in the working directory `<app>`, a name of
    /// its own (the `service_name` its metrics carry).
    pub fn node_package_program() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = unique_word("nodeapp");
        let bin = dir.path().join(&app).join("node_modules/.bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy(fixture("http_server.js"), bin.join("serve")).unwrap();
        let port = free_port();
        let mut command = Command::new("/usr/bin/node");
        command
            .arg(bin.join("serve"))
            .arg(port.to_string())
            .current_dir(dir.path().join(&app));
        Self::spawn(command, port, app, dir)
    }

    /// Java's com.sun.net.httpserver (tests/fixtures/JavaServer.java), compiled and packed in
    /// `<app>-1.4.2-SNAPSHOT.jar` as a Maven build names it, run with `java -jar`; `<app>`, a
    /// name of its own, is the `service_name` its metrics carry.
    pub fn java_jar() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = unique_name("javaapp");
        let classes = dir.path().join("classes");
        let compiled = Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .arg(fixture("JavaServer.java"))
            .status()
            .expect("running javac (default-jdk-headless, installed by `cargo xtask setup`)");
        assert!(compiled.success(), "javac: {compiled}");
        let jar = dir.path().join(format!("{app}-1.4.2-SNAPSHOT.jar"));
        let packed = Command::new("jar")
            .args(["--create", "--main-class", "JavaServer", "--file"])
            .arg(&jar)
            .arg("-C")
            .arg(&classes)
            .arg(".")
            .status()
            .expect("running jar");
        assert!(packed.success(), "jar: {packed}");
        let port = free_port();
        let mut command = Command::new("java");
        command.arg("-jar").arg(&jar).arg(port.to_string());
        Self::spawn(command, port, app, dir)
    }

    /// Go's net/http server (tests/fixtures/http_go.go, built by [`go_program`]).
    pub fn go() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = unique_name("gosrv");
        let program = go_program(dir.path(), &name);
        let port = free_port();
        let mut command = Command::new(program);
        command.args(["serve", &port.to_string()]);
        Self::spawn(command, port, name, dir)
    }

    /// Node's cluster module (tests/fixtures/cluster_server.js): a primary that accepts
    /// connections and passes them to `workers` workers running http_server.js.
    pub fn node_cluster(workers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = unique_name("nodeclu");
        let node = renamed_copy(dir.path(), "/usr/bin/node", &name);
        let port = free_port();
        let child = Command::new(node)
            .arg(fixture("cluster_server.js"))
            .arg(port.to_string())
            .arg(workers.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the Node cluster");
        Self::started(child, port, name, dir)
    }

    /// nginx (two workers) with `locations` inside its server block.
    pub fn nginx(locations: &str) -> Self {
        Self::nginx_with_workers(2, locations)
    }

    pub fn nginx_with_workers(workers: usize, locations: &str) -> Self {
        Self::nginx_with(workers, "", locations)
    }

    /// nginx with `main` directives added to its main context (e.g. `worker_cpu_affinity`).
    pub fn nginx_with(workers: usize, main: &str, locations: &str) -> Self {
        Self::nginx_listening(workers, main, "", locations)
    }

    /// nginx (one worker) serving HTTPS with the PEM certificate and key at `pem` (OpenSSL's
    /// SSL_read and SSL_write).
    pub fn nginx_https(pem: &Path, locations: &str) -> Self {
        Self::nginx_https_with("", "", pem, locations)
    }

    /// `nginx_https` with `main` directives added to its main context and `listen_options`
    /// after `ssl` (` http2` offers HTTP/2 by ALPN).
    pub fn nginx_https_with(main: &str, listen_options: &str, pem: &Path, locations: &str) -> Self {
        let pem = pem.display();
        let locations =
            format!("    ssl_certificate {pem};\n    ssl_certificate_key {pem};\n{locations}");
        Self::nginx_listening(1, main, &format!(" ssl{listen_options}"), &locations)
    }

    /// nginx behind a load balancer that sends the PROXY protocol header first.
    pub fn nginx_proxy_protocol(locations: &str) -> Self {
        Self::nginx_listening(1, "", " proxy_protocol", locations)
    }

    /// Apache httpd with the event MPM (a listener thread accepts, worker threads serve),
    /// keep-alive and sendfile on, serving the files of its directory (`dir`).
    pub fn apache() -> Self {
        let dir = static_root();
        let port = free_port();
        let root = dir.path().display();
        let modules = "/usr/lib/apache2/modules";
        let config = format!(
            "ServerRoot {root}\nDefaultRuntimeDir {root}\nPidFile {root}/apache2.pid\n\
             Mutex file:{root} default\nListen 127.0.0.1:{port}\nServerName localhost\n\
             LoadModule mpm_event_module {modules}/mod_mpm_event.so\n\
             LoadModule authz_core_module {modules}/mod_authz_core.so\n\
             User www-data\nGroup www-data\nErrorLog /dev/stderr\nLogLevel error\n\
             DocumentRoot {root}\nKeepAlive On\nMaxKeepAliveRequests 0\nEnableSendfile On\n\
             <Directory {root}>\n  Require all granted\n</Directory>\n"
        );
        let path = dir.path().join("apache2.conf");
        fs::write(&path, config).unwrap();
        let mut command = Command::new("apache2");
        command.args(["-DFOREGROUND", "-f"]).arg(&path);
        Self::spawn(command, port, "apache2".into(), dir)
    }

    /// lighttpd serving the files of its directory (`dir`).
    pub fn lighttpd() -> Self {
        let dir = static_root();
        let port = free_port();
        let root = dir.path().display();
        let config = format!(
            "server.document-root = \"{root}\"\nserver.bind = \"127.0.0.1\"\n\
             server.port = {port}\nserver.pid-file = \"{root}/lighttpd.pid\"\n\
             server.max-keep-alive-requests = 0\n"
        );
        let path = dir.path().join("lighttpd.conf");
        fs::write(&path, config).unwrap();
        let mut command = Command::new("lighttpd");
        command.args(["-D", "-f"]).arg(&path);
        Self::spawn(command, port, "lighttpd".into(), dir)
    }

    /// nginx with `listen_options` after its `listen` address.
    fn nginx_listening(workers: usize, main: &str, listen_options: &str, locations: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let root = dir.path().display();
        let config = format!(
            "daemon off;\nworker_processes {workers};\n{main}\npid {root}/nginx.pid;\nerror_log stderr error;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {root};\n\
             proxy_temp_path {root};\n  fastcgi_temp_path {root};\n  uwsgi_temp_path {root};\n\
             scgi_temp_path {root};\n  keepalive_requests 1000000;\n\
             server {{\n    listen 127.0.0.1:{port}{listen_options};\n    root {root};\n{locations}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        fs::write(&path, config).unwrap();
        let child = Command::new("nginx")
            .args(["-e", "stderr", "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nginx (installed by `cargo xtask setup`)");
        Self::started(child, port, "nginx".into(), dir)
    }

    fn started(child: Child, port: u16, service: String, dir: TempDir) -> Self {
        let mut server = Self {
            child: Some(child),
            port,
            service,
            _dir: dir,
        };
        poll_until("the server to listen", Duration::from_secs(15), || {
            if let Some(status) = server.child.as_mut()?.try_wait().ok()? {
                panic!("{} exited during start-up: {status}", server.service);
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        server
    }

    /// The server's own directory (nginx serves files from it).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server stopped").id()
    }

    /// Kills the server at once (SIGKILL): requests in flight die with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // nginx's workers are its children: take the whole process group down with it.
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets nginx stop its workers; the others just exit.
            crate::agent::signal(&child, libc::SIGTERM);
            let _ = child.wait();
        }
    }
}

/// tests/fixtures/http_go.go built as `dir/name` (its comm and service name): a static Go
/// binary that makes its syscalls itself, without libc.
pub fn go_program(dir: &Path, name: &str) -> PathBuf {
    let program = dir.join(name);
    let output = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&program)
        .arg(fixture("http_go.go"))
        // Go needs a build cache; CI's environment may have no HOME to put it in.
        .env(
            "GOCACHE",
            std::env::temp_dir().join("monitor-tests-go-cache"),
        )
        .env("GO111MODULE", "off")
        .output()
        .expect("running go (golang-go, installed by `cargo xtask setup`)");
    assert!(
        output.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

/// Files for a static server, readable by the unprivileged user its workers run as:
/// `index.html` (6 bytes) and `large.bin` (300 KiB, sent with sendfile where the server
/// does).
pub const STATIC_FILES: [(&str, usize); 2] = [("/index.html", 6), ("/large.bin", 300 << 10)];

fn static_root() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, size) in STATIC_FILES {
        fs::write(dir.path().join(&name[1..]), vec![b'x'; size]).unwrap();
    }
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Runs ApacheBench with keep-alive; returns the requests it completed, asserting none failed.
pub fn ab(url: &str, requests: usize, concurrency: usize) -> usize {
    ab_with(&["-k"], url, requests, concurrency)
}

/// Runs ApacheBench with `extra` options (none: a new connection per request).
pub fn ab_with(extra: &[&str], url: &str, requests: usize, concurrency: usize) -> usize {
    ab_program(Path::new("ab"), extra, url, requests, concurrency)
}

/// `ab_with` for an ApacheBench at `program` (a renamed copy: the client's service name).
pub fn ab_program(
    program: &Path,
    extra: &[&str],
    url: &str,
    requests: usize,
    concurrency: usize,
) -> usize {
    let output = Command::new(program)
        .args(extra)
        .args([
            "-q",
            "-n",
            &requests.to_string(),
            "-c",
            &concurrency.to_string(),
        ])
        .arg(url)
        .output()
        .expect("running ab (apache2-utils, installed by `cargo xtask setup`)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ab failed: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| -> usize {
        report
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in ab's report:\n{report}"))
    };
    assert_eq!(field("Failed requests:"), 0, "ab saw failures:\n{report}");
    field("Complete requests:")
}
