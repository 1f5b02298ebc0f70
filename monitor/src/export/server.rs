//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `GET /healthz`, 404 otherwise;
//! over TLS and behind Basic authentication when `--web-config-file` asks for them.

use std::{future::Future, path::Path, sync::Arc};

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

use super::{basic_auth::BasicAuth, tls, web_config};

/// Renders the metrics text; called on a blocking thread for every scrape.
pub type RenderFn = Arc<dyn Fn() -> Option<String> + Send + Sync>;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// TLS and Basic authentication, from `--web-config-file`; by default neither.
#[derive(Clone, Default)]
pub struct Protection {
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: Option<Arc<BasicAuth>>,
}

impl Protection {
    /// Reads the file and everything it names (certificates, keys, CA) now, so that a mistake
    /// stops the start with one line instead of failing handshakes later.
    pub fn load(web_config_file: Option<&Path>) -> Result<Self> {
        let Some(path) = web_config_file else {
            return Ok(Self::default());
        };
        let config = web_config::load(path)?;
        let tls = config
            .tls
            .as_ref()
            .map(|settings| tls::server_config(settings, config.http2))
            .transpose()
            .with_context(|| format!("--web-config-file {}", path.display()))?;
        Ok(Self {
            tls,
            auth: BasicAuth::new(&config.basic_auth_users),
        })
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
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /metrics or /healthz\n",
            )
        })
        .with_state(render);
    if let Some(auth) = protection.auth {
        app = app.layer(middleware::from_fn_with_state(
            auth,
            super::basic_auth::require,
        ));
    }
    // Added after the authentication layer, so it stays open: kubelet probes carry no
    // credentials, and "ok" tells nobody anything. TLS still applies to it.
    let app = app.route("/healthz", get(|| async { "ok\n" }));
    let Some(tls) = protection.tls else {
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
    axum_server::from_tcp_rustls(listener.into_std()?, RustlsConfig::from_config(tls))?
        .handle(handle)
        .accept_error_handler(|_, error| log::debug!("TLS connection refused: {error}"))
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

async fn metrics(State(render): State<RenderFn>) -> impl IntoResponse {
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
