//! HTTP routing: discovery, the REST verbs per resource, subresources and watch streams.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::errors::{ApiError, ApiResult};
use super::selector::{FieldSelector, LabelSelector, labels_of};
use super::store::{Event, PatchKind, Propagation, Store};
use super::types::ResourceType;

pub type Body = BoxBody<Bytes, Infallible>;

/// What every request handler shares.
pub struct Shared {
    pub store: Mutex<Store>,
    pub bookmark_interval: Duration,
    pub server_version: (u32, u32),
    /// Every request answered, by client, verb and resource.
    pub requests: super::audit::Requests,
    pub tokens: super::auth::Tokens,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a valid response")
}

fn error(e: ApiError) -> Response<Body> {
    full(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.status())
}

/// Decoded query parameters.
fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request routed to a resource.
struct Target {
    t: ResourceType,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    count(&shared, &req);
    Ok(match route(shared, req).await {
        Ok(r) => r,
        Err(e) => error(e),
    })
}

/// Counts the request by client, verb and resource ([`super::audit`]).
fn count(shared: &Shared, req: &Request<Incoming>) {
    let path = req.uri().path();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let watch = query(req).get("watch").is_some_and(|w| w == "true" || w == "1");
    let (verb, resource) = super::audit::classify(req.method(), &segs, watch);
    let auth = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let client = super::audit::client_of(auth);
    shared.requests.record(super::audit::RequestKey { client, verb, resource });
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if let Some(endpoint) = super::auth::Endpoint::of(req.method(), &segs) {
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return super::auth::handle(&shared.store, &shared.tokens, endpoint, &body)
            .map(|v| full(StatusCode::CREATED, v));
    }
    match segs.as_slice() {
        [] | ["healthz"] | ["readyz"] | ["livez"] => {
            return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed()));
        }
        ["version"] => {
            let (major, minor) = shared.server_version;
            return Ok(full(
                StatusCode::OK,
                json!({"major": major.to_string(), "minor": minor.to_string(), "gitVersion": format!("v{major}.{minor}.0-capwin-testkit"), "platform": "linux/amd64", "goVersion": "n/a", "compiler": "n/a", "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z"}),
            ));
        }
        ["api"] => {
            return Ok(full(
                StatusCode::OK,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ));
        }
        ["apis"] => return Ok(full(StatusCode::OK, group_list(&shared))),
        ["api", "v1"] => return Ok(full(StatusCode::OK, resource_list(&shared, "", "v1")?)),
        ["apis", g] => {
            let list = group_list(&shared);
            let group = list["groups"].as_array().and_then(|gs| gs.iter().find(|x| x["name"] == *g)).cloned();
            return match group {
                Some(mut g) => {
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    Ok(full(StatusCode::OK, g))
                }
                None => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
            };
        }
        ["apis", g, v] => return Ok(full(StatusCode::OK, resource_list(&shared, g, v)?)),
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest.to_vec()),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest.to_vec()),
        _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    let find = |plural: &str| {
        shared
            .lock()
            .find_type(&group, &version, plural)
            .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))
    };
    let target = match rest.as_slice() {
        ["namespaces", ns, plural, name, sub] => Target {
            t: find(plural)?,
            version,
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
        },
        ["namespaces", ns, plural, name] => Target {
            t: find(plural)?,
            version,
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            sub: None,
        },
        ["namespaces", name, sub] if *sub == "status" || *sub == "finalize" => Target {
            t: find("namespaces")?,
            version,
            namespace: None,
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
        },
        ["namespaces", ns, plural] => {
            Target { t: find(plural)?, version, namespace: Some(ns.to_string()), name: None, sub: None }
        }
        [plural, name, sub] => Target {
            t: find(plural)?,
            version,
            namespace: None,
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
        },
        [plural, name] => {
            Target { t: find(plural)?, version, namespace: None, name: Some(name.to_string()), sub: None }
        }
        [plural] => Target { t: find(plural)?, version, namespace: None, name: None, sub: None },
        _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    if target.t.namespaced && target.name.is_some() && target.namespace.is_none() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    if !target.t.namespaced && target.namespace.is_some() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    if let Some(sub) = &target.sub {
        let ok =
            (sub == "status" && target.t.status_subresource) || (sub == "finalize" && target.t.plural == "namespaces");
        if !ok {
            return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
        }
    }
    let q = query(&req);
    let method = req.method().clone();
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    // JSON (and YAML for apply) only: clients that tried protobuf or CBOR fall back on 415.
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !body.is_empty() && (media.contains("protobuf") || media.contains("cbor")) {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {media}"
            ),
        ));
    }
    let ns = target.namespace.clone().unwrap_or_default();
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    let status_sub = target.sub.is_some();
    let t = &target.t;
    let v = &target.version;
    match (&method, &target.name) {
        (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(shared, target, q).await
        }
        (&Method::GET, None) => list(&shared, &target, &q),
        (&Method::POST, None) => {
            let obj = parse_json(&body)?;
            let created = shared.lock().create(t, v, &ns, obj, dry_run)?;
            Ok(full(StatusCode::CREATED, created))
        }
        (&Method::DELETE, None) => {
            let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
            let mut store = shared.lock();
            let victims = store.list(t, v, target.namespace.as_deref(), &labels, &fields);
            let mut items = Vec::new();
            for o in victims {
                let n = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let ons = o["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
                items.push(store.delete(t, v, &ons, &n, Propagation::Background, &Value::Null, dry_run)?);
            }
            Ok(full(
                StatusCode::OK,
                json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(v), "metadata": {}, "items": items}),
            ))
        }
        (&Method::GET, Some(name)) => Ok(full(StatusCode::OK, shared.lock().get(t, v, &ns, name)?)),
        (&Method::PUT, Some(name)) => {
            let obj = parse_json(&body)?;
            Ok(full(StatusCode::OK, shared.lock().update(t, v, &ns, name, obj, status_sub, dry_run)?))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = match content_type.split(';').next().unwrap_or("").trim() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/json-patch+json" => PatchKind::Json,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchKind::Apply,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {other}"),
                    ));
                }
            };
            let patch: Value = if kind == PatchKind::Apply {
                serde_yaml_ng::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            } else {
                parse_json(&body)?
            };
            let manager = q.get("fieldManager").map(String::as_str);
            let force = q.get("force").is_some_and(|f| f == "true");
            let out = shared.lock().patch(t, v, &ns, name, kind, &patch, status_sub, manager, force, dry_run)?;
            Ok(full(StatusCode::OK, out))
        }
        (&Method::DELETE, Some(name)) => {
            let opts: Value = if body.is_empty() { Value::Null } else { parse_json(&body)? };
            let policy = q
                .get("propagationPolicy")
                .cloned()
                .or_else(|| opts["propagationPolicy"].as_str().map(String::from))
                .or_else(|| opts["orphanDependents"].as_bool().filter(|o| *o).map(|_| "Orphan".to_string()));
            let propagation = match policy.as_deref() {
                Some("Orphan") => Propagation::Orphan,
                Some("Foreground") => Propagation::Foreground,
                _ => Propagation::Background,
            };
            let out = shared.lock().delete(t, v, &ns, name, propagation, &opts["preconditions"], dry_run)?;
            Ok(full(StatusCode::OK, out))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )),
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
}

fn group_list(shared: &Shared) -> Value {
    let store = shared.lock();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in store.types().filter(|t| !t.group.is_empty()) {
        let e = groups.entry(t.group.clone()).or_default();
        for v in &t.versions {
            if !e.contains(v) {
                e.push(v.clone());
            }
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, mut vs)| {
            // The preferred version is the most stable one, as the real server orders them.
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
            let versions: Vec<Value> =
                vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(shared: &Shared, group: &str, version: &str) -> ApiResult<Value> {
    let store = shared.lock();
    let resources: Vec<Value> = store
        .types()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        .flat_map(|t| t.discovery_entries())
        .collect();
    if resources.is_empty() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn list(shared: &Shared, target: &Target, q: &BTreeMap<String, String>) -> ApiResult<Response<Body>> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let store = shared.lock();
    let items = store.list(&target.t, &target.version, target.namespace.as_deref(), &labels, &fields);
    let rv = store.resource_version();
    drop(store);
    let offset: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if offset + page.len() < total {
        meta["continue"] = json!((offset + page.len()).to_string());
        meta["remainingItemCount"] = json!(total - offset - page.len());
    }
    Ok(full(
        StatusCode::OK,
        json!({"kind": format!("{}List", target.t.kind), "apiVersion": target.t.api_version(&target.version), "metadata": meta, "items": page}),
    ))
}

/// Whether a watch sees this event, and as what (selector transitions become ADDED/DELETED).
fn watch_view(target: &Target, labels: &LabelSelector, fields: &FieldSelector, ev: &Event) -> Option<&'static str> {
    if ev.group != target.t.group || ev.plural != target.t.plural {
        return None;
    }
    if target.namespace.as_deref().is_some_and(|n| n != ev.namespace) {
        return None;
    }
    let matches = |o: &Value| labels.matches(&labels_of(o)) && fields.matches(o);
    let now = matches(&ev.object);
    let before = ev.previous.as_ref().map(matches);
    match (ev.kind, before, now) {
        ("MODIFIED", Some(false), true) => Some("ADDED"),
        ("MODIFIED", Some(true), false) => Some("DELETED"),
        ("MODIFIED", Some(false), false) => None,
        (k, _, true) => Some(k),
        _ => None,
    }
}

async fn watch(shared: Arc<Shared>, target: Target, q: BTreeMap<String, String>) -> ApiResult<Response<Body>> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let initial_end = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let from: u64 = q.get("resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
    let api_version = target.t.api_version(&target.version);
    let kind = target.t.kind.clone();

    // Snapshot and subscription under one lock, so no event falls between them.
    let (mut rx, initial, start_rv): (broadcast::Receiver<Arc<Event>>, Vec<Value>, u64) = {
        let store = shared.lock();
        let rx = store.subscribe();
        let rv = store.resource_version();
        if from == 0 || initial_end {
            let objs = store.list(&target.t, &target.version, target.namespace.as_deref(), &labels, &fields);
            (rx, objs.into_iter().map(|o| json!({"type": "ADDED", "object": o})).collect(), rv)
        } else {
            match store.events_since(from) {
                Ok(evs) => {
                    let out = evs
                        .iter()
                        .filter_map(|e| {
                            watch_view(&target, &labels, &fields, e).map(|k| {
                                let mut o = e.object.clone();
                                o["apiVersion"] = json!(api_version);
                                json!({"type": k, "object": o})
                            })
                        })
                        .collect();
                    (rx, out, rv)
                }
                Err(e) => (rx, vec![json!({"type": "ERROR", "object": e.status()})], u64::MAX),
            }
        }
    };

    let (tx, out_rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        let line = |v: &Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
        for ev in &initial {
            if tx.send(line(ev)).await.is_err() {
                return;
            }
        }
        if start_rv == u64::MAX {
            return; // 410 Gone was sent.
        }
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": meta}})
        };
        if initial_end && bookmarks && tx.send(line(&bookmark(start_rv, true))).await.is_err() {
            return;
        }
        let mut last_seen = start_rv;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let sleep_until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                _ = tokio::time::sleep_until(sleep_until) => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(line(&bookmark(last_seen, false))).await.is_err() {
                        return;
                    }
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last_seen {
                            continue;
                        }
                        last_seen = ev.rv;
                        if let Some(k) = watch_view(&target, &labels, &fields, &ev) {
                            let mut o = ev.object.clone();
                            o["apiVersion"] = json!(api_version);
                            if tx.send(line(&json!({"type": k, "object": o}))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::gone("the watch fell behind; relist");
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": gone.status()}))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response"))
}

/// Kubernetes version priority: GA over beta over alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else { return (0, 0, 0) };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, n) = if tail.is_empty() {
        (3, 0)
    } else if let Some(b) = tail.strip_prefix("beta") {
        (2, b.parse().unwrap_or(0))
    } else if let Some(a) = tail.strip_prefix("alpha") {
        (1, a.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, n)
}
