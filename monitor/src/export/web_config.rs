//! `--web-config-file`: TLS and basic authentication for the endpoint, in the format of the
//! Prometheus exporter-toolkit (its `docs/web-configuration.md`), so one file can serve
//! node_exporter and this agent alike. Read at start, and again when it or a file it names
//! changes (`reload`); what this agent cannot honour is an error naming the key, never
//! silently ignored.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Deserializer, de::IgnoredAny};

/// What the file asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebConfig {
    /// `None`: plain HTTP (as exporter-toolkit does when no certificate, key, CA or client
    /// authentication is set).
    pub tls: Option<TlsSettings>,
    /// Offer HTTP/2 by ALPN over TLS (`http_server_config.http2`, default true).
    pub http2: bool,
    /// User name -> bcrypt hash; empty: no authentication.
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// The server's order of cipher suites wins (exporter-toolkit's default).
    pub prefer_server_cipher_suites: bool,
}

/// PEM text from a file (relative paths already resolved) or inline in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File { key: &'static str, path: PathBuf },
    Inline { key: &'static str, text: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (the default).
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but checked against the CA if sent.
    VerifyIfGiven(Pem),
    /// `RequireAndVerifyClientCert`.
    Require(Pem),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl WebConfig {
    /// The files the configuration names (certificate, key, client CA), which a reload
    /// watches beside the configuration itself.
    pub fn files(&self) -> Vec<PathBuf> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        let ca = match &tls.client_auth {
            ClientAuth::None => None,
            ClientAuth::VerifyIfGiven(ca) | ClientAuth::Require(ca) => Some(ca),
        };
        [Some(&tls.cert), Some(&tls.key), ca]
            .into_iter()
            .flatten()
            .filter_map(|pem| match pem {
                Pem::File { path, .. } => Some(path.clone()),
                Pem::Inline { .. } => None,
            })
            .collect()
    }
}

/// The most a web config file, certificate, key or CA bundle is read of: far above any real
/// one (a CA bundle of every public root is about 250 KiB).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// A regular file of at most `MAX_FILE_BYTES`, read whole: a FIFO or a device named by
/// mistake (or on purpose) would otherwise hang the start and every reload, or fill memory
/// (`/dev/zero`).
fn read_small_file(path: &Path) -> Result<Vec<u8>> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    // O_NONBLOCK: opening a FIFO with no writer would wait for one.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        bail!("not a regular file");
    }
    if metadata.len() > MAX_FILE_BYTES {
        bail!(
            "{} bytes, more than the {MAX_FILE_BYTES} read of such a file",
            metadata.len()
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads and checks the file; relative paths in it are taken from its directory.
pub fn load(path: &Path) -> Result<WebConfig> {
    let text = read_small_file(path)
        .and_then(|bytes| String::from_utf8(bytes).context("not UTF-8 text"))
        .with_context(|| format!("--web-config-file {}", path.display()))?;
    parse(&text, path.parent().unwrap_or(Path::new("")))
        .with_context(|| format!("--web-config-file {}", path.display()))
}

/// Parses the file's text; `dir` is where relative paths start.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig> {
    // The YAML error names the key path and the line on one line already.
    let file: File = yaml_serde::from_str(text).map_err(|error| anyhow::anyhow!("{error}"))?;
    if file.rate_limit.is_some() {
        bail!("rate_limit is not supported by monitor");
    }
    let http = file.http_server_config.unwrap_or_default();
    if !http.headers.unwrap_or_default().is_empty() {
        bail!("http_server_config.headers is not supported by monitor");
    }
    let users = file.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        check_user(user, hash)?;
    }
    let tls = match file.tls_server_config {
        Some(tls) => tls.settings(dir)?,
        None => None,
    };
    Ok(WebConfig {
        tls,
        http2: http.http2.unwrap_or(true),
        basic_auth_users: users,
    })
}

fn check_user(user: &str, hash: &str) -> Result<()> {
    if user.contains(':') {
        bail!(
            "basic_auth_users: user name {user:?} contains ':', which Basic authentication cannot carry"
        );
    }
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|error| anyhow::anyhow!("basic_auth_users.{user}: not a bcrypt hash ({error})"))?;
    // The bcrypt crate refuses to verify outside 4..=31; say so now rather than at each login.
    if !(4..=31).contains(&parts.get_cost()) {
        bail!(
            "basic_auth_users.{user}: bcrypt cost {} is outside 4..=31",
            parts.get_cost()
        );
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    #[serde(default, deserialize_with = "unique_map")]
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// exporter-toolkit's `tls_server_config`; an empty string counts as unset, as in Go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    cipher_suites: Option<IgnoredAny>,
    curve_preferences: Option<IgnoredAny>,
    client_allowed_sans: Option<IgnoredAny>,
}

impl TlsFile {
    fn settings(self, dir: &Path) -> Result<Option<TlsSettings>> {
        for (key, set) in [
            ("cipher_suites", self.cipher_suites.is_some()),
            ("curve_preferences", self.curve_preferences.is_some()),
            ("client_allowed_sans", self.client_allowed_sans.is_some()),
        ] {
            if set {
                bail!(
                    "tls_server_config.{key} is not supported by monitor (rustls' defaults apply)"
                );
            }
        }
        let min_version = version("min_version", self.min_version)?.unwrap_or(TlsVersion::Tls12);
        let max_version = version("max_version", self.max_version)?.unwrap_or(TlsVersion::Tls13);
        if min_version > max_version {
            bail!("tls_server_config: min_version is above max_version");
        }
        let cert = pem("cert", self.cert, "cert_file", self.cert_file, dir)?;
        let key = pem("key", self.key, "key_file", self.key_file, dir)?;
        let client_ca = pem(
            "client_ca",
            self.client_ca,
            "client_ca_file",
            self.client_ca_file,
            dir,
        )?;
        let auth_type = self.client_auth_type.filter(|s| !s.is_empty());
        // exporter-toolkit serves plain HTTP when none of these is set.
        if cert.is_none() && key.is_none() && client_ca.is_none() && auth_type.is_none() {
            return Ok(None);
        }
        let Some(cert) = cert else {
            bail!("tls_server_config: missing one of cert or cert_file");
        };
        let Some(key) = key else {
            bail!("tls_server_config: missing one of key or key_file");
        };
        let client_auth = match (auth_type.as_deref().unwrap_or("NoClientCert"), client_ca) {
            ("NoClientCert", None) => ClientAuth::None,
            ("NoClientCert", Some(_)) => bail!(
                "tls_server_config: a client CA is set but client_auth_type is NoClientCert \
                 (set RequireAndVerifyClientCert or VerifyClientCertIfGiven)"
            ),
            ("RequireAndVerifyClientCert", Some(ca)) => ClientAuth::Require(ca),
            ("VerifyClientCertIfGiven", Some(ca)) => ClientAuth::VerifyIfGiven(ca),
            (kind @ ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven"), None) => {
                bail!("tls_server_config.client_auth_type {kind} needs client_ca_file or client_ca")
            }
            (kind @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert"), _) => {
                bail!(
                    "tls_server_config.client_auth_type {kind} is not supported by monitor: it \
                     accepts certificates nobody verified; use RequireAndVerifyClientCert"
                )
            }
            (other, _) => bail!(
                "tls_server_config.client_auth_type {other:?} is not one of NoClientCert, \
                 VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ),
        };
        Ok(Some(TlsSettings {
            cert,
            key,
            client_auth,
            min_version,
            max_version,
            prefer_server_cipher_suites: self.prefer_server_cipher_suites.unwrap_or(true),
        }))
    }
}

fn version(key: &str, value: Option<String>) -> Result<Option<TlsVersion>> {
    match value.as_deref().unwrap_or("") {
        "" => Ok(None),
        "TLS12" => Ok(Some(TlsVersion::Tls12)),
        "TLS13" => Ok(Some(TlsVersion::Tls13)),
        old @ ("TLS10" | "TLS11") => {
            bail!("tls_server_config.{key} {old} is not supported by monitor (TLS12 and TLS13 are)")
        }
        other => bail!("tls_server_config.{key} {other:?} is not one of TLS12, TLS13"),
    }
}

/// The inline text or the file (resolved against `dir`, as exporter-toolkit does); not both.
fn pem(
    inline_key: &'static str,
    inline: Option<String>,
    file_key: &'static str,
    file: Option<PathBuf>,
    dir: &Path,
) -> Result<Option<Pem>> {
    let inline = inline.filter(|text| !text.is_empty());
    let file = file.filter(|path| !path.as_os_str().is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => {
            bail!("tls_server_config: set {inline_key} or {file_key}, not both")
        }
        (Some(text), None) => Ok(Some(Pem::Inline {
            key: inline_key,
            text,
        })),
        // `join` keeps an absolute path as it is.
        (None, Some(path)) => Ok(Some(Pem::File {
            key: file_key,
            path: dir.join(path),
        })),
        (None, None) => Ok(None),
    }
}

impl Pem {
    /// The PEM text.
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            Pem::File { path, .. } => read_small_file(path).with_context(|| self.to_string()),
            Pem::Inline { text, .. } => Ok(text.as_bytes().to_vec()),
        }
    }
}

/// Names the source in errors: `tls_server_config.cert_file /etc/monitor/cert.pem`.
impl fmt::Display for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File { key, path } => write!(f, "tls_server_config.{key} {}", path.display()),
            Pem::Inline { key, .. } => write!(f, "tls_server_config.{key}"),
        }
    }
}

/// A map that refuses a key given twice (serde keeps the last one, which would hide a second
/// entry for the same user).
fn unique_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of user names to bcrypt hashes")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Unique)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut access: A,
        ) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((user, hash)) = access.next_entry::<String, String>()? {
                if map.insert(user.clone(), hash).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "user {user:?} is listed twice"
                    )));
                }
            }
            Ok(Some(map))
        }
    }
    deserializer.deserialize_option(Unique)
}

#[cfg(test)]
mod tests;
