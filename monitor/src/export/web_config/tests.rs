use std::path::{Path, PathBuf};

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/web_config")
}

fn fixture(name: &str) -> WebConfig {
    load(&fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

const DAVE: &str = "$2y$10$2UXri9cIDdgeKjBo4Rlpx.U3ZLDV8X1IxKmsfOvhcM5oXQt/mLmXq";

#[test]
fn full_config_resolves_relative_paths_against_its_directory() {
    let config = fixture("tls_and_users.yml");
    let dir = fixtures();
    assert_eq!(
        config.tls,
        Some(TlsSettings {
            cert: Pem::File {
                key: "cert_file",
                path: dir.join("server.pem"),
            },
            key: Pem::File {
                key: "key_file",
                path: dir.join("tls/server.key"),
            },
            client_auth: ClientAuth::Require(Pem::File {
                key: "client_ca_file",
                path: PathBuf::from("/etc/monitor/ca.pem"),
            }),
            min_version: TlsVersion::Tls13,
            max_version: TlsVersion::Tls13,
            prefer_server_cipher_suites: false,
        })
    );
    assert!(!config.http2);
    assert_eq!(
        config.basic_auth_users.keys().collect::<Vec<_>>(),
        ["carol", "dave"]
    );
    assert_eq!(config.basic_auth_users["dave"], DAVE);
}

#[test]
fn defaults_follow_exporter_toolkit() {
    let config = fixture("tls_only.yml");
    let tls = config.tls.expect("TLS");
    assert_eq!(tls.client_auth, ClientAuth::None);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert!(tls.prefer_server_cipher_suites);
    assert!(config.http2);
    assert!(config.basic_auth_users.is_empty());
}

#[test]
fn users_alone_mean_plain_http_with_authentication() {
    let config = fixture("users.yml");
    assert_eq!(config.tls, None);
    assert_eq!(config.basic_auth_users["dave"], DAVE);
}

#[test]
fn an_empty_file_changes_nothing() {
    let config = fixture("empty.yml");
    assert_eq!(
        config,
        WebConfig {
            http2: true,
            ..WebConfig::default()
        }
    );
}

#[test]
fn a_path_relative_to_the_working_directory_stays_relative() {
    let config = parse(
        "tls_server_config: {cert_file: c.pem, key_file: k.pem}",
        Path::new(""),
    )
    .unwrap();
    assert_eq!(
        config.tls.unwrap().cert,
        Pem::File {
            key: "cert_file",
            path: PathBuf::from("c.pem")
        }
    );
}

#[test]
fn inline_pem_is_taken_as_it_is() {
    let yaml = "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n  key_file: k.pem\n  \
                client_ca: CA\n  client_auth_type: VerifyClientCertIfGiven\n";
    let tls = parse(yaml, Path::new("/d")).unwrap().tls.unwrap();
    assert_eq!(
        tls.cert,
        Pem::Inline {
            key: "cert",
            text: "-----BEGIN CERTIFICATE-----\n".into()
        }
    );
    assert_eq!(
        tls.client_auth,
        ClientAuth::VerifyIfGiven(Pem::Inline {
            key: "client_ca",
            text: "CA".into()
        })
    );
}

#[test]
fn empty_strings_are_unset_as_in_go() {
    let config = parse(
        "tls_server_config: {cert_file: '', client_auth_type: '', min_version: ''}",
        Path::new(""),
    )
    .unwrap();
    assert_eq!(config.tls, None, "nothing set: plain HTTP");
}

/// Each file is wrong in one way; the error must name the key (or what is wrong with it).
#[test]
fn bad_files_are_refused_naming_the_key() {
    let twice = format!("basic_auth_users:\n  dave: {DAVE}\n  dave: {DAVE}\n");
    let colon = format!("basic_auth_users:\n  'a:b': {DAVE}\n");
    let cases: &[(&str, &str)] = &[
        (
            "tls_server_config:\n  cert_fle: c.pem\n",
            "unknown field `cert_fle`",
        ),
        (
            "tls_server_config:\n  cert_fle: c.pem\n",
            "tls_server_config",
        ),
        (
            "basic_auth_user:\n  dave: x\n",
            "unknown field `basic_auth_user`",
        ),
        (
            "tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "tls_server_config.cipher_suites is not supported",
        ),
        (
            "tls_server_config:\n  curve_preferences: [X25519]\n",
            "tls_server_config.curve_preferences is not supported",
        ),
        (
            "tls_server_config:\n  client_allowed_sans: [a]\n",
            "tls_server_config.client_allowed_sans is not supported",
        ),
        (
            "rate_limit:\n  interval: 1s\n  burst: 5\n",
            "rate_limit is not supported",
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
            "http_server_config.headers is not supported",
        ),
        (
            "http_server_config:\n  http3: true\n",
            "unknown field `http3`",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, min_version: TLS10}",
            "tls_server_config.min_version TLS10 is not supported",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, max_version: TLS14}",
            "tls_server_config.max_version \"TLS14\" is not one of",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, min_version: TLS13, max_version: TLS12}",
            "min_version is above max_version",
        ),
        (
            "tls_server_config: {key_file: k}",
            "missing one of cert or cert_file",
        ),
        (
            "tls_server_config: {cert_file: c}",
            "missing one of key or key_file",
        ),
        (
            "tls_server_config: {cert_file: c, cert: x, key_file: k}",
            "set cert or cert_file, not both",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_ca_file: ca}",
            "a client CA is set but client_auth_type is NoClientCert",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_auth_type: RequireAndVerifyClientCert}",
            "RequireAndVerifyClientCert needs client_ca_file",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_auth_type: RequireAnyClientCert}",
            "client_auth_type RequireAnyClientCert is not supported",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_auth_type: RequestClientCert, client_ca_file: ca}",
            "client_auth_type RequestClientCert is not supported",
        ),
        (
            "tls_server_config: {cert_file: c, key_file: k, client_auth_type: requireandverifyclientcert}",
            "client_auth_type \"requireandverifyclientcert\" is not one of",
        ),
        // exporter-toolkit's web_config_auth_user_list_invalid.bad.yml
        (
            "basic_auth_users:\n  john: doe\n",
            "basic_auth_users.john: not a bcrypt hash",
        ),
        (
            "basic_auth_users:\n  john: $2y$03$2UXri9cIDdgeKjBo4Rlpx.U3ZLDV8X1IxKmsfOvhcM5oXQt/mLmXq\n",
            "basic_auth_users.john: bcrypt cost 3",
        ),
        (&twice, "user \"dave\" is listed twice"),
        (&colon, "contains ':'"),
        (
            "basic_auth_users: [dave]\n",
            "basic_auth_users: invalid type: sequence",
        ),
        (
            "tls_server_config: [\n",
            "tls_server_config: invalid type: sequence",
        ),
        (
            "tls_server_config: {cert_file: c\n",
            "did not find expected ',' or '}' at line 2",
        ),
        ("- a\n", "invalid type: sequence"),
    ];
    for (yaml, expected) in cases {
        match parse(yaml, Path::new("/d")) {
            Ok(config) => panic!("accepted {yaml:?}: {config:?}"),
            Err(error) => {
                let message = format!("{error:#}");
                assert!(
                    message.contains(expected),
                    "{yaml:?}: {message:?} does not say {expected:?}"
                );
                assert!(!message.contains('\n'), "not one line: {message:?}");
            }
        }
    }
}

#[test]
fn an_unreadable_file_is_named() {
    let message = format!("{:#}", load(Path::new("/nonexistent/web.yml")).unwrap_err());
    assert!(
        message.contains("--web-config-file /nonexistent/web.yml")
            && message.contains("No such file"),
        "{message}"
    );
}

#[test]
fn the_readme_example_parses() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split("## Protecting the endpoint")
        .nth(1)
        .expect("README section");
    let example = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block");
    let config = parse(example, Path::new("/etc/monitor")).unwrap();
    let tls = config.tls.expect("TLS");
    assert!(matches!(tls.client_auth, ClientAuth::Require(_)));
    assert_eq!(config.basic_auth_users.len(), 1);
}

/// A FIFO or a device given as the web config (or as a certificate it names) is refused with
/// a reason, at once: before, the read waited for a writer for good, or read `/dev/zero`
/// until memory ran out.
#[test]
fn files_that_are_no_regular_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = crate::test_support::fifo_without_writer(dir.path(), "web.yml");
    let answer = crate::test_support::within(std::time::Duration::from_secs(30), move || {
        load(&fifo)
            .map(|_| ())
            .map_err(|error| format!("{error:#}"))
    })
    .expect("reading a FIFO as the web config waited for a writer");
    assert!(
        answer.as_ref().unwrap_err().contains("not a regular file"),
        "{answer:?}"
    );
    let pem = Pem::File {
        key: "cert_file",
        path: PathBuf::from("/dev/zero"),
    };
    let error = format!("{:#}", pem.read().unwrap_err());
    assert!(error.contains("not a regular file"), "{error}");
}
