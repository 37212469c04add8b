//! AWS credentials per cluster, resolved the way CAPA resolves them, so a CAPA user's identities
//! work unchanged for the cluster's Windows machines.
//!
//! Which CAPA code each rule follows (kubernetes-sigs/cluster-api-provider-aws, v2.11):
//!
//! - `pkg/cloud/scope/session.go` `buildProvidersForRef`: the identity is the one the machine's
//!   cluster's `AWSCluster` names in `spec.identityRef`; without one, the controller's own
//!   credentials (the default chain). `AWSClusterControllerIdentity` means the controller's own
//!   credentials too, but only under the name `default` (`buildAWSClusterControllerIdentity`
//!   enforces the singleton) and only where its `allowedNamespaces` permits. An
//!   `AWSClusterRoleIdentity` is assumed with the credentials of its `sourceIdentityRef` (any
//!   kind; none = the controller's own), recursively; every identity in the chain must permit
//!   the namespace. A static identity's Secret lives in the manager's namespace.
//! - `isClusterPermittedToUsePrincipal` (same file) for `allowedNamespaces` ([`namespace_permitted`]).
//! - `api/v1beta2/awsidentity_types.go` for the fields (`roleARN`, `sessionName`,
//!   `durationSeconds`, `externalID`, `inlinePolicy`, `policyARNs`, `sourceIdentityRef`,
//!   `secretRef`).
//! - `pkg/cloud/identity/identity.go` / `identityv2/identity.go`: the Secret's keys
//!   `AccessKeyID`, `SecretAccessKey`, `SessionToken`; AssumeRole with the session name, duration
//!   (unset: the Go SDK's 15 minutes), external ID and inline policy. CAPA ignores `policyARNs`;
//!   capwin passes them to AssumeRole, as the field documents.
//! - `session.go` again: credentials are retrieved once when the client is built, so a source that
//!   may not assume the role shows up as a condition rather than as failing EC2 calls.
//! - `controllers/awsmachinetemplate_controller.go`: a template's cluster is its owner `Cluster`
//!   ([`template_cluster`]; capwin also accepts the `cluster.x-k8s.io/cluster-name` label). CAPA
//!   looks capacity up with its own credentials; capwin uses the cluster's identity (issue 15),
//!   and the manager's own for a template no cluster claims (instance type sizes are public).
//!
//! Deliberate differences: a static identity's `allowedNamespaces` is checked before its Secret is
//! read (CAPA reads the Secret first, so a missing Secret shows even to a namespace that may not
//! use the identity); capwin does not add the identity as an owner of the Secret (CAPA does, for
//! `clusterctl move`; capwin only reads); a `sourceIdentityRef` chain longer than [`MAX_CHAIN`]
//! (a cycle) is refused instead of recursing.
//!
//! The core ([`plan`]) is pure: identity objects in, a [`Plan`] or a [`Blocked`] reason naming the
//! field out. [`Identities`] is the I/O edge: it reads the objects, builds and caches EC2 clients
//! per identity chain and `resourceVersion`s, and renews assumed-role credentials ahead of
//! expiry. No secret value is ever logged or put in a condition, event or error.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_sts::error::ProvideErrorMetadata;
use capwin_infra::Error;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::ec2::SdkEc2;
use crate::metrics::Metrics;

pub const GROUP: &str = "infrastructure.cluster.x-k8s.io";
/// The CAPA API version capwin reads (CAPA v2's storage version).
pub const VERSION: &str = "v1beta2";
pub const CONTROLLER_KIND: &str = "AWSClusterControllerIdentity";
pub const ROLE_KIND: &str = "AWSClusterRoleIdentity";
pub const STATIC_KIND: &str = "AWSClusterStaticIdentity";
/// The only name an `AWSClusterControllerIdentity` may have (CAPA's
/// `AWSClusterControllerIdentityName`).
pub const CONTROLLER_NAME: &str = "default";
/// Longest `sourceIdentityRef` chain followed (CAPA has no limit; a cycle would recurse forever).
pub const MAX_CHAIN: usize = 8;
/// AssumeRole's session length when `durationSeconds` is unset: what CAPA gets from the Go
/// SDK's `stscreds.DefaultDuration`.
pub const DEFAULT_DURATION_SECONDS: i32 = 900;
/// Assumed-role credentials are renewed when they have less than this left.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Condition reasons this module gives.
pub const REASONS: &[&str] = &[
    "IdentityNotFound",
    "IdentityNotAllowed",
    "IdentityNotSupported",
    "InvalidIdentity",
    "IdentitySecretNotFound",
    "AssumeRoleFailed",
    "ClusterNotFound",
];

const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";

/// `AWSCluster.spec.identityRef` / `AWSClusterRoleIdentity.spec.sourceIdentityRef`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityRef {
    pub kind: String,
    pub name: String,
}

impl IdentityRef {
    pub fn new(kind: &str, name: &str) -> Self {
        Self { kind: kind.into(), name: name.into() }
    }

    /// From `{kind, name}`; `None` when absent or either is empty.
    pub fn from_value(v: &Value) -> Option<Self> {
        let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(String::from);
        Some(Self { kind: s("kind")?, name: s("name")? })
    }
}

impl std::fmt::Display for IdentityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The cluster-scoped resource of an identity kind.
pub fn resource(kind: &str) -> Option<ApiResource> {
    let plural = match kind {
        CONTROLLER_KIND => "awsclustercontrolleridentities",
        ROLE_KIND => "awsclusterroleidentities",
        STATIC_KIND => "awsclusterstaticidentities",
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural))
}

/// One role to assume (an `AWSClusterRoleIdentity`'s spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleSpec {
    /// The `AWSClusterRoleIdentity`'s name.
    pub identity: String,
    pub role_arn: String,
    /// Empty: a fresh `capwin-<nanoseconds>` per AssumeRole, as the Go SDK makes one for CAPA.
    pub session_name: String,
    pub duration_seconds: i32,
    pub external_id: Option<String>,
    pub inline_policy: Option<String>,
    pub policy_arns: Vec<String>,
}

/// Where a chain's first credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The manager's own (the default chain: environment, IRSA, instance role).
    Controller,
    /// The keys of a Secret in the manager's namespace.
    Static { identity: String, secret: String },
}

/// How to get a cluster's credentials: start from `source`, then assume each role in turn (the
/// first with the source's credentials, each next one with the previous role's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub source: Source,
    pub roles: Vec<RoleSpec>,
    /// The identities read, top first, with their `resourceVersion`s (the cache key).
    pub chain: Vec<(IdentityRef, String)>,
}

impl Plan {
    /// The manager's own credentials, unchanged: its default EC2 client serves.
    pub fn is_controller(&self) -> bool {
        self.source == Source::Controller && self.roles.is_empty()
    }

    /// Changes whenever any identity of the chain does.
    pub fn version(&self) -> String {
        self.chain.iter().map(|(r, v)| format!("{}/{}@{v}", r.kind, r.name)).collect::<Vec<_>>().join(">")
    }
}

/// Why a cluster's identity cannot be used: the shared blocked type, a reason and a message
/// naming the field, and a retry that fits the reason.
pub use capwin_infra::Blocked;

/// A blocked identity, retried as its reason fits: an unsupported kind rarely changes, a
/// namespace may be allowed any moment.
fn identity_blocked(reason: &'static str, message: String) -> Blocked {
    let retry = match reason {
        "IdentityNotSupported" => Duration::from_secs(300),
        "InvalidIdentity" => Duration::from_secs(60),
        "IdentityNotAllowed" => Duration::from_secs(20),
        _ => Duration::from_secs(30),
    };
    Blocked::new(reason, message, Some(retry))
}

/// Identity objects (JSON, as read) by reference.
pub type Objects = BTreeMap<IdentityRef, Value>;

/// Whether a namespace (with its labels) may use an identity with this `allowedNamespaces`,
/// by CAPA's `isClusterPermittedToUsePrincipal`:
///
/// - absent or `null`: no namespace;
/// - "empty" (Go's zero value: neither `list` nor any selector requirement set, so `{}`, and
///   also `{selector: {}}` or `{list: null}`): every namespace;
/// - else the namespace is in `list`, or its labels match `selector` (`matchLabels` and
///   `matchExpressions` ANDed); a selector without requirements matches nothing, and so does an
///   empty `list: []`.
///
/// An invalid selector (unknown operator, `In`/`NotIn` without values, values with
/// `Exists`/`DoesNotExist`) is an error, as `metav1.LabelSelectorAsSelector` makes it for CAPA.
pub fn namespace_permitted(
    allowed: &Value,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let Some(obj) = allowed.as_object() else { return Ok(false) };
    let present = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
    let list = present(obj.get("list"));
    let selector = present(obj.get("selector")).unwrap_or(Value::Null);
    let match_labels = present(selector.get("matchLabels"));
    let match_expressions = present(selector.get("matchExpressions"));
    if list.is_none() && match_labels.is_none() && match_expressions.is_none() {
        return Ok(true);
    }
    if list.iter().flat_map(|l| l.as_array().into_iter().flatten()).any(|n| n.as_str() == Some(namespace)) {
        return Ok(true);
    }
    let label_pairs: Vec<(String, String)> = match_labels
        .as_ref()
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    let exprs: Vec<Value> = match_expressions.as_ref().and_then(Value::as_array).cloned().unwrap_or_default();
    if label_pairs.is_empty() && exprs.is_empty() {
        return Ok(false);
    }
    let mut ok = label_pairs.iter().all(|(k, v)| labels.get(k) == Some(v));
    for e in &exprs {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let op = e["operator"].as_str().unwrap_or_default();
        let have = labels.get(key).map(String::as_str);
        let matched = match op {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("operator {op} on key {key} needs values"));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("operator {op} on key {key} takes no values"));
            }
            "In" => have.is_some_and(|v| values.contains(&v)),
            "NotIn" => have.is_none_or(|v| !values.contains(&v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => return Err(format!("unknown operator {other:?} on key {key}")),
        };
        ok &= matched;
    }
    Ok(ok)
}

fn role_spec(name: &str, spec: &Value) -> Result<RoleSpec, Blocked> {
    let s = |k: &str| spec[k].as_str().filter(|v| !v.is_empty()).map(String::from);
    let role_arn = s("roleARN")
        .ok_or_else(|| identity_blocked("InvalidIdentity", format!("{ROLE_KIND} {name}: spec.roleARN is not set")))?;
    let duration = spec["durationSeconds"].as_i64().filter(|d| *d > 0).map(|d| d as i32);
    Ok(RoleSpec {
        identity: name.to_string(),
        role_arn,
        session_name: s("sessionName").unwrap_or_default(),
        duration_seconds: duration.unwrap_or(DEFAULT_DURATION_SECONDS),
        external_id: s("externalID"),
        inline_policy: s("inlinePolicy"),
        policy_arns: spec["policyARNs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// The credential plan for a namespace's cluster whose `AWSCluster.spec.identityRef` is `top`
/// (`None`: the manager's own credentials, as CAPA does without one). `objects` holds the
/// identities read (see [`Identities`]); a missing one is [`Blocked`] `IdentityNotFound`.
pub fn plan(
    top: Option<&IdentityRef>,
    objects: &Objects,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Plan, Blocked> {
    let controller = Plan { source: Source::Controller, roles: vec![], chain: vec![] };
    let Some(top) = top else { return Ok(controller) };
    let mut field = "AWSCluster spec.identityRef".to_string();
    let mut current = top.clone();
    let mut chain = Vec::new();
    let mut roles = Vec::new();
    for _ in 0..MAX_CHAIN {
        let (kind, name) = (current.kind.clone(), current.name.clone());
        if resource(&kind).is_none() {
            return Err(identity_blocked(
                "IdentityNotSupported",
                format!(
                    "{field}: kind {kind} is not an AWS identity ({CONTROLLER_KIND}, {ROLE_KIND} or {STATIC_KIND})"
                ),
            ));
        }
        if kind == CONTROLLER_KIND && name != CONTROLLER_NAME {
            return Err(identity_blocked(
                "InvalidIdentity",
                format!("{field}: {CONTROLLER_KIND} is a singleton named {CONTROLLER_NAME}, not {name}"),
            ));
        }
        let Some(obj) = objects.get(&current) else {
            return Err(identity_blocked("IdentityNotFound", format!("{field}: {current} does not exist")));
        };
        let spec = &obj["spec"];
        let permitted = namespace_permitted(&spec["allowedNamespaces"], namespace, labels).map_err(|e| {
            identity_blocked("InvalidIdentity", format!("{current}: spec.allowedNamespaces.selector: {e}"))
        })?;
        if !permitted {
            return Err(identity_blocked(
                "IdentityNotAllowed",
                format!("{field}: namespace {namespace} may not use {current} (see its spec.allowedNamespaces)"),
            ));
        }
        let version = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        chain.push((current.clone(), version));
        let source = match kind.as_str() {
            CONTROLLER_KIND => Some(Source::Controller),
            STATIC_KIND => {
                let secret = spec["secretRef"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                    identity_blocked("InvalidIdentity", format!("{current}: spec.secretRef is not set"))
                })?;
                Some(Source::Static { identity: name.clone(), secret: secret.to_string() })
            }
            _ => {
                roles.push(role_spec(&name, spec)?);
                match IdentityRef::from_value(&spec["sourceIdentityRef"]) {
                    Some(next) => {
                        field = format!("{current} spec.sourceIdentityRef");
                        current = next;
                        None
                    }
                    None => Some(Source::Controller),
                }
            }
        };
        if let Some(source) = source {
            roles.reverse();
            return Ok(Plan { source, roles, chain });
        }
    }
    Err(identity_blocked(
        "InvalidIdentity",
        format!("{field}: the sourceIdentityRef chain from {top} is longer than {MAX_CHAIN} identities (a cycle?)"),
    ))
}

/// The cluster a template serves: its owner `Cluster` (what CAPA's `AWSMachineTemplate`
/// controller reads, `util.GetOwnerCluster`), else its `cluster.x-k8s.io/cluster-name` label.
pub fn template_cluster(owners: &[OwnerReference], labels: &BTreeMap<String, String>) -> Option<String> {
    owners
        .iter()
        .find(|o| o.kind == "Cluster" && o.api_version.starts_with("cluster.x-k8s.io/"))
        .map(|o| o.name.clone())
        .or_else(|| labels.get(CLUSTER_NAME_LABEL).cloned())
        .filter(|n| !n.is_empty())
}

/// Static credentials from an `AWSClusterStaticIdentity`'s Secret (`AccessKeyID`,
/// `SecretAccessKey`, optional `SessionToken`); `None` when a required key is missing or empty.
pub fn static_credentials(secret: &Secret) -> Option<Credentials> {
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    Some(Credentials::new(
        key("AccessKeyID")?,
        key("SecretAccessKey")?,
        key("SessionToken"),
        None,
        "capwin-static-identity",
    ))
}

/// Whether credentials expiring at `expiry` are due for renewal at `now`.
pub fn needs_refresh(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    expiry.is_some_and(|e| e.duration_since(now).map_or(true, |left| left < REFRESH_BEFORE))
}

/// Credentials of an assumed role, renewed [`REFRESH_BEFORE`] their expiry. `Debug` shows the
/// role only.
pub struct AssumeRole {
    sts: aws_sdk_sts::Client,
    role: RoleSpec,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl std::fmt::Debug for AssumeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AssumeRole({})", self.role.role_arn)
    }
}

impl AssumeRole {
    pub fn new(sts: aws_sdk_sts::Client, role: RoleSpec) -> Self {
        Self { sts, role, cached: tokio::sync::Mutex::new(None) }
    }

    async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && !needs_refresh(c.expiry(), SystemTime::now())
        {
            return Ok(c.clone());
        }
        let fresh = self.assume().await?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    async fn assume(&self) -> Result<Credentials, CredentialsError> {
        let r = &self.role;
        let session = if r.session_name.is_empty() {
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
            format!("capwin-{nanos}")
        } else {
            r.session_name.clone()
        };
        let mut req = self
            .sts
            .assume_role()
            .role_arn(&r.role_arn)
            .role_session_name(session)
            .duration_seconds(r.duration_seconds);
        if let Some(x) = &r.external_id {
            req = req.external_id(x);
        }
        if let Some(p) = &r.inline_policy {
            req = req.policy(p);
        }
        for arn in &r.policy_arns {
            req = req.policy_arns(aws_sdk_sts::types::PolicyDescriptorType::builder().arn(arn).build());
        }
        let out = req.send().await.map_err(|e| {
            // Code and message only: STS errors name the role and the caller, never a secret.
            let code = e.code().unwrap_or("Transport").to_string();
            let message = e.message().unwrap_or("no response from the STS endpoint").to_string();
            CredentialsError::provider_error(format!(
                "{ROLE_KIND} {}: AssumeRole {}: {code}: {message}",
                r.identity, r.role_arn
            ))
        })?;
        let c = out.credentials().ok_or_else(|| {
            CredentialsError::provider_error(format!("AssumeRole {}: the answer has no credentials", r.role_arn))
        })?;
        let expiry = SystemTime::try_from(*c.expiration()).ok();
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            expiry,
            "capwin-assume-role",
        ))
    }
}

impl ProvideCredentials for AssumeRole {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.credentials())
    }
}

/// `AWS_ENDPOINT_URL_STS`, the standard per-service override (else the clients' endpoint).
fn sts_endpoint() -> Option<String> {
    std::env::var("AWS_ENDPOINT_URL_STS").ok().filter(|e| !e.is_empty())
}

/// The credentials provider a plan ends with: `None` for the default chain, else the static
/// keys, wrapped in one [`AssumeRole`] per role. `endpoint` overrides every client's endpoint
/// (else `AWS_ENDPOINT_URL`; STS also honours `AWS_ENDPOINT_URL_STS`).
pub async fn provider(
    plan: &Plan,
    static_keys: Option<Credentials>,
    region: &str,
    endpoint: Option<&str>,
) -> Option<SharedCredentialsProvider> {
    let mut current = static_keys.map(SharedCredentialsProvider::new);
    for role in &plan.roles {
        let mut loader = crate::ec2::sdk_loader(region, endpoint);
        if let Some(p) = current.take() {
            loader = loader.credentials_provider(p);
        }
        let conf = loader.load().await;
        let mut sts = aws_sdk_sts::config::Builder::from(&conf);
        if let Some(e) = sts_endpoint() {
            sts = sts.endpoint_url(e);
        }
        let client = aws_sdk_sts::Client::from_conf(sts.build());
        current = Some(SharedCredentialsProvider::new(AssumeRole::new(client, role.clone())));
    }
    current
}

/// Assumes `role_arn` once with `source`'s keys (the default chain when `None`) and returns the
/// temporary keys, e.g. to hand a tool (or a test's `AWSClusterStaticIdentity`) a role's
/// credentials.
pub async fn assume_role_keys(
    region: &str,
    endpoint: Option<&str>,
    source: Option<crate::ec2::StaticCredentials>,
    role_arn: &str,
) -> Result<crate::ec2::StaticCredentials, String> {
    let role = RoleSpec {
        identity: "(direct)".into(),
        role_arn: role_arn.into(),
        session_name: String::new(),
        duration_seconds: DEFAULT_DURATION_SECONDS,
        external_id: None,
        inline_policy: None,
        policy_arns: vec![],
    };
    let plan = Plan { source: Source::Controller, roles: vec![role], chain: vec![] };
    let keys = source.map(|c| Credentials::new(c.access_key_id, c.secret_access_key, c.session_token, None, "capwin"));
    let p = provider(&plan, keys, region, endpoint).await.ok_or("no provider")?;
    let c = p
        .provide_credentials()
        .await
        .map_err(|e| std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string()))?;
    Ok(crate::ec2::StaticCredentials {
        access_key_id: c.access_key_id().into(),
        secret_access_key: c.secret_access_key().into(),
        session_token: c.session_token().map(String::from),
    })
}

use crate::reconcile::Ec2Client;
use capwin_infra::cache::CapiCache;
use capwin_infra::contract::cached_or_get;

/// The I/O edge: reads a cluster's identities and hands out EC2 clients with its credentials,
/// cached per top identity and rebuilt when any object of its chain (or the Secret) changes.
pub struct Identities {
    client: Client,
    /// Where static identities' Secrets live: the manager's namespace.
    secret_namespace: String,
    region: String,
    metrics: Arc<Metrics>,
    /// By top identity: (plan version, client).
    cache: Mutex<HashMap<String, (String, Ec2Client)>>,
}

impl Identities {
    pub fn new(client: Client, secret_namespace: String, region: String, metrics: Arc<Metrics>) -> Self {
        Self { client, secret_namespace, region, metrics, cache: Mutex::default() }
    }

    /// A key naming the credentials of a client this handed out (`""` for any other, e.g. the
    /// manager's own), for caches of answers that differ per account.
    pub fn key_of(&self, ec2: &Ec2Client) -> String {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.iter().find(|(_, (_, c))| Arc::ptr_eq(c, ec2)).map(|(k, (v, _))| format!("{k}#{v}")).unwrap_or_default()
    }

    /// The EC2 client for objects of `namespace` belonging to `cluster` (`None`: no cluster
    /// known, the manager's own `default`).
    /// Every object is read from `cache` (the controller's watches) where it keeps its kind.
    pub async fn ec2(
        &self,
        cache: &CapiCache,
        default: Ec2Client,
        namespace: &str,
        cluster: Option<&str>,
    ) -> Result<Ec2Client, Error> {
        let Some(cluster) = cluster else { return Ok(default) };
        let Some(top) = self.cluster_identity_ref(cache, namespace, cluster).await? else { return Ok(default) };
        let objects = self.read_chain(cache, &top).await?;
        // The namespace's labels matter only to a selector with requirements.
        let selects = objects.values().any(|o| {
            let sel = &o["spec"]["allowedNamespaces"]["selector"];
            !sel["matchLabels"].is_null() || !sel["matchExpressions"].is_null()
        });
        let labels = if selects { self.namespace_labels(cache, namespace).await? } else { BTreeMap::new() };
        let plan = plan(Some(&top), &objects, namespace, &labels)?;
        if plan.is_controller() {
            return Ok(default);
        }
        let mut version = plan.version();
        let keys = match &plan.source {
            Source::Controller => None,
            Source::Static { identity, secret } => {
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret_namespace);
                let Some(s) = secrets.get_opt(secret).await? else {
                    return Err(identity_blocked(
                        "IdentitySecretNotFound",
                        format!("{STATIC_KIND} {identity}: Secret {}/{secret} does not exist", self.secret_namespace),
                    )
                    .into());
                };
                version.push_str(&format!("+secret@{}", s.resource_version().unwrap_or_default()));
                Some(static_credentials(&s).ok_or_else(|| {
                    identity_blocked(
                        "InvalidIdentity",
                        format!(
                            "{STATIC_KIND} {identity}: Secret {}/{secret} needs the keys AccessKeyID and SecretAccessKey",
                            self.secret_namespace
                        ),
                    )
                })?)
            }
        };
        let key = top.to_string();
        if let Some((v, c)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && *v == version
        {
            return Ok(c.clone());
        }
        let provider = provider(&plan, keys, &self.region, None).await;
        // As CAPA's session.go does: retrieve once now, so a role the source may not assume is a
        // condition naming it, not a string of failed EC2 calls.
        if let Some(p) = &provider
            && !plan.roles.is_empty()
            && let Err(e) = p.provide_credentials().await
        {
            let detail = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
            return Err(identity_blocked("AssumeRoleFailed", format!("AWSCluster spec.identityRef: {detail}")).into());
        }
        let built = crate::reconcile::ec2_client(
            SdkEc2::with_provider(&self.region, None, provider).await,
            self.metrics.clone(),
        );
        tracing::info!(identity = %key, "built an EC2 client for the identity");
        // Two reconciles may build one at once: the first stored one wins.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&key) {
            Some((v, existing)) if *v == version => Ok(existing.clone()),
            _ => {
                cache.insert(key, (version, built.clone()));
                Ok(built)
            }
        }
    }

    /// `AWSCluster.spec.identityRef` of the cluster (via `Cluster.spec.infrastructureRef`);
    /// `None` when the cluster's infrastructure is not an `AWSCluster` or names no identity.
    async fn cluster_identity_ref(
        &self,
        cache: &CapiCache,
        namespace: &str,
        cluster: &str,
    ) -> Result<Option<IdentityRef>, Error> {
        let gvk =
            |g: &str, v: &str, k: &str, p: &str| ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), p);
        let Some(c) = cache.cluster(namespace, cluster).await else {
            return Err(identity_blocked(
                "ClusterNotFound",
                format!("Cluster {namespace}/{cluster} (whose AWSCluster names the AWS identity) does not exist"),
            )
            .into());
        };
        let infra = &c.data["spec"]["infrastructureRef"];
        if infra["kind"] != "AWSCluster" {
            return Ok(None);
        }
        let name = infra["name"].as_str().unwrap_or_default();
        let ar = gvk(GROUP, VERSION, "AWSCluster", "awsclusters");
        let Some(a) = cached_or_get(cache, &self.client, &ar, Some(namespace), name).await? else {
            return Err(identity_blocked(
                "ClusterNotFound",
                format!("AWSCluster {namespace}/{name} (Cluster {cluster} spec.infrastructureRef) does not exist"),
            )
            .into());
        };
        Ok(IdentityRef::from_value(&a.data["spec"]["identityRef"]))
    }

    /// The identities of the chain from `top` that exist (following `sourceIdentityRef`).
    async fn read_chain(&self, cache: &CapiCache, top: &IdentityRef) -> Result<Objects, Error> {
        let mut objects = Objects::new();
        let mut next = Some(top.clone());
        while let Some(r) = next.take() {
            if objects.contains_key(&r) || objects.len() >= MAX_CHAIN {
                break;
            }
            let Some(ar) = resource(&r.kind) else { break };
            let Some(o) = cached_or_get(cache, &self.client, &ar, None, &r.name).await? else { break };
            let v = serde_json::to_value(&o).unwrap_or_default();
            if r.kind == ROLE_KIND {
                next = IdentityRef::from_value(&v["spec"]["sourceIdentityRef"]);
            }
            objects.insert(r, v);
        }
        Ok(objects)
    }

    async fn namespace_labels(&self, cache: &CapiCache, namespace: &str) -> Result<BTreeMap<String, String>, Error> {
        let ar = ApiResource::erase::<Namespace>(&());
        Ok(cached_or_get(cache, &self.client, &ar, None, namespace)
            .await?
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn allowed_namespaces_follow_capa() {
        let l = labels(&[("team", "a"), ("env", "prod")]);
        let ok = |allowed: Value| namespace_permitted(&allowed, "ns", &l).unwrap();
        assert!(!ok(Value::Null), "absent or null: no namespace");
        assert!(ok(json!({})), "empty object: every namespace");
        assert!(ok(json!({"list": null})), "a null list is Go's nil: still the empty object");
        assert!(ok(json!({"selector": {}})), "an empty selector object is Go's zero value: still empty");
        assert!(!ok(json!({"list": []})), "an empty list: no namespace");
        assert!(!ok(json!({"selector": {"matchLabels": {}}})), "a selector without requirements: nothing");
        assert!(ok(json!({"list": ["x", "ns"]})));
        assert!(!ok(json!({"list": ["x"]})));
        assert!(ok(json!({"list": ["x"], "selector": {"matchLabels": {"team": "a"}}})), "list OR selector");
        assert!(!ok(json!({"selector": {"matchLabels": {"team": "b"}}})));
        assert!(!ok(json!({"selector": {"matchLabels": {"team": "a", "env": "dev"}}})), "matchLabels ANDed");
        let expr = |op: &str, values: Value| json!({"selector": {"matchExpressions": [{"key": "env", "operator": op, "values": values}]}});
        assert!(ok(expr("In", json!(["prod", "dev"]))));
        assert!(!ok(expr("NotIn", json!(["prod"]))));
        assert!(ok(expr("Exists", json!([]))));
        assert!(!ok(expr("DoesNotExist", json!([]))));
        let both = json!({"selector": {"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}});
        assert!(!ok(both), "matchLabels AND matchExpressions");
        assert!(namespace_permitted(&expr("In", json!([])), "ns", &l).is_err());
        assert!(namespace_permitted(&expr("Exists", json!(["x"])), "ns", &l).is_err());
        assert!(namespace_permitted(&expr("Matches", json!(["x"])), "ns", &l).is_err());
    }

    fn ident(kind: &str, name: &str, spec: Value) -> (IdentityRef, Value) {
        (IdentityRef::new(kind, name), json!({"metadata": {"name": name, "resourceVersion": "7"}, "spec": spec}))
    }

    fn objects(list: Vec<(IdentityRef, Value)>) -> Objects {
        list.into_iter().collect()
    }

    const ALL: fn() -> Value = || json!({});

    #[test]
    fn no_identity_ref_is_the_controllers_own() {
        let p = plan(None, &Objects::new(), "ns", &labels(&[])).unwrap();
        assert!(p.is_controller());
    }

    #[test]
    fn controller_identity_is_the_default_singleton_and_honours_allowed_namespaces() {
        let top = IdentityRef::new(CONTROLLER_KIND, "default");
        let objs = objects(vec![ident(CONTROLLER_KIND, "default", json!({"allowedNamespaces": ALL()}))]);
        assert!(plan(Some(&top), &objs, "ns", &labels(&[])).unwrap().is_controller());

        let none = objects(vec![ident(CONTROLLER_KIND, "default", json!({}))]);
        let b = plan(Some(&top), &none, "ns", &labels(&[])).unwrap_err();
        assert_eq!(b.reason, "IdentityNotAllowed");
        assert!(
            b.message.contains("namespace ns") && b.message.contains("AWSClusterControllerIdentity default"),
            "{b:?}"
        );

        let other = IdentityRef::new(CONTROLLER_KIND, "mine");
        assert_eq!(plan(Some(&other), &objs, "ns", &labels(&[])).unwrap_err().reason, "InvalidIdentity");
        let b = plan(Some(&top), &Objects::new(), "ns", &labels(&[])).unwrap_err();
        assert_eq!(b.reason, "IdentityNotFound");
        assert_eq!(b.message, "AWSCluster spec.identityRef: AWSClusterControllerIdentity default does not exist");
    }

    #[test]
    fn static_identity_names_its_secret() {
        let top = IdentityRef::new(STATIC_KIND, "team");
        let objs = objects(vec![ident(
            STATIC_KIND,
            "team",
            json!({"secretRef": "team-keys", "allowedNamespaces": {"list": ["ns"]}}),
        )]);
        let p = plan(Some(&top), &objs, "ns", &labels(&[])).unwrap();
        assert_eq!(p.source, Source::Static { identity: "team".into(), secret: "team-keys".into() });
        assert!(p.roles.is_empty() && !p.is_controller());
        assert_eq!(p.version(), "AWSClusterStaticIdentity/team@7");
        assert_eq!(plan(Some(&top), &objs, "other", &labels(&[])).unwrap_err().reason, "IdentityNotAllowed");
        let no_secret = objects(vec![ident(STATIC_KIND, "team", json!({"allowedNamespaces": {}}))]);
        assert_eq!(plan(Some(&top), &no_secret, "ns", &labels(&[])).unwrap_err().reason, "InvalidIdentity");
    }

    #[test]
    fn role_chains_assume_innermost_first_and_check_every_link() {
        let top = IdentityRef::new(ROLE_KIND, "outer");
        let objs = objects(vec![
            ident(
                ROLE_KIND,
                "outer",
                json!({"roleARN": "arn:aws:iam::111111111111:role/outer", "sessionName": "s", "durationSeconds": 1800,
                "externalID": "x", "inlinePolicy": "{}", "policyARNs": ["arn:aws:iam::aws:policy/ReadOnly"],
                "allowedNamespaces": {}, "sourceIdentityRef": {"kind": ROLE_KIND, "name": "inner"}}),
            ),
            ident(
                ROLE_KIND,
                "inner",
                json!({"roleARN": "arn:aws:iam::222222222222:role/inner", "allowedNamespaces": {},
                "sourceIdentityRef": {"kind": STATIC_KIND, "name": "keys"}}),
            ),
            ident(
                STATIC_KIND,
                "keys",
                json!({"secretRef": "k", "allowedNamespaces": {"selector": {"matchLabels": {"team": "a"}}}}),
            ),
        ]);
        let p = plan(Some(&top), &objs, "ns", &labels(&[("team", "a")])).unwrap();
        assert_eq!(p.source, Source::Static { identity: "keys".into(), secret: "k".into() });
        let arns: Vec<&str> = p.roles.iter().map(|r| r.role_arn.as_str()).collect();
        assert_eq!(arns, ["arn:aws:iam::222222222222:role/inner", "arn:aws:iam::111111111111:role/outer"]);
        assert_eq!(p.roles[0].duration_seconds, DEFAULT_DURATION_SECONDS, "unset: the Go SDK's 15 minutes");
        assert_eq!(
            p.roles[1],
            RoleSpec {
                identity: "outer".into(),
                role_arn: "arn:aws:iam::111111111111:role/outer".into(),
                session_name: "s".into(),
                duration_seconds: 1800,
                external_id: Some("x".into()),
                inline_policy: Some("{}".into()),
                policy_arns: vec!["arn:aws:iam::aws:policy/ReadOnly".into()],
            }
        );
        assert_eq!(p.chain.len(), 3);
        // The source identity does not allow the namespace: blocked, naming the link.
        let b = plan(Some(&top), &objs, "ns", &labels(&[("team", "b")])).unwrap_err();
        assert_eq!(b.reason, "IdentityNotAllowed");
        assert!(b.message.starts_with("AWSClusterRoleIdentity inner spec.sourceIdentityRef:"), "{b:?}");
        // A missing link.
        let mut missing = objs.clone();
        missing.remove(&IdentityRef::new(ROLE_KIND, "inner"));
        let b = plan(Some(&top), &missing, "ns", &labels(&[("team", "a")])).unwrap_err();
        assert_eq!(b.reason, "IdentityNotFound");
        assert_eq!(
            b.message,
            "AWSClusterRoleIdentity outer spec.sourceIdentityRef: AWSClusterRoleIdentity inner does not exist"
        );
    }

    #[test]
    fn role_without_source_uses_the_controllers_credentials_and_a_controller_source_too() {
        let top = IdentityRef::new(ROLE_KIND, "r");
        let bare =
            objects(vec![ident(ROLE_KIND, "r", json!({"roleARN": "arn:aws:iam::1:role/r", "allowedNamespaces": {}}))]);
        let p = plan(Some(&top), &bare, "ns", &labels(&[])).unwrap();
        assert_eq!((p.source.clone(), p.roles.len()), (Source::Controller, 1));
        assert!(!p.is_controller());
        let via = objects(vec![
            ident(
                ROLE_KIND,
                "r",
                json!({"roleARN": "arn:aws:iam::1:role/r", "allowedNamespaces": {},
                "sourceIdentityRef": {"kind": CONTROLLER_KIND, "name": "default"}}),
            ),
            ident(CONTROLLER_KIND, "default", json!({"allowedNamespaces": {"list": ["other"]}})),
        ]);
        assert_eq!(
            plan(Some(&top), &via, "ns", &labels(&[])).unwrap_err().reason,
            "IdentityNotAllowed",
            "the controller identity as a source is checked too"
        );
        let no_arn = objects(vec![ident(ROLE_KIND, "r", json!({"allowedNamespaces": {}}))]);
        assert_eq!(plan(Some(&top), &no_arn, "ns", &labels(&[])).unwrap_err().reason, "InvalidIdentity");
    }

    #[test]
    fn cycles_and_unknown_kinds_are_named() {
        let top = IdentityRef::new(ROLE_KIND, "a");
        let objs = objects(vec![
            ident(
                ROLE_KIND,
                "a",
                json!({"roleARN": "arn:a", "allowedNamespaces": {}, "sourceIdentityRef": {"kind": ROLE_KIND, "name": "b"}}),
            ),
            ident(
                ROLE_KIND,
                "b",
                json!({"roleARN": "arn:b", "allowedNamespaces": {}, "sourceIdentityRef": {"kind": ROLE_KIND, "name": "a"}}),
            ),
        ]);
        let b = plan(Some(&top), &objs, "ns", &labels(&[])).unwrap_err();
        assert_eq!(b.reason, "InvalidIdentity");
        assert!(b.message.contains("cycle"), "{b:?}");
        let odd = IdentityRef::new("AWSClusterMagicIdentity", "x");
        assert_eq!(plan(Some(&odd), &objs, "ns", &labels(&[])).unwrap_err().reason, "IdentityNotSupported");
    }

    #[test]
    fn templates_find_their_cluster_by_owner_then_label() {
        let owner = |kind: &str, api: &str, name: &str| OwnerReference {
            api_version: api.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            ..Default::default()
        };
        let l = labels(&[(CLUSTER_NAME_LABEL, "by-label")]);
        assert_eq!(
            template_cluster(&[owner("Cluster", "cluster.x-k8s.io/v1beta2", "owner")], &l).as_deref(),
            Some("owner")
        );
        assert_eq!(
            template_cluster(&[owner("MachineDeployment", "cluster.x-k8s.io/v1beta2", "md")], &l).as_deref(),
            Some("by-label")
        );
        assert_eq!(template_cluster(&[], &labels(&[])), None);
    }

    #[test]
    fn static_keys_and_refresh_timing() {
        let secret = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs.iter().map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect(),
            ),
            ..Default::default()
        };
        let c = static_credentials(&secret(&[("AccessKeyID", "AKIA1"), ("SecretAccessKey", "very-secret")])).unwrap();
        assert_eq!((c.access_key_id(), c.session_token()), ("AKIA1", None));
        assert!(!format!("{c:?}").contains("very-secret"), "Debug hides the secret key");
        assert!(static_credentials(&secret(&[("AccessKeyID", "AKIA1")])).is_none());
        assert!(static_credentials(&secret(&[("AccessKeyID", "AKIA1"), ("SecretAccessKey", "")])).is_none());

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!needs_refresh(None, now), "static keys never expire");
        assert!(!needs_refresh(Some(now + Duration::from_secs(900)), now));
        assert!(needs_refresh(Some(now + Duration::from_secs(299)), now), "renewed 5 minutes ahead");
        assert!(needs_refresh(Some(now - Duration::from_secs(1)), now));
    }
}
