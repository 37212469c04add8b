//! `/healthz`, `/readyz` and `/metrics` over plain HTTP, and `/metrics` over HTTPS behind
//! TokenReview + SubjectAccessReview ([`serve_secure`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>, ready: Arc<AtomicBool>, metrics: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (registry, ready) = (registry.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (registry, ready) = (registry.clone(), ready.clone());
                async move { Ok::<_, Infallible>(respond(req.uri().path(), &registry, &ready, metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The secure metrics server: TLS, then every request authenticated and authorised by `auth`
/// before it is answered (401 / 403 / 500 as controller-runtime's filter answers).
pub async fn serve_secure(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    auth: Arc<crate::metrics_auth::Auth>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (tls, registry, ready, auth) = (tls.clone(), registry.clone(), ready.clone(), auth.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(stream)).await
            else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (registry, ready, auth) = (registry.clone(), ready.clone(), auth.clone());
                async move {
                    use crate::metrics_auth::Refusal;
                    let refused = match auth.check(req.headers(), req.method(), req.uri().path()).await {
                        Ok(()) => return Ok::<_, Infallible>(respond(req.uri().path(), &registry, &ready, true)),
                        Err(Refusal::Unauthorized) => (StatusCode::UNAUTHORIZED, "Unauthorized".to_string()),
                        Err(Refusal::Forbidden(user)) => {
                            (StatusCode::FORBIDDEN, format!("Authorization denied for user {user}"))
                        }
                        Err(Refusal::Failed(msg)) => (StatusCode::INTERNAL_SERVER_ERROR, msg),
                    };
                    Ok(text(refused.0, refused.1))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body + "\n")))
        .expect("a valid response")
}

fn respond(path: &str, registry: &Registry, ready: &AtomicBool, metrics: bool) -> Response<Full<Bytes>> {
    let (status, body, ctype) = match path {
        "/healthz" | "/livez" => (StatusCode::OK, "ok".to_string(), "text/plain"),
        "/readyz" if ready.load(Ordering::SeqCst) => (StatusCode::OK, "ok".to_string(), "text/plain"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "controllers not started".to_string(), "text/plain"),
        "/metrics" if metrics => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => (StatusCode::OK, out, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed".into(), "text/plain"),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found".to_string(), "text/plain"),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
