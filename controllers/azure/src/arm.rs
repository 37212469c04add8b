//! The one seam to Azure Resource Manager: raw calls behind a trait, their implementation on
//! `azure_core`'s pipeline, a call counter, and ARM's long-running-operation protocol on top.
//!
//! Retries: the pipeline's exponential retry policy retries 408/429/5xx and transport errors,
//! waiting what `Retry-After` / `x-ms-retry-after-ms` say (8 tries, at most 60 s in all); what is
//! left comes back as an [`ArmError`] the reconciler requeues with its own backoff.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    ClientOptions, Context, Method as HttpMethod, Pipeline, PipelineSendOptions, Request, Transport, Url,
};
use serde_json::Value;

use crate::metrics::Metrics;

/// The token scope for ARM.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// An ARM failure, reduced to what decisions need. Never carries a token or a request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ARM {operation}: {status} {code}: {message}")]
pub struct ArmError {
    /// `METHOD type`, e.g. `PUT virtualMachines`.
    pub operation: String,
    /// HTTP status; 0 when no answer came.
    pub status: u16,
    /// ARM's error code, e.g. `ResourceNotFound`, `TooManyRequests`, or `Transport`.
    pub code: String,
    pub message: String,
}

impl ArmError {
    pub fn not_found(&self) -> bool {
        self.status == 404
    }
    pub fn throttled(&self) -> bool {
        self.status == 429
    }
    /// A 404 that means the resource is not there (not a wrong subscription or type).
    pub fn resource_gone(&self) -> bool {
        self.status == 404 && matches!(self.code.as_str(), "ResourceNotFound" | "NotFound" | "ResourceGroupNotFound")
    }
    /// Worth retrying as is: throttling, server errors, no answer.
    pub fn transient(&self) -> bool {
        self.status == 0 || self.status == 408 || self.status == 429 || self.status >= 500
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// A 2xx answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub async_operation: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<Duration>,
}

/// The raw ARM calls the shim makes. `target` is an ARM path with its query
/// (`/subscriptions/...?api-version=...`) or an absolute URL ARM handed out (operation status,
/// `Location`); non-2xx answers are errors.
pub trait Arm: Send + Sync {
    fn call(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
        create_only: bool,
    ) -> impl Future<Output = Result<Reply, ArmError>> + Send;
    /// A storage URL with its own SAS signature (boot diagnostics): fetched without the ARM
    /// token, which must never reach a storage endpoint. `None` when the blob does not exist.
    fn blob(&self, url: &str) -> impl Future<Output = Result<Option<String>, ArmError>> + Send;
}

/// The counting key of a call: `METHOD type`, where type is the last resource type in the path
/// (`virtualMachines`, `networkInterfaces`, `operations`, `retrieveBootDiagnosticsData`, ...).
pub fn operation_key(method: Method, target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let path =
        path.split_once("://").map(|(_, rest)| rest.split_once('/').map(|(_, p)| p).unwrap_or("")).unwrap_or(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let kind = match segments.iter().rposition(|s| s.eq_ignore_ascii_case("providers")) {
        // providers/{Namespace}/{type}/{name}/{type}/{name}.../[action]
        Some(i) => {
            let rest = segments.get(i + 2..).unwrap_or(&[]);
            if rest.len() % 2 == 1 { rest.last() } else { rest.get(rest.len().saturating_sub(2)) }
                .copied()
                .unwrap_or("provider")
        }
        None => segments.get(2).copied().unwrap_or("arm"),
    };
    format!("{} {kind}", method.as_str())
}

/// Counts calls per [`operation_key`] (metrics and the figures in the docs come from here).
pub struct Counting<A> {
    inner: A,
    counts: Mutex<BTreeMap<String, u64>>,
    metrics: Option<Arc<Metrics>>,
    /// One back-off for every machine of this client when ARM throttles or does not answer
    /// (after the pipeline's own retries): they wait together and go on together.
    gate: capwin_infra::EndpointGate,
}

fn outcome<T>(r: &Result<T, ArmError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) if e.throttled() => "throttled",
        Err(e) if e.not_found() => "not_found",
        Err(_) => "error",
    }
}

impl<A> Counting<A> {
    pub fn new(inner: A) -> Self {
        Self { inner, counts: Mutex::default(), metrics: None, gate: Default::default() }
    }
    pub fn with_metrics(inner: A, metrics: Arc<Metrics>) -> Self {
        Self { inner, counts: Mutex::default(), metrics: Some(metrics), gate: Default::default() }
    }
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn bump(&self, key: String) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
    }
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: Arm> Arm for Counting<A> {
    async fn call(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
        create_only: bool,
    ) -> Result<Reply, ArmError> {
        let key = operation_key(method, target);
        self.gate.wait().await;
        self.bump(key.clone());
        let r = self.inner.call(method, target, body, create_only).await;
        match &r {
            Err(e) if e.throttled() || e.status == 0 || e.status >= 500 => self.gate.trouble(None),
            _ => self.gate.answered(),
        }
        if let Some(m) = &self.metrics {
            m.call(&key, outcome(&r));
        }
        r
    }
    async fn blob(&self, url: &str) -> Result<Option<String>, ArmError> {
        self.bump("GET blob".into());
        let r = self.inner.blob(url).await;
        if let Some(m) = &self.metrics {
            m.call("GET blob", outcome(&r));
        }
        r
    }
}

/// Where ARM is and how to reach it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `https://management.azure.com` or a stand-in.
    pub arm: Url,
    /// Extra CA certificates (PEM) to trust, for a stand-in.
    pub ca_pem: Option<Vec<u8>>,
}

/// [`Arm`] over HTTPS through `azure_core`'s pipeline with a bearer-token policy.
pub struct HttpArm {
    pipeline: Pipeline,
    endpoint: Url,
    /// Without the ARM token, for storage SAS URLs.
    plain: reqwest::Client,
}

/// The HTTP client both pipelines (ARM and, for credentials, the token endpoint) use.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).timeout(Duration::from_secs(60));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("CA bundle: {e}"))?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| format!("HTTP client: {e}"))
}

/// Client options with our transport (trusting the stand-in's CA when given).
pub fn client_options(http: &reqwest::Client) -> ClientOptions {
    ClientOptions { transport: Some(Transport::new(Arc::new(http.clone()))), ..Default::default() }
}

impl HttpArm {
    pub fn new(endpoint: &Endpoint, credential: Arc<dyn TokenCredential>) -> Result<Self, String> {
        let http = http_client(endpoint.ca_pem.as_deref())?;
        let auth = BearerTokenAuthorizationPolicy::new(credential, [ARM_SCOPE]);
        let pipeline = Pipeline::new(
            Some("capwin"),
            Some(env!("CARGO_PKG_VERSION")),
            client_options(&http),
            Vec::new(),
            vec![Arc::new(auth)],
            None,
        );
        Ok(Self { pipeline, endpoint: endpoint.arm.clone(), plain: http })
    }

    /// Absolute URL for a target; refuses URLs on another origin so the token stays with ARM.
    fn url(&self, target: &str, operation: &str) -> Result<Url, ArmError> {
        let bad =
            |m: String| ArmError { operation: operation.into(), status: 0, code: "InvalidUrl".into(), message: m };
        if target.starts_with('/') {
            return self.endpoint.join(target).map_err(|e| bad(format!("{e}")));
        }
        let u = Url::parse(target).map_err(|e| bad(format!("{e}")))?;
        if u.origin() != self.endpoint.origin() {
            return Err(bad(format!(
                "ARM handed out a URL on another host ({}); not sending credentials there",
                u.origin().ascii_serialization()
            )));
        }
        Ok(u)
    }
}

fn header(headers: &azure_core::http::headers::Headers, name: &'static str) -> Option<String> {
    headers.get_optional_string(&azure_core::http::headers::HeaderName::from_static(name))
}

/// ARM's error envelope `{"error": {"code", "message"}}` (or a bare `{"code","message"}`).
pub fn error_from(operation: String, status: u16, body: &str) -> ArmError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let e = if v["error"].is_object() { &v["error"] } else { &v };
    let code = e["code"].as_str().map(String::from).unwrap_or_else(|| format!("HTTP{status}"));
    let mut message = e["message"].as_str().unwrap_or("").to_string();
    if message.is_empty() {
        message = body.chars().take(200).collect();
    }
    ArmError { operation, status, code, message }
}

fn retry_after(headers: &azure_core::http::headers::Headers) -> Option<Duration> {
    if let Some(ms) = header(headers, "retry-after-ms").or_else(|| header(headers, "x-ms-retry-after-ms")) {
        return ms.trim().parse::<u64>().ok().map(Duration::from_millis);
    }
    header(headers, "retry-after").and_then(|s| s.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

impl Arm for HttpArm {
    async fn call(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
        create_only: bool,
    ) -> Result<Reply, ArmError> {
        let operation = operation_key(method, target);
        let url = self.url(target, &operation)?;
        let m = match method {
            Method::Get => HttpMethod::Get,
            Method::Put => HttpMethod::Put,
            Method::Post => HttpMethod::Post,
            Method::Delete => HttpMethod::Delete,
        };
        let mut req = Request::new(url, m);
        req.insert_header("accept", "application/json");
        if create_only {
            req.insert_header("if-none-match", "*");
        }
        if let Some(b) = body {
            req.insert_header("content-type", "application/json");
            req.set_body(serde_json::to_vec(b).unwrap_or_default());
        } else if method != Method::Get {
            req.set_body(Vec::new());
        }
        let opts = PipelineSendOptions { skip_checks: true, ..Default::default() };
        let resp = self.pipeline.send(&Context::new(), &mut req, Some(opts)).await.map_err(|e| {
            // A credential that cannot get a token is not an outage: no retry storm against
            // Entra ID, and the condition names it. azure_core's messages name the URL, tenant
            // and cause, never the secret or the token.
            let credential = matches!(e.kind(), azure_core::error::ErrorKind::Credential);
            ArmError {
                operation: operation.clone(),
                status: if credential { 401 } else { e.http_status().map(u16::from).unwrap_or(0) },
                code: if credential { "CredentialUnavailable" } else { "Transport" }.into(),
                message: e.to_string().chars().take(300).collect(),
            }
        })?;
        let status = u16::from(resp.status());
        let headers = resp.headers().clone();
        let text = resp.into_body().into_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(error_from(operation, status, &text));
        }
        let body =
            if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
        Ok(Reply {
            status,
            body,
            async_operation: header(&headers, "azure-asyncoperation"),
            location: header(&headers, "location"),
            retry_after: retry_after(&headers),
        })
    }

    async fn blob(&self, url: &str) -> Result<Option<String>, ArmError> {
        let err = |status: u16, code: &str, message: String| ArmError {
            operation: "GET blob".into(),
            status,
            code: code.into(),
            message,
        };
        let resp = self.plain.get(url).send().await.map_err(|e| err(0, "Transport", e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(err(status, "BlobError", format!("boot diagnostics log answered {status}")));
        }
        resp.text().await.map(Some).map_err(|e| err(0, "Transport", e.without_url().to_string()))
    }
}

/// A long-running operation ARM started, and how to follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `Azure-AsyncOperation`: a status document.
    AsyncOperation(String),
    /// `Location`: 202 while running, 200/204 when done.
    Location(String),
    /// Nothing to follow: done with the answer.
    Done,
}

impl Operation {
    fn from_reply(r: &Reply) -> Self {
        match (&r.async_operation, &r.location) {
            (Some(a), _) => Operation::AsyncOperation(a.clone()),
            (None, Some(l)) if r.status == 202 => Operation::Location(l.clone()),
            _ => Operation::Done,
        }
    }
}

/// Where an operation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    Running { retry_after: Option<Duration> },
    Succeeded,
    Failed { code: String, message: String },
}

/// GET of a resource; `None` when it does not exist.
pub async fn get<A: Arm>(arm: &A, id: &str, api_version: &str) -> Result<Option<Value>, ArmError> {
    get_path(arm, &format!("{id}?api-version={api_version}")).await
}

/// GET for deletion checks: `None` only when ARM says the resource (or its group) is not there;
/// any other 404 (subscription, type) is an error, so a wrong credential never looks like "gone".
pub async fn get_existing<A: Arm>(arm: &A, id: &str, api_version: &str) -> Result<Option<Value>, ArmError> {
    match arm.call(Method::Get, &format!("{id}?api-version={api_version}"), None, false).await {
        Ok(r) => Ok(Some(r.body)),
        Err(e) if e.resource_gone() => Ok(None),
        Err(e) => Err(e),
    }
}

/// GET of a full path with query; `None` on 404.
pub async fn get_path<A: Arm>(arm: &A, target: &str) -> Result<Option<Value>, ArmError> {
    match arm.call(Method::Get, target, None, false).await {
        Ok(r) => Ok(Some(r.body)),
        Err(e) if e.not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a PUT ARM accepted: the resource as answered, the operation to follow (if any), and
/// ARM's advised interval before looking again.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub body: Value,
    pub op: Operation,
    pub retry_after: Option<Duration>,
}

impl Accepted {
    /// A PUT whose answer already carries a terminal `provisioningState: Succeeded` is done,
    /// whatever operation header came with it: azure-sdk-for-go's Azure-AsyncOperation poller
    /// (`azcore/internal/pollers/async`, `New`) reads the initial body's provisioning state and
    /// polls only while it is not terminal. NRP answers a NIC create this way.
    pub fn from_put_reply(r: Reply) -> Self {
        let state = r.body["properties"]["provisioningState"].as_str().unwrap_or_default();
        let op = if state.eq_ignore_ascii_case("succeeded") { Operation::Done } else { Operation::from_reply(&r) };
        Self { op, retry_after: r.retry_after, body: r.body }
    }
}

/// PUT (create or update); with `create_only`, `If-None-Match: *` makes ARM refuse to touch an
/// existing resource (412) where the resource provider implements it (Compute documents it for
/// virtual machines; NRP documents no such header for network interfaces, so a NIC is looked up
/// before it is created, as CAPZ does).
pub async fn put<A: Arm>(
    arm: &A,
    id: &str,
    api_version: &str,
    body: &Value,
    create_only: bool,
) -> Result<Accepted, ArmError> {
    let r = arm.call(Method::Put, &format!("{id}?api-version={api_version}"), Some(body), create_only).await?;
    Ok(Accepted::from_put_reply(r))
}

/// DELETE; `None` when the resource was already gone (204, or a 404 saying the resource or its
/// resource group does not exist; a 404 for the subscription or the type is an error, not "gone").
pub async fn delete<A: Arm>(arm: &A, id: &str, api_version: &str) -> Result<Option<Operation>, ArmError> {
    match arm.call(Method::Delete, &format!("{id}?api-version={api_version}"), None, false).await {
        Ok(r) if r.status == 204 => Ok(None),
        Ok(r) => Ok(Some(Operation::from_reply(&r))),
        Err(e) if e.resource_gone() => Ok(None),
        Err(e) => Err(e),
    }
}

/// One poll of an operation.
pub async fn poll<A: Arm>(arm: &A, op: &Operation) -> Result<OperationStatus, ArmError> {
    match op {
        Operation::Done => Ok(OperationStatus::Succeeded),
        Operation::AsyncOperation(url) => {
            let r = arm.call(Method::Get, url, None, false).await?;
            let status = r.body["status"].as_str().unwrap_or("InProgress");
            // ARM's terminal states, in any casing (some resource providers answer lower case).
            Ok(match status.to_ascii_lowercase().as_str() {
                "succeeded" => OperationStatus::Succeeded,
                "failed" | "canceled" | "cancelled" => OperationStatus::Failed {
                    code: r.body["error"]["code"].as_str().unwrap_or(status).to_string(),
                    message: r.body["error"]["message"].as_str().unwrap_or("the operation did not succeed").to_string(),
                },
                _ => OperationStatus::Running { retry_after: r.retry_after },
            })
        }
        Operation::Location(url) => match arm.call(Method::Get, url, None, false).await {
            Ok(r) if r.status == 202 => Ok(OperationStatus::Running { retry_after: r.retry_after }),
            Ok(_) => Ok(OperationStatus::Succeeded),
            Err(e) if !e.transient() => Ok(OperationStatus::Failed { code: e.code, message: e.message }),
            Err(e) => Err(e),
        },
    }
}

/// Polls until the operation ends or `budget` runs out (then `Running`: the caller requeues and
/// reads the resource's `provisioningState` later, which ARM keeps authoritative).
pub async fn wait<A: Arm>(arm: &A, op: &Operation, budget: Duration) -> Result<OperationStatus, ArmError> {
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let status = poll(arm, op).await?;
        let OperationStatus::Running { retry_after } = status else { return Ok(status) };
        // ARM's Retry-After, at least 200 ms between polls (0 from a stand-in must not spin), at
        // most 10 s so one long poll does not eat the budget.
        let pause =
            retry_after.unwrap_or(Duration::from_secs(2)).clamp(Duration::from_millis(200), Duration::from_secs(10));
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(OperationStatus::Running { retry_after });
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_keys_name_the_resource_type() {
        let vm = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v?api-version=1";
        assert_eq!(operation_key(Method::Put, vm), "PUT virtualMachines");
        assert_eq!(
            operation_key(
                Method::Post,
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v/retrieveBootDiagnosticsData?x"
            ),
            "POST retrieveBootDiagnosticsData"
        );
        assert_eq!(
            operation_key(
                Method::Get,
                "https://127.0.0.1:1/subscriptions/s/providers/Microsoft.Compute/locations/w/operations/abc?api-version=1"
            ),
            "GET operations"
        );
        assert_eq!(
            operation_key(
                Method::Get,
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets/n?a"
            ),
            "GET subnets"
        );
        assert_eq!(
            operation_key(
                Method::Get,
                "/subscriptions/s/providers/Microsoft.Compute/locations/w/publishers/p/artifacttypes/vmimage/offers/o/skus/s/versions?a"
            ),
            "GET versions"
        );
    }

    #[test]
    fn odd_paths_never_panic() {
        for t in ["/subscriptions/x/providers", "/subscriptions/x/providers/", "", "https://h", "/a?b"] {
            let _ = operation_key(Method::Get, t);
        }
        assert_eq!(operation_key(Method::Get, "/subscriptions/x/providers"), "GET provider");
    }

    #[test]
    fn only_resource_and_group_404s_mean_gone() {
        let e = |code: &str| ArmError {
            operation: "DELETE x".into(),
            status: 404,
            code: code.into(),
            message: String::new(),
        };
        assert!(
            e("ResourceNotFound").resource_gone()
                && e("NotFound").resource_gone()
                && e("ResourceGroupNotFound").resource_gone()
        );
        assert!(!e("SubscriptionNotFound").resource_gone() && !e("InvalidResourceType").resource_gone());
    }

    #[test]
    fn errors_come_from_the_arm_envelope() {
        let e = error_from("GET x".into(), 404, r#"{"error":{"code":"ResourceNotFound","message":"gone"}}"#);
        assert_eq!((e.code.as_str(), e.message.as_str(), e.not_found()), ("ResourceNotFound", "gone", true));
        let e = error_from("GET x".into(), 503, "oops");
        assert_eq!((e.code.as_str(), e.message.as_str(), e.transient()), ("HTTP503", "oops", true));
        assert!(!error_from("PUT x".into(), 400, "{}").transient());
    }

    /// A scripted ARM: answers in order, records what was asked.
    struct Script(Mutex<Vec<Result<Reply, ArmError>>>, Mutex<Vec<String>>);
    impl Arm for Script {
        async fn call(&self, m: Method, t: &str, _: Option<&Value>, _: bool) -> Result<Reply, ArmError> {
            self.1.lock().unwrap().push(format!("{} {t}", m.as_str()));
            self.0.lock().unwrap().remove(0)
        }
        async fn blob(&self, _: &str) -> Result<Option<String>, ArmError> {
            Ok(None)
        }
    }
    fn reply(status: u16, body: Value) -> Result<Reply, ArmError> {
        Ok(Reply { status, body, retry_after: Some(Duration::ZERO), ..Default::default() })
    }

    #[tokio::test]
    async fn async_operations_are_polled_until_they_end() {
        let arm = Script(
            Mutex::new(vec![
                reply(200, serde_json::json!({"status": "InProgress"})),
                reply(
                    200,
                    serde_json::json!({"status": "Failed", "error": {"code": "AllocationFailed", "message": "no room"}}),
                ),
            ]),
            Mutex::default(),
        );
        let s = wait(&arm, &Operation::AsyncOperation("https://a/op".into()), Duration::from_secs(5)).await.unwrap();
        assert_eq!(s, OperationStatus::Failed { code: "AllocationFailed".into(), message: "no room".into() });
        assert_eq!(arm.1.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn location_polls_end_on_200_and_the_budget_ends_waiting() {
        let arm = Script(Mutex::new(vec![reply(202, Value::Null), reply(200, Value::Null)]), Mutex::default());
        assert_eq!(
            wait(&arm, &Operation::Location("https://a/l".into()), Duration::from_secs(5)).await,
            Ok(OperationStatus::Succeeded)
        );
        let arm = Script(Mutex::new(vec![reply(202, Value::Null)]), Mutex::default());
        let s = wait(&arm, &Operation::Location("https://a/l".into()), Duration::from_millis(100)).await.unwrap();
        assert!(matches!(s, OperationStatus::Running { .. }));
    }

    #[tokio::test]
    async fn delete_of_a_missing_resource_is_done() {
        let arm = Script(Mutex::new(vec![reply(204, Value::Null)]), Mutex::default());
        assert_eq!(delete(&arm, "/x", "1").await, Ok(None));
        let gone = ArmError {
            operation: "DELETE x".into(),
            status: 404,
            code: "ResourceNotFound".into(),
            message: String::new(),
        };
        let arm = Script(Mutex::new(vec![Err(gone)]), Mutex::default());
        assert_eq!(delete(&arm, "/x", "1").await, Ok(None));
    }

    #[test]
    fn a_put_answered_with_a_terminal_state_is_not_polled() {
        let r = |state: &str| Reply {
            status: 201,
            body: serde_json::json!({"properties": {"provisioningState": state}}),
            async_operation: Some("https://a/op".into()),
            retry_after: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        let nic = Accepted::from_put_reply(r("Succeeded"));
        assert_eq!(nic.op, Operation::Done, "NRP's usual NIC answer");
        let vm = Accepted::from_put_reply(r("Creating"));
        assert_eq!(vm.op, Operation::AsyncOperation("https://a/op".into()));
        assert_eq!(vm.retry_after, Some(Duration::from_secs(10)));
        let no_body = Accepted::from_put_reply(Reply { body: Value::Null, ..r("") });
        assert_eq!(no_body.op, Operation::AsyncOperation("https://a/op".into()), "no state: follow the header");
    }

    #[tokio::test]
    async fn a_201_with_async_operation_is_followed_through_the_header() {
        let r = Reply { status: 201, async_operation: Some("https://a/op".into()), ..Default::default() };
        assert_eq!(Operation::from_reply(&r), Operation::AsyncOperation("https://a/op".into()));
        let r = Reply { status: 202, location: Some("https://a/l".into()), ..Default::default() };
        assert_eq!(Operation::from_reply(&r), Operation::Location("https://a/l".into()));
        let r = Reply { status: 200, location: Some("https://a/l".into()), ..Default::default() };
        assert_eq!(Operation::from_reply(&r), Operation::Done);
    }
}
