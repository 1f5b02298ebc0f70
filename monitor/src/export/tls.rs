//! The rustls server configuration for `tls_server_config`: certificate chain and key, optional
//! client-certificate verification against a CA, protocol versions and ALPN.

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use rustls::{
    RootCertStore, ServerConfig, SupportedProtocolVersion,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

use super::web_config::{ClientAuth, Pem, TlsSettings, TlsVersion};

/// Reads the certificates and key now, so a bad file stops the start rather than a handshake.
pub fn server_config(settings: &TlsSettings, http2: bool) -> Result<Arc<ServerConfig>> {
    // ring rather than the default aws-lc-rs: no cmake or assembler for the static image build.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (settings.min_version..=settings.max_version).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("tls_server_config: min_version/max_version")?;
    let builder = match &settings.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Require(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
                .build()
                .with_context(|| ca.to_string())?,
        ),
        ClientAuth::VerifyIfGiven(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
                .allow_unauthenticated()
                .build()
                .with_context(|| ca.to_string())?,
        ),
    };
    let chain = certificates(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&settings.key.read()?)
        .map_err(|error| anyhow!("{}: no usable private key ({error})", settings.key))?;
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        anyhow!(
            "{} and {} do not go together: {error}",
            settings.cert,
            settings.key
        )
    })?;
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>> {
    let text = pem.read()?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow!("{pem}: {error}"))?;
    if chain.is_empty() {
        bail!("{pem}: no PEM certificate in it");
    }
    Ok(chain)
}

fn roots(ca: &Pem) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca)? {
        roots
            .add(certificate)
            .map_err(|error| anyhow!("{ca}: {error}"))?;
    }
    Ok(Arc::new(roots))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(name: &str) -> Pem {
        Pem::File {
            key: "cert_file",
            path: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/web_config")
                .join(name),
        }
    }

    fn settings(cert: &str, key: &str, client_auth: ClientAuth) -> TlsSettings {
        TlsSettings {
            cert: fixture(cert),
            key: fixture(key),
            client_auth,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            prefer_server_cipher_suites: true,
        }
    }

    #[test]
    fn builds_from_a_matching_certificate_and_key() {
        let config = server_config(
            &settings("server.pem", "server.key", ClientAuth::None),
            true,
        )
        .unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.ignore_client_order);
        let http1 = server_config(
            &settings("server.pem", "server.key", ClientAuth::None),
            false,
        )
        .unwrap();
        assert_eq!(http1.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    /// Handshakes with and without client certificates: tests/tests/web_config.rs.
    #[test]
    fn builds_client_verifiers_from_the_ca() {
        let ca = fixture("ca.pem");
        for auth in [
            ClientAuth::Require(ca.clone()),
            ClientAuth::VerifyIfGiven(ca),
        ] {
            let settings = settings("server.pem", "server.key", auth);
            if let Err(error) = server_config(&settings, true) {
                panic!("{error:#}");
            }
        }
    }

    /// That a TLS 1.2 client is then refused is shown with curl (tests/tests/web_config.rs).
    #[test]
    fn a_tls13_only_config_builds() {
        let mut only13 = settings("server.pem", "server.key", ClientAuth::None);
        only13.min_version = TlsVersion::Tls13;
        assert!(server_config(&only13, true).is_ok());
    }

    fn error(settings: &TlsSettings) -> String {
        format!("{:#}", server_config(settings, true).unwrap_err())
    }

    #[test]
    fn a_missing_file_is_named() {
        let message = error(&settings("absent.pem", "server.key", ClientAuth::None));
        assert!(
            message.contains("cert_file") && message.contains("absent.pem"),
            "{message}"
        );
        assert!(message.contains("No such file"), "{message}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let message = error(&settings("server.pem", "other.key", ClientAuth::None));
        assert!(message.contains("do not go together"), "{message}");
    }

    #[test]
    fn files_without_pem_are_refused() {
        let message = error(&settings("users.yml", "server.key", ClientAuth::None));
        assert!(message.contains("no PEM certificate"), "{message}");
        let message = error(&settings("server.pem", "server.pem", ClientAuth::None));
        assert!(message.contains("no usable private key"), "{message}");
        let message = error(&settings(
            "server.pem",
            "server.key",
            ClientAuth::Require(fixture("users.yml")),
        ));
        assert!(message.contains("no PEM certificate"), "{message}");
    }
}
