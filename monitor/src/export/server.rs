//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `GET /healthz`, 404 otherwise;
//! over TLS and behind Basic authentication when `--web-config-file` asks for them.

use std::{
    future::Future,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    middleware,
    response::IntoResponse,
    routing::get,
};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use prometheus::proto::MetricFamily;

use super::{
    basic_auth::{self, BasicAuth},
    connection_limit::{self, ConnectionLimit},
    metrics, reload, tls, web_config,
};

/// Renders the metrics text; called on a blocking thread for every scrape.
pub type RenderFn = Arc<dyn Fn() -> Option<String> + Send + Sync>;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// TLS and Basic authentication, from `--web-config-file`; by default neither.
#[derive(Clone, Default)]
pub struct Protection {
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: Option<Arc<BasicAuth>>,
    /// The files as they were read, which the reload watches; `None` without a file.
    snapshot: Option<reload::Snapshot>,
}

impl Protection {
    /// Reads the file and everything it names (certificates, keys, CA) now, so that a mistake
    /// stops the start with one line instead of failing handshakes later.
    pub fn load(web_config_file: Option<&Path>) -> Result<Self> {
        match web_config_file {
            Some(path) => Self::read(path).1,
            None => Ok(Self::default()),
        }
    }

    /// `load`, and the files as they were read: there whenever the configuration itself
    /// parsed, even if a certificate it names did not load, so that a reload watches the
    /// files the new configuration names.
    pub fn read(path: &Path) -> (Option<reload::Snapshot>, Result<Self>) {
        let config_state = reload::WatchedFile::of(path);
        let config = match web_config::load(path) {
            Ok(config) => config,
            Err(error) => return (None, Err(error)),
        };
        let snapshot = config_state.with_files(config.files());
        let tls = config
            .tls
            .as_ref()
            .map(|settings| tls::server_config(settings, config.http2))
            .transpose()
            .with_context(|| format!("--web-config-file {}", path.display()));
        let protection = tls.map(|tls| Self {
            tls,
            auth: BasicAuth::new(&config.basic_auth_users),
            snapshot: Some(snapshot.clone()),
        });
        (Some(snapshot), protection)
    }

    pub fn into_parts(self) -> (Option<Arc<rustls::ServerConfig>>, Option<Arc<BasicAuth>>) {
        (self.tls, self.auth)
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn requires_password(&self) -> bool {
        self.auth.is_some()
    }
}

/// How the endpoint treats connections.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a connection may take to send a whole request head, from its accept (after
    /// the TLS handshake) or from its previous response: so also how long an idle keep-alive
    /// connection is kept.
    pub header_read_timeout: Duration,
    pub limits: connection_limit::Limits,
}

pub async fn serve(
    listener: std::net::TcpListener,
    render: RenderFn,
    protection: Protection,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let auth: basic_auth::SharedAuth = Arc::new(RwLock::new(protection.auth));
    let tls = protection.tls.map(RustlsConfig::from_config);
    let limit = ConnectionLimit::new(settings.limits);
    let render = {
        let limit = limit.clone();
        with_families(render, move || limit.families())
    };
    let render = match protection.snapshot {
        Some(snapshot) => {
            let status = Arc::new(reload::Status::default());
            let live = reload::Live {
                auth: auth.clone(),
                tls: tls.clone(),
            };
            // Ends with the runtime, which the agent drops when it stops.
            tokio::spawn(reload::watch(snapshot, live, status.clone()));
            with_families(render, move || status.families())
        }
        None => render,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /metrics or /healthz\n",
            )
        })
        .with_state(render)
        // Always in place: a reload may add users where there were none.
        .layer(middleware::from_fn_with_state(auth, basic_auth::require));
    // Added after the authentication layer, so it stays open: kubelet probes carry no
    // credentials, and "ok" tells nobody anything. TLS still applies to it.
    let app = app.route("/healthz", get(|| async { "ok\n" }));
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.graceful_shutdown(None);
    });
    // One server for both schemes, so both get the same timeouts. The first-request timeout
    // also covers hyper's detection of HTTP/1 or HTTP/2, which has no timeout of its own.
    let mut server = axum_server::from_tcp(listener)?
        .handle(handle)
        .first_request_timeout(settings.header_read_timeout)
        .accept_error_handler(|peer, error| match peer {
            Some(peer) => log::debug!("connection from {peer} closed: {error}"),
            None => log::debug!("accepting a connection: {error}"),
        });
    // axum_server turns hyper's header-read timeout off; it is what closes a connection that
    // sends nothing, half a request head, or nothing more after a response (a slow loris, or
    // a scraper gone without a FIN). HTTP/2 has no such timeout: pings find peers gone away.
    let builder = server.http_builder();
    builder
        .http1()
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .keep_alive_interval(settings.header_read_timeout);
    let app = app.into_make_service();
    match tls {
        // HTTP/2 is offered by ALPN over TLS only, as before.
        None => server.http1_only().acceptor(limit).serve(app).await?,
        // The limit first: a connection beyond it costs no handshake.
        Some(tls) => {
            let acceptor = RustlsAcceptor::new(tls).acceptor(limit);
            server.acceptor(acceptor).serve(app).await?
        }
    }
    Ok(())
}

/// `render`, followed by the endpoint's own families (connections, reloads).
fn with_families(
    render: RenderFn,
    families: impl Fn() -> Vec<Option<MetricFamily>> + Send + Sync + 'static,
) -> RenderFn {
    Arc::new(move || {
        let mut text = render()?;
        text.push_str(&metrics::encode(families()));
        Some(text)
    })
}

async fn metrics_page(State(render): State<RenderFn>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(Some(text)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            text,
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            "shutting down\n".to_owned(),
        ),
    }
}
