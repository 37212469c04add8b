//! An in-memory Kubernetes API server for tests, on loopback HTTP.
//!
//! It serves discovery, the REST verbs (create with `generateName`, get, list, watch, replace,
//! delete, deletecollection, merge/JSON/apply patch), status subresources, finalizers,
//! owner-reference garbage collection, namespaces, label and field selectors, watch resume,
//! bookmarks and 410 Gone, validates custom resources against their CRD schema, and answers
//! TokenReviews, TokenRequests and SubjectAccessReviews (RBAC over its stored roles). What it does
//! not do is in `APISERVER-GAPS.md` next to this crate.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use capwin_testkit::apiserver::{ApiServer, Config};
//! let server = ApiServer::start(Config { crd_paths: vec!["crds".into()], ..Config::default() }).await?;
//! println!("kubectl --server={} get ns", server.url());
//! # Ok(()) }
//! ```

pub mod audit;
pub mod auth;
mod clock;
pub mod errors;
mod http;
pub mod patch;
pub mod schema;
pub mod selector;
pub mod store;
pub mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use auth::UserInfo;
pub use clock::format_unix;
pub use store::Store;

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// CRD YAML files, or folders of them, loaded at start.
    pub crd_paths: Vec<PathBuf>,
    /// CRD YAML documents (e.g. embedded with `include_str!`), loaded at start.
    pub crd_documents: Vec<String>,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Events kept for watch resume; older resource versions get 410 Gone.
    pub history: usize,
    /// `major.minor` reported by `/version`.
    pub server_version: (u32, u32),
    /// Bearer tokens a TokenReview authenticates, and as whom (TokenRequests for stored
    /// ServiceAccounts mint more at run time). The server itself does not check tokens.
    pub tokens: BTreeMap<String, UserInfo>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 0,
            crd_paths: vec![],
            crd_documents: vec![],
            bookmark_interval: Duration::from_secs(1),
            history: 10_000,
            server_version: (1, 34),
            tokens: BTreeMap::new(),
        }
    }
}

/// A running server; dropping it stops it.
pub struct ApiServer {
    url: String,
    shared: Arc<http::Shared>,
    task: JoinHandle<()>,
}

impl ApiServer {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let mut store = Store::new(config.history);
        for p in &config.crd_paths {
            load_crds(&mut store, p)?;
        }
        for (i, doc) in config.crd_documents.iter().enumerate() {
            load_crd_text(&mut store, doc).with_context(|| format!("CRD document {i}"))?;
        }
        let shared = Arc::new(http::Shared {
            store: Mutex::new(store),
            bookmark_interval: config.bookmark_interval,
            server_version: config.server_version,
            requests: Default::default(),
            tokens: auth::Tokens::new(config.tokens.clone()),
        });
        let listener = TcpListener::bind(("127.0.0.1", config.port)).await.context("binding the API server port")?;
        let url = format!("http://{}", listener.local_addr()?);
        let serve = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = serve.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| http::handle(shared.clone(), req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(Self { url, shared, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request answered so far, by client (bearer token), verb and resource.
    pub fn requests(&self) -> std::collections::BTreeMap<audit::RequestKey, u64> {
        self.shared.requests.snapshot()
    }

    /// Direct access to the state, for tests (e.g. to compact the watch history).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.shared.lock())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates every `CustomResourceDefinition` found in a YAML file or a folder of them.
pub fn load_crds(store: &mut Store, path: &Path) -> anyhow::Result<usize> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut n = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        n += load_crd_text(store, &text).with_context(|| format!("loading {}", f.display()))?;
    }
    Ok(n)
}

/// Creates every `CustomResourceDefinition` in a YAML stream.
pub fn load_crd_text(store: &mut Store, text: &str) -> anyhow::Result<usize> {
    let crd_type = store.find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("built in");
    let mut n = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if v["kind"] == "CustomResourceDefinition" {
            store.create(&crd_type, "v1", "", v, false).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            n += 1;
        }
    }
    Ok(n)
}
