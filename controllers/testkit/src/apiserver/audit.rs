//! Who asked what: every request the server answers, counted by client, verb and resource, as
//! a kube-apiserver audit log would let one count them. The client is the bearer token the
//! request carried (`anonymous` without one): give each process its own token in its
//! kubeconfig and the counts split by process. Tokens are not authenticated here; they are
//! only names.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hyper::Method;
use serde::Serialize;

/// One counter's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RequestKey {
    /// The bearer token, or `anonymous`.
    pub client: String,
    /// Kubernetes' audit verb: get, list, watch, create, update, patch, delete,
    /// deletecollection; `discovery` for the discovery and version endpoints.
    pub verb: String,
    /// The resource's plural, with `/<subresource>` when there is one (`machines/status`).
    pub resource: String,
}

impl RequestKey {
    /// Whether the verb changes state.
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }
}

/// The counters.
#[derive(Default)]
pub struct Requests(Mutex<BTreeMap<RequestKey, u64>>);

impl Requests {
    pub fn record(&self, key: RequestKey) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
    }

    /// Every counter so far.
    pub fn snapshot(&self) -> BTreeMap<RequestKey, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The client of a request: its bearer token, or `anonymous`.
pub fn client_of(authorization: Option<&str>) -> String {
    authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or("anonymous")
        .to_string()
}

/// The audit verb and resource of a request path (`/api/v1/namespaces/ns/secrets/x`), from the
/// method, the path segments and whether the query asks for a watch.
pub fn classify(method: &Method, segs: &[&str], watch: bool) -> (String, String) {
    let rest = match segs {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return ("discovery".into(), String::new()),
    };
    let (resource, name, sub) = match rest {
        [] => return ("discovery".into(), String::new()),
        ["namespaces", _, plural, tail @ ..] => (*plural, tail.first(), tail.get(1)),
        [plural, tail @ ..] => (*plural, tail.first(), tail.get(1)),
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    let verb = match (method, name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "other",
    };
    (verb.into(), resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: Method, path: &str, watch: bool) -> (String, String) {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (v, r) = classify(&method, &segs, watch);
        (v, r)
    }

    #[test]
    fn requests_are_classified_as_the_audit_log_would() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(c(Method::GET, "/api/v1/namespaces/ns/secrets/x", false), s("get", "secrets"));
        assert_eq!(c(Method::GET, "/api/v1/namespaces/ns/secrets", false), s("list", "secrets"));
        assert_eq!(c(Method::GET, "/api/v1/secrets", true), s("watch", "secrets"));
        assert_eq!(
            c(Method::PATCH, "/apis/cluster.x-k8s.io/v1beta2/namespaces/ns/machines/m/status", false),
            s("patch", "machines/status")
        );
        assert_eq!(c(Method::POST, "/api/v1/namespaces/ns/events", false), s("create", "events"));
        assert_eq!(c(Method::DELETE, "/api/v1/namespaces/ns/secrets/x", false), s("delete", "secrets"));
        assert_eq!(c(Method::GET, "/api/v1/namespaces/ns", false), s("get", "namespaces"));
        assert_eq!(c(Method::GET, "/apis/cluster.x-k8s.io/v1beta2", false), s("discovery", ""));
        assert_eq!(c(Method::GET, "/version", false), s("discovery", ""));
        assert_eq!(client_of(Some("Bearer capwin-bootstrap")), "capwin-bootstrap");
        assert_eq!(client_of(None), "anonymous");
        assert_eq!(client_of(Some("Basic eA==")), "anonymous");
    }
}
