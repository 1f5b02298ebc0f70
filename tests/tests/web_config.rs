//! `--web-config-file`: the real agent behind real TLS (certificates made here with rcgen),
//! Basic authentication with a hash from `htpasswd`, and curl as the client.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use monitor_tests::{
    MonitorAgent,
    agent::{free_port, monitor_bin, require_root, signal},
    poll::try_poll,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tempfile::TempDir;

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// `dir/<name>.pem` and `dir/<name>.key`: a certificate for `names` that `ca` signed.
fn leaf(
    dir: &Path,
    name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    ca: &CertifiedIssuer<'static, KeyPair>,
) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a client
/// certificate from another CA, as PEM files in `dir` (`ca.pem`, `tls/server.pem`, ...).
fn make_certificates(dir: &Path) {
    let (ours, theirs) = (ca("monitor test CA"), ca("another CA"));
    fs::write(dir.join("ca.pem"), ours.pem()).unwrap();
    let tls = dir.join("tls");
    fs::create_dir(&tls).unwrap();
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    leaf(
        &tls,
        "server",
        &["127.0.0.1", "localhost"],
        ServerAuth,
        &ours,
    );
    leaf(dir, "client", &["scraper"], ClientAuth, &ours);
    leaf(dir, "stranger", &["scraper"], ClientAuth, &theirs);
}

/// `htpasswd -B`, as exporter-toolkit's documentation suggests.
fn bcrypt_hash(password: &str) -> String {
    let output = Command::new("htpasswd")
        .args(["-nbBC", "10", USER, password])
        .output()
        .expect("running htpasswd (apache2-utils, installed by `cargo xtask setup`)");
    assert!(output.status.success(), "htpasswd: {output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    let (_, hash) = line.trim().split_once(':').expect("user:hash");
    hash.to_owned()
}

/// A directory with the certificates and `web.yml` holding `config`, whose paths are relative
/// to it (the agent runs elsewhere, so they only work if resolved against the file).
fn web_config(config: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    fs::write(dir.path().join("web.yml"), config).unwrap();
    dir
}

struct Reply {
    /// curl's exit code: 0 when an HTTP response came, whatever its status.
    exit: i32,
    head: String,
    body: String,
    stderr: String,
}

impl Reply {
    fn status(&self) -> Option<u16> {
        self.head.split_whitespace().nth(1)?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn has_metrics(&self) -> bool {
        self.body.contains("monitor_build_info")
    }
}

/// curl `url` from `dir` (so relative certificate paths work) with `args`.
fn curl(dir: &Path, url: &str, args: &[&str]) -> Reply {
    let output = Command::new("curl")
        .current_dir(dir)
        .args(["--silent", "--show-error", "--include", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = stdout.split_once("\r\n\r\n").unwrap_or((&stdout, ""));
    Reply {
        exit: output.status.code().unwrap_or(-1),
        head: head.to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Starts the agent with `dir/web.yml` and waits until curl with `args` gets /healthz.
fn start(dir: &Path, args: &[&str]) -> MonitorAgent {
    let config = dir.join("web.yml");
    MonitorAgent::start_until(&["--web-config-file", config.to_str().unwrap()], |agent| {
        let url = format!("https://127.0.0.1:{}/healthz", agent.port);
        curl(dir, &url, args).status() == Some(200)
    })
}

#[test]
fn metrics_need_the_password_over_tls() {
    let hash = bcrypt_hash(PASSWORD);
    let dir = web_config(&format!(
        "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server.key\n\
         basic_auth_users:\n  {USER}: {hash}\n"
    ));
    let dir = dir.path();
    // The server's certificate is checked against our CA: no --insecure anywhere.
    let agent = start(dir, &["--cacert", "ca.pem"]);
    let https = |path: &str, args: &[&str]| {
        let url = format!("https://127.0.0.1:{}{path}", agent.port);
        curl(dir, &url, &[&["--cacert", "ca.pem"], args].concat())
    };

    let health = https("/healthz", &[]);
    assert_eq!(health.status(), Some(200), "probes need no password");
    assert_eq!(health.body, "ok\n");

    let right = format!("{USER}:{PASSWORD}");
    let wrong = format!("{USER}:{PASSWORD}!");
    let stranger = format!("root:{PASSWORD}");
    for (what, path, args) in [
        ("no credentials", "/metrics", vec![]),
        ("a wrong password", "/metrics", vec!["--user", &wrong]),
        ("an unknown user", "/metrics", vec!["--user", &stranger]),
        ("no credentials, another path", "/nope", vec![]),
    ] {
        let reply = https(path, &args);
        assert_eq!(
            reply.status(),
            Some(401),
            "{what}: {}{}",
            reply.head,
            reply.stderr
        );
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic")),
            "{what}: no Basic challenge in {}",
            reply.head
        );
        assert!(!reply.has_metrics(), "{what}: metrics leaked");
    }

    let reply = https("/metrics", &["--user", &right]);
    assert_eq!(reply.status(), Some(200), "{}{}", reply.head, reply.stderr);
    assert!(reply.has_metrics(), "{}", reply.body);
    assert!(
        reply.head.starts_with("HTTP/2"),
        "h2 by ALPN: {}",
        reply.head
    );
    // Again, now from the remembered check, and over HTTP/1.1.
    let again = https("/metrics", &["--user", &right, "--http1.1"]);
    assert_eq!(again.status(), Some(200));
    assert!(again.head.starts_with("HTTP/1.1"), "{}", again.head);

    // Plain HTTP on the TLS port gets no metrics, with or without the password.
    let plain = curl(
        dir,
        &format!("http://127.0.0.1:{}/metrics", agent.port),
        &["--user", &right],
    );
    assert!(
        plain.exit != 0 && !plain.has_metrics(),
        "plain HTTP answered: exit {} {}{}",
        plain.exit,
        plain.head,
        plain.body
    );
}

#[test]
fn client_certificates_signed_by_the_ca_are_required() {
    let dir = web_config(
        "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n",
    );
    let dir = dir.path();
    let ours = [
        "--cacert",
        "ca.pem",
        "--cert",
        "client.pem",
        "--key",
        "client.key",
    ];
    let agent = start(dir, &ours);
    let metrics = |args: &[&str]| {
        let url = format!("https://127.0.0.1:{}/metrics", agent.port);
        curl(dir, &url, &[&["--cacert", "ca.pem"], args].concat())
    };

    let reply = metrics(&ours[2..]);
    assert_eq!(reply.status(), Some(200), "{}{}", reply.head, reply.stderr);
    assert!(reply.has_metrics());

    let stranger = ["--cert", "stranger.pem", "--key", "stranger.key"];
    for (what, args) in [
        ("no certificate", &[][..]),
        ("another CA's certificate", &stranger),
    ] {
        let reply = metrics(args);
        assert!(
            reply.exit != 0 && reply.status().is_none() && !reply.has_metrics(),
            "{what}: exit {} {}{}",
            reply.exit,
            reply.head,
            reply.body
        );
    }
    // The server is still there for the right client: the refusals were the certificates'.
    assert_eq!(metrics(&ours[2..]).status(), Some(200));
}

#[test]
fn client_certificates_if_given_must_be_the_cas() {
    let dir = web_config(
        "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server.key\n  \
         client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.pem\n  \
         min_version: TLS13\n",
    );
    let dir = dir.path();
    let agent = start(dir, &["--cacert", "ca.pem"]);
    let metrics = |args: &[&str]| {
        let url = format!("https://127.0.0.1:{}/metrics", agent.port);
        curl(dir, &url, &[&["--cacert", "ca.pem"], args].concat())
    };
    assert_eq!(metrics(&[]).status(), Some(200), "no certificate is fine");
    let ours = metrics(&["--cert", "client.pem", "--key", "client.key"]);
    assert_eq!(ours.status(), Some(200), "{}", ours.stderr);
    let stranger = metrics(&["--cert", "stranger.pem", "--key", "stranger.key"]);
    assert!(stranger.status().is_none(), "{}", stranger.head);
    // min_version TLS13: a TLS 1.2 client is refused.
    let old = metrics(&["--tls-max", "1.2"]);
    assert!(old.exit != 0 && old.status().is_none(), "{}", old.head);
}

/// Writes `text` to `path` the way a careful tool does, by renaming a complete file over it,
/// so that the agent never reads half of it.
fn replace(path: &Path, text: &str) {
    let fresh = path.with_extension("new");
    fs::write(&fresh, text).unwrap();
    fs::rename(&fresh, path).unwrap();
}

/// Points the symlink `link` at `target` in one rename, as a Kubernetes Secret volume swaps
/// its `..data` link when cert-manager renews a certificate.
fn swap_link(link: &Path, target: &str) {
    let fresh = link.with_extension("new");
    std::os::unix::fs::symlink(target, &fresh).unwrap();
    fs::rename(&fresh, link).unwrap();
}

/// The value of an unlabelled or fully written series in a scrape, e.g.
/// `monitor_web_config_reloads_total{result="failure"}`.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_changed_web_config_or_renewed_certificate_applies_without_a_restart() {
    let config = |hash: &str| {
        format!(
            "tls_server_config:\n  cert_file: current/server.pem\n  key_file: current/server.key\n\
             basic_auth_users:\n  {USER}: {hash}\n"
        )
    };
    let dir = web_config(&config(&bcrypt_hash(PASSWORD)));
    let dir = dir.path();
    std::os::unix::fs::symlink("tls", dir.join("current")).unwrap();
    let agent = start(dir, &["--cacert", "ca.pem"]);
    let metrics = |ca: &str, password: &str| {
        let url = format!("https://127.0.0.1:{}/metrics", agent.port);
        let user = format!("{USER}:{password}");
        curl(dir, &url, &["--cacert", ca, "--user", &user])
    };
    // The agent looks every 5 s and applies a change that held still for one look; each step
    // waits for its effect, up to 30 s.
    let wait = |what: &str, mut check: Box<dyn FnMut() -> bool + '_>| {
        assert!(
            try_poll(Duration::from_secs(30), || check().then_some(())).is_some(),
            "not applied within 30 s: {what}"
        );
    };
    let first = metrics("ca.pem", PASSWORD);
    assert_eq!(first.status(), Some(200), "{}{}", first.head, first.stderr);
    assert_eq!(
        series(&first.body, "monitor_web_config_last_reload_successful"),
        Some(1.0)
    );

    // New users: the old password stops working, the new one works.
    const NEW_PASSWORD: &str = "another horse, another battery";
    replace(&dir.join("web.yml"), &config(&bcrypt_hash(NEW_PASSWORD)));
    wait(
        "the new password",
        Box::new(|| metrics("ca.pem", NEW_PASSWORD).status() == Some(200)),
    );
    assert_eq!(metrics("ca.pem", PASSWORD).status(), Some(401));

    // A renewed certificate from another CA, swapped in as Kubernetes does.
    let renewed_ca = ca("renewed CA");
    fs::write(dir.join("renewed-ca.pem"), renewed_ca.pem()).unwrap();
    fs::create_dir(dir.join("renewed")).unwrap();
    leaf(
        &dir.join("renewed"),
        "server",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &renewed_ca,
    );
    swap_link(&dir.join("current"), "renewed");
    wait(
        "the renewed certificate",
        Box::new(|| metrics("renewed-ca.pem", NEW_PASSWORD).status() == Some(200)),
    );
    let old = metrics("ca.pem", NEW_PASSWORD);
    assert!(
        old.status().is_none(),
        "the old certificate is still served: {}",
        old.head
    );

    // A broken file changes nothing but the reload metrics, which say so.
    replace(&dir.join("web.yml"), "tls_server_config: [\n");
    let mut scrape = String::new();
    wait(
        "the failed reload in /metrics",
        Box::new(|| {
            scrape = metrics("renewed-ca.pem", NEW_PASSWORD).body;
            series(&scrape, "monitor_web_config_last_reload_successful") == Some(0.0)
        }),
    );
    for (result, expected) in [("success", 2.0), ("failure", 1.0)] {
        let name = format!("monitor_web_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(
            series(&scrape, &name),
            Some(expected),
            "{name} in\n{scrape}"
        );
    }
    let still = metrics("renewed-ca.pem", NEW_PASSWORD);
    assert_eq!(still.status(), Some(200), "{}{}", still.head, still.stderr);
    assert_eq!(metrics("renewed-ca.pem", PASSWORD).status(), Some(401));
}

/// The agent must stop before loading anything, with exit code 1 and one line naming the
/// problem, never a panic.
#[test]
fn a_bad_web_config_stops_the_start_with_one_clear_line() {
    require_root();
    let unclosed = format!("basic_auth_users: {{{USER}: {}", bcrypt_hash(PASSWORD));
    let cases = [
        (
            "tls_server_config:\n  cert_file: tls/server.pem\n  keyfile: tls/server.key\n",
            "unknown field `keyfile`",
        ),
        (
            "tls_server_config:\n  cert_file: tls/absent.pem\n  key_file: tls/server.key\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: client.key\n",
            "do not go together",
        ),
        (
            "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server.key\n  \
             client_auth_type: RequireAnyClientCert\n",
            "client_auth_type RequireAnyClientCert is not supported",
        ),
        (
            "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server.key\n  \
             cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "tls_server_config.cipher_suites is not supported",
        ),
        (
            "basic_auth_users:\n  prometheus: hunter2\n",
            "basic_auth_users.prometheus: not a bcrypt hash",
        ),
        (unclosed.as_str(), "did not find expected"),
    ];
    for (config, expected) in cases {
        let dir = web_config(config);
        let path = dir.path().join("web.yml");
        let mut child = Command::new(monitor_bin())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--web-config-file")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting monitor");
        let status = try_poll(Duration::from_secs(10), || child.try_wait().unwrap());
        if status.is_none() {
            signal(&child, libc::SIGKILL);
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{config:?} did not stop the start: {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].contains(expected) && lines[0].contains("web.yml"),
            "{config:?}: expected one line naming {expected:?} and the file, got {stderr:?}"
        );
        assert!(!stderr.contains("panicked"));
    }
}
