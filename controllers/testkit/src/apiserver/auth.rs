//! Minimal delegated authentication and authorisation, as a component's metrics endpoint uses
//! them (controller-runtime's `filters.WithAuthenticationAndAuthorization`):
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: a token from [`Config::tokens`] or one
//!   minted by a TokenRequest is authenticated as its user (plus `system:authenticated`);
//!   anything else is not.
//! - `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token` (TokenRequest): mints an opaque token
//!   for an existing ServiceAccount; it is valid until it expires or the ServiceAccount is deleted.
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: RBAC evaluated over the stored
//!   ClusterRoles, ClusterRoleBindings, Roles and RoleBindings (User, Group and ServiceAccount
//!   subjects; `*` and trailing-`*` nonResourceURLs; `*/subresource`), `system:masters` allowed.
//!
//! The server itself still serves every request without authentication; see APISERVER-GAPS.md.
//!
//! [`Config::tokens`]: super::Config::tokens

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;
use serde_json::{Value, json};

use super::errors::{ApiError, ApiResult};
use super::selector::{FieldSelector, LabelSelector};
use super::store::Store;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user with these groups.
    pub fn user(name: &str, groups: &[&str]) -> Self {
        Self { username: name.into(), uid: String::new(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    /// A ServiceAccount as the API server names it: `system:serviceaccount:NS:NAME`, groups
    /// `system:serviceaccounts` and `system:serviceaccounts:NS`.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: String::new(),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}")],
        }
    }
}

/// A token minted by a TokenRequest: bound to its ServiceAccount's uid, with an expiry.
struct Minted {
    user: UserInfo,
    namespace: String,
    name: String,
    sa_uid: String,
    expires: SystemTime,
}

/// The server's tokens.
pub struct Tokens {
    fixed: BTreeMap<String, UserInfo>,
    minted: Mutex<BTreeMap<String, Minted>>,
}

impl Tokens {
    pub fn new(fixed: BTreeMap<String, UserInfo>) -> Self {
        Self { fixed, minted: Mutex::new(BTreeMap::new()) }
    }
}

/// A request this module answers.
pub enum Endpoint {
    TokenReview,
    SubjectAccessReview,
    TokenRequest { namespace: String, name: String },
}

impl Endpoint {
    pub fn of(method: &Method, segs: &[&str]) -> Option<Self> {
        if method != Method::POST {
            return None;
        }
        match segs {
            ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => Some(Self::TokenReview),
            ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => Some(Self::SubjectAccessReview),
            ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] => {
                Some(Self::TokenRequest { namespace: ns.to_string(), name: name.to_string() })
            }
            _ => None,
        }
    }
}

/// Answers one request (the created object, 201).
pub fn handle(store: &Mutex<Store>, tokens: &Tokens, endpoint: Endpoint, body: &[u8]) -> ApiResult<Value> {
    let req: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let lock = || store.lock().unwrap_or_else(|p| p.into_inner());
    match endpoint {
        Endpoint::TokenReview => token_review(&lock(), tokens, req),
        Endpoint::SubjectAccessReview => subject_access_review(&lock(), req),
        Endpoint::TokenRequest { namespace, name } => token_request(&lock(), tokens, &namespace, &name, req),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn service_account_uid(store: &Store, namespace: &str, name: &str) -> Option<String> {
    let t = store.find_type("", "v1", "serviceaccounts")?;
    let sa = store.get(&t, "v1", namespace, name).ok()?;
    sa["metadata"]["uid"].as_str().map(String::from)
}

fn token_review(store: &Store, tokens: &Tokens, mut req: Value) -> ApiResult<Value> {
    let token = req["spec"]["token"].as_str().unwrap_or_default().to_string();
    if token.is_empty() {
        return Err(ApiError::bad_request("token is required for TokenReview in authentication"));
    }
    let user = tokens.fixed.get(&token).cloned().or_else(|| {
        let minted = tokens.minted.lock().unwrap_or_else(|p| p.into_inner());
        let m = minted.get(&token)?;
        let live = SystemTime::now() < m.expires
            && service_account_uid(store, &m.namespace, &m.name).is_some_and(|uid| uid == m.sa_uid);
        live.then(|| m.user.clone())
    });
    req["status"] = match user {
        Some(mut u) => {
            u.groups.push("system:authenticated".into());
            json!({"authenticated": true,
                "user": {"username": u.username, "uid": u.uid, "groups": u.groups},
                "audiences": req["spec"]["audiences"].as_array().cloned().unwrap_or_default()})
        }
        None => json!({"user": {}, "error": "invalid bearer token"}),
    };
    Ok(with_meta(req, "authentication.k8s.io/v1", "TokenReview"))
}

fn with_meta(mut v: Value, api_version: &str, kind: &str) -> Value {
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"]["creationTimestamp"] = Value::Null;
    v
}

fn token_request(store: &Store, tokens: &Tokens, namespace: &str, name: &str, mut req: Value) -> ApiResult<Value> {
    let sa_uid =
        service_account_uid(store, namespace, name).ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let secs = req["spec"]["expirationSeconds"].as_u64().unwrap_or(3600);
    if secs < 600 {
        return Err(ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            vec![("spec.expirationSeconds".into(), "may not specify a duration less than 10 minutes".into())],
        ));
    }
    let expires = SystemTime::now() + Duration::from_secs(secs);
    let mut minted = tokens.minted.lock().unwrap_or_else(|p| p.into_inner());
    let token = format!(
        "kit-sa.{namespace}.{name}.{:x}{:08x}",
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        minted.len()
    );
    let mut user = UserInfo::service_account(namespace, name);
    user.uid = sa_uid.clone();
    minted.insert(token.clone(), Minted { user, namespace: namespace.into(), name: name.into(), sa_uid, expires });
    req["spec"]["expirationSeconds"] = json!(secs);
    req["status"] = json!({"token": token, "expirationTimestamp": super::clock::format_unix(unix(expires))});
    let mut out = with_meta(req, "authentication.k8s.io/v1", "TokenRequest");
    out["metadata"]["name"] = json!(name);
    out["metadata"]["namespace"] = json!(namespace);
    Ok(out)
}

/// What a SubjectAccessReview asks about.
enum Attributes {
    NonResource { path: String, verb: String },
    Resource { namespace: String, verb: String, group: String, resource: String, subresource: String, name: String },
}

fn subject_access_review(store: &Store, mut req: Value) -> ApiResult<Value> {
    let spec = &req["spec"];
    let user = spec["user"].as_str().unwrap_or_default().to_string();
    let groups: Vec<String> =
        spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(String::from)).collect();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let invalid = |field: &str, msg: &str| {
        ApiError::invalid("SubjectAccessReview", "authorization.k8s.io", "", vec![(field.into(), msg.into())])
    };
    let attrs = match (spec["resourceAttributes"].is_object(), spec["nonResourceAttributes"].is_object()) {
        (true, true) => {
            return Err(invalid(
                "spec.nonResourceAttributes",
                "cannot be specified in combination with resourceAttributes",
            ));
        }
        (false, false) => {
            return Err(invalid(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
        (false, true) => {
            let n = &spec["nonResourceAttributes"];
            Attributes::NonResource { path: s(&n["path"]), verb: s(&n["verb"]) }
        }
        (true, false) => {
            let r = &spec["resourceAttributes"];
            Attributes::Resource {
                namespace: s(&r["namespace"]),
                verb: s(&r["verb"]),
                group: s(&r["group"]),
                resource: s(&r["resource"]),
                subresource: s(&r["subresource"]),
                name: s(&r["name"]),
            }
        }
    };
    if user.is_empty() && groups.is_empty() {
        return Err(invalid("spec.user", "at least one of user or group must be specified"));
    }
    let (allowed, reason) = authorize(store, &user, &groups, &attrs);
    req["status"] = json!({"allowed": allowed});
    if !reason.is_empty() {
        req["status"]["reason"] = json!(reason);
    }
    Ok(with_meta(req, "authorization.k8s.io/v1", "SubjectAccessReview"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn all(store: &Store, plural: &str, namespace: Option<&str>) -> Vec<Value> {
    let Some(t) = store.find_type("rbac.authorization.k8s.io", "v1", plural) else { return vec![] };
    let (labels, fields) = (LabelSelector::parse("").expect("empty"), FieldSelector::parse("").expect("empty"));
    store.list(&t, "v1", namespace, &labels, &fields)
}

/// Whether a binding's subject is this user (RBAC's `appliesTo`).
fn subject_matches(subject: &Value, user: &str, groups: &[String], binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => name == user,
        Some("Group") => groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
            user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn has(list: &[&str], want: &str) -> bool {
    list.iter().any(|x| *x == "*" || *x == want)
}

/// Whether one PolicyRule allows the request (RBAC's `RuleAllows`).
fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::NonResource { path, verb } => {
            has(&strings(&rule["verbs"]), verb)
                && strings(&rule["nonResourceURLs"]).iter().any(|u| {
                    *u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
                })
        }
        Attributes::Resource { verb, group, resource, subresource, name, .. } => {
            let combined = if subresource.is_empty() { resource.clone() } else { format!("{resource}/{subresource}") };
            let resources = strings(&rule["resources"]);
            let resource_ok = resources.iter().any(|r| {
                *r == "*"
                    || *r == combined
                    || (!subresource.is_empty() && r.strip_prefix("*/").is_some_and(|s| s == subresource))
            });
            let names = strings(&rule["resourceNames"]);
            has(&strings(&rule["verbs"]), verb)
                && has(&strings(&rule["apiGroups"]), group)
                && resource_ok
                && (names.is_empty() || names.contains(&name.as_str()))
        }
    }
}

fn authorize(store: &Store, user: &str, groups: &[String], attrs: &Attributes) -> (bool, String) {
    if groups.iter().any(|g| g == "system:masters") {
        return (true, String::new());
    }
    let role_rules = |kind: &str, name: &str, ns: &str| -> Vec<Value> {
        let (plural, in_ns) = if kind == "ClusterRole" { ("clusterroles", None) } else { ("roles", Some(ns)) };
        all(store, plural, in_ns)
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .and_then(|r| r["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let mut bindings: Vec<(Value, &str)> =
        all(store, "clusterrolebindings", None).into_iter().map(|b| (b, "ClusterRoleBinding")).collect();
    if let Attributes::Resource { namespace, .. } = attrs
        && !namespace.is_empty()
    {
        bindings.extend(all(store, "rolebindings", Some(namespace)).into_iter().map(|b| (b, "RoleBinding")));
    }
    for (b, binding_kind) in bindings {
        let ns = b["metadata"]["namespace"].as_str().unwrap_or_default();
        let Some(subject) =
            b["subjects"].as_array().into_iter().flatten().find(|s| subject_matches(s, user, groups, ns))
        else {
            continue;
        };
        let (role_kind, role_name) =
            (b["roleRef"]["kind"].as_str().unwrap_or_default(), b["roleRef"]["name"].as_str().unwrap_or_default());
        if binding_kind == "ClusterRoleBinding" && role_kind != "ClusterRole" {
            continue;
        }
        if role_rules(role_kind, role_name, ns).iter().any(|r| rule_allows(r, attrs)) {
            let binding = b["metadata"]["name"].as_str().unwrap_or_default();
            let who = format!(
                "{} {:?}",
                subject["kind"].as_str().unwrap_or_default(),
                subject["name"].as_str().unwrap_or_default()
            );
            let where_ = if ns.is_empty() { String::new() } else { format!(" in {ns:?}") };
            return (
                true,
                format!("RBAC: allowed by {binding_kind} {binding:?}{where_} of {role_kind} {role_name:?} to {who}"),
            );
        }
    }
    (false, String::new())
}
