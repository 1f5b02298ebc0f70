//! HTTPS servers for the tests: a self-signed certificate, Python's http.server fixture
//! serving TLS through OpenSSL's libssl, a copy of libssl that no probe sits on yet, and
//! servers whose TLS reads and writes through memory BIOs (Python's asyncio; Node, whose
//! executable carries its own OpenSSL).

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    agent::free_port,
    servers::{Server, fixture, renamed_copy},
    workload::unique_name,
};

/// A self-signed certificate for `localhost` and its key, in one PEM file in `dir` (nginx and
/// Python both take that).
pub fn certificate(dir: &Path) -> PathBuf {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let path = dir.join("localhost.pem");
    let pem = format!(
        "{}{}",
        certified.cert.pem(),
        certified.signing_key.serialize_pem()
    );
    fs::write(&path, pem).unwrap();
    path
}

/// A fixture server (`script`, in tests/fixtures) run by a copy of `program` in `dir` named
/// after `prefix` (the service its metrics carry), serving HTTPS with `pem`, with `env` set.
fn fixture_https_server(
    dir: &Path,
    pem: &Path,
    prefix: &str,
    (program, script): (&str, &str),
    env: &[(&str, &OsStr)],
) -> Server {
    let name = unique_name(prefix);
    let mut command = Command::new(renamed_copy(dir, program, &name));
    command
        .arg(fixture(script))
        .env("TLS_CERT_AND_KEY", pem)
        .envs(env.iter().copied());
    Server::started_by(command, free_port(), &name)
}

/// Python's http.server fixture serving HTTPS with `pem` (SSL_read_ex and SSL_write_ex),
/// under a name of its own beginning with `prefix` (its copy of the interpreter goes in
/// `dir`), with `env` set.
pub fn python_https_server(dir: &Path, pem: &Path, prefix: &str, env: &[(&str, &OsStr)]) -> Server {
    let program = ("/usr/bin/python3", "http_server.py");
    fixture_https_server(dir, pem, prefix, program, env)
}

/// The asyncio fixture (tests/fixtures/asyncio_https_server.py) serving HTTPS with `pem`
/// (OpenSSL through memory BIOs: asyncio reads and writes the socket itself), under a name of
/// its own beginning with `prefix`.
pub fn asyncio_https_server(dir: &Path, pem: &Path, prefix: &str) -> Server {
    let program = ("/usr/bin/python3", "asyncio_https_server.py");
    fixture_https_server(dir, pem, prefix, program, &[])
}

/// Node's `https` module (tests/fixtures/http_server.js) serving with `pem`, from a copy of
/// the node executable named after `prefix`: a file no probe sits on when it starts, which
/// carries OpenSSL itself (no libssl is mapped) and reads and writes through memory BIOs.
pub fn node_https_server(dir: &Path, pem: &Path, prefix: &str) -> Server {
    fixture_https_server(dir, pem, prefix, ("/usr/bin/node", "http_server.js"), &[])
}

/// `count` GET requests for `path` with Host `host`, on one keep-alive HTTPS connection to
/// `port` (Python's http.client, tests/fixtures/keep_alive_client.py, copied into `dir` under
/// a name of its own beginning with `prefix`, the client's service). Returns that name.
pub fn keep_alive_https_requests(
    dir: &Path,
    prefix: &str,
    port: u16,
    (host, path): (&str, &str),
    count: usize,
) -> String {
    let name = unique_name(prefix);
    let script = dir.join(format!("{name}.py"));
    fs::copy(fixture("keep_alive_client.py"), &script).unwrap();
    let output = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(port.to_string())
        .args(std::iter::repeat_n(format!("{host},{path}"), count))
        .env("TLS", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    name
}

/// A copy of the host's `libssl.so.3` in `dir/lib`, a directory for `LD_LIBRARY_PATH`: a
/// library file that no probe sits on, as a container image's own copy would be.
pub fn libssl_copy(dir: &Path) -> PathBuf {
    let libraries = dir.join("lib");
    fs::create_dir(&libraries).unwrap();
    fs::copy(
        "/lib/x86_64-linux-gnu/libssl.so.3",
        libraries.join("libssl.so.3"),
    )
    .unwrap();
    libraries
}

/// [`python_https_server`] with its own copy of libssl ([`libssl_copy`], through
/// `LD_LIBRARY_PATH`): a library file that no probe sits on when it starts. Returns the server
/// and the path of its copy.
pub fn python_https_server_with_own_libssl(
    dir: &Path,
    pem: &Path,
    prefix: &str,
) -> (Server, PathBuf) {
    let libraries = libssl_copy(dir);
    let server = python_https_server(
        dir,
        pem,
        prefix,
        &[("LD_LIBRARY_PATH", libraries.as_os_str())],
    );
    (server, libraries.join("libssl.so.3"))
}

/// The server of tests/fixtures/cet_tls (an HTTP server over a stand-in libssl built for
/// Intel's CET, whose functions open with `endbr64` then `push %rbp`, as Ubuntu's and
/// Fedora's do; it encrypts nothing), both built with `cc` into `dir` under a name of its own
/// beginning with `prefix`. Returns the server and the path of its library.
pub fn cet_tls_server(dir: &Path, prefix: &str) -> (Server, PathBuf) {
    stand_in_tls_server(dir, prefix, &[])
}

/// `cet_tls_server`, with `env` in its environment (the stand-in's switches: see
/// tests/fixtures/cet_tls/libssl.c and server.c).
pub fn stand_in_tls_server(dir: &Path, prefix: &str, env: &[(&str, &str)]) -> (Server, PathBuf) {
    let (program, name) = stand_in_program(dir, "server.c", prefix);
    let mut command = Command::new(&program);
    command.envs(env.iter().copied());
    let server = Server::started_by(command, free_port(), &name);
    (server, stand_in_library(dir))
}

/// The memory-BIO client of tests/fixtures/cet_tls/client.c over the stand-in libssl, built
/// into `dir` under a name of its own beginning with `prefix`: its path.
pub fn stand_in_tls_client(dir: &Path, prefix: &str) -> PathBuf {
    stand_in_program(dir, "client.c", prefix).0
}

/// A program of tests/fixtures/cet_tls linked to the stand-in libssl, built into `dir` under
/// a name of its own beginning with `prefix`: its path and name.
fn stand_in_program(dir: &Path, source: &str, prefix: &str) -> (PathBuf, String) {
    let library = stand_in_library(dir);
    let name = unique_name(prefix);
    let program = dir.join(&name);
    compile(&[
        "-O2",
        "-o",
        program.to_str().unwrap(),
        fixture("cet_tls").join(source).to_str().unwrap(),
        library.to_str().unwrap(),
        &format!("-Wl,-rpath,{}", library.parent().unwrap().display()),
    ]);
    (program, name)
}

/// The stand-in libssl (tests/fixtures/cet_tls/libssl.c), built into `dir/cet-lib` the first
/// time: its path.
fn stand_in_library(dir: &Path) -> PathBuf {
    let libraries = dir.join("cet-lib");
    let library = libraries.join("libssl.so.3");
    if library.exists() {
        return library;
    }
    fs::create_dir_all(&libraries).unwrap();
    compile(&[
        "-O2",
        "-shared",
        "-fPIC",
        "-fcf-protection=full",
        "-fno-omit-frame-pointer",
        "-Wl,-soname,libssl.so.3",
        "-o",
        library.to_str().unwrap(),
        fixture("cet_tls").join("libssl.c").to_str().unwrap(),
    ]);
    library
}

fn compile(args: &[&str]) {
    let output = Command::new("cc").args(args).output().expect("running cc");
    assert!(output.status.success(), "cc {args:?}: {output:?}");
}
