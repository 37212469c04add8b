//! `/healthz`, `/readyz` and `/metrics` over plain HTTP.

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
