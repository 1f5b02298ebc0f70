//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `GET /healthz`, 404 otherwise;
//! over TLS and behind Basic authentication when `--web-config-file` asks for them.

use std::{
    future::Future,
    path::Path,
    sync::{Arc, RwLock},
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
use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;

use super::{
    basic_auth::{self, BasicAuth},
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

pub async fn serve(
    listener: TcpListener,
    render: RenderFn,
    protection: Protection,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let auth: basic_auth::SharedAuth = Arc::new(RwLock::new(protection.auth));
    let tls = protection.tls.map(RustlsConfig::from_config);
    let render = match protection.snapshot {
        Some(snapshot) => {
            let status = Arc::new(reload::Status::default());
            let live = reload::Live {
                auth: auth.clone(),
                tls: tls.clone(),
            };
            // Ends with the runtime, which the agent drops when it stops.
            tokio::spawn(reload::watch(snapshot, live, status.clone()));
            with_reload_status(render, status)
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
    let Some(tls) = tls else {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        return Ok(());
    };
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.graceful_shutdown(None);
    });
    axum_server::from_tcp_rustls(listener.into_std()?, tls)?
        .handle(handle)
        .accept_error_handler(|_, error| log::debug!("TLS connection refused: {error}"))
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

/// `render`, followed by the reloads' outcomes.
fn with_reload_status(render: RenderFn, status: Arc<reload::Status>) -> RenderFn {
    Arc::new(move || {
        let mut text = render()?;
        text.push_str(&metrics::encode(status.families()));
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
