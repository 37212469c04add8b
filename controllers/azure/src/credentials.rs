//! ARM credentials: the manager's own (service principal secret, workload identity or managed
//! identity, from the standard `AZURE_*` environment) and per-cluster CAPZ
//! `AzureClusterIdentity` objects, usable only from the namespaces they allow.

use std::path::PathBuf;
use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use serde_json::Value;

use crate::arm::client_options;

/// What a credential is made from, without the secret itself in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    ClientSecret { tenant: String, client_id: String, secret: String },
    WorkloadIdentity { tenant: String, client_id: String, token_file: PathBuf },
    ManagedIdentity { client_id: Option<String> },
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientSecret { tenant, client_id, .. } => write!(f, "ClientSecret({tenant}, {client_id})"),
            Self::WorkloadIdentity { tenant, client_id, .. } => write!(f, "WorkloadIdentity({tenant}, {client_id})"),
            Self::ManagedIdentity { client_id } => write!(f, "ManagedIdentity({client_id:?})"),
        }
    }
}

/// The manager's own credential from its environment, in the order azure_identity's
/// environment credential uses: a client secret, then a federated token file (workload
/// identity), else managed identity.
pub fn from_environment(env: impl Fn(&str) -> Option<String>) -> CredentialSource {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    match (
        var("AZURE_TENANT_ID"),
        var("AZURE_CLIENT_ID"),
        var("AZURE_CLIENT_SECRET"),
        var("AZURE_FEDERATED_TOKEN_FILE"),
    ) {
        (Some(tenant), Some(client_id), Some(secret), _) => {
            CredentialSource::ClientSecret { tenant, client_id, secret }
        }
        (Some(tenant), Some(client_id), None, Some(file)) => {
            CredentialSource::WorkloadIdentity { tenant, client_id, token_file: file.into() }
        }
        (_, client_id, _, _) => CredentialSource::ManagedIdentity { client_id },
    }
}

/// Builds the credential. `authority` overrides the Entra ID host (a stand-in, or a sovereign
/// cloud); `http` is the client that trusts the stand-in's CA.
pub fn build(
    source: &CredentialSource,
    authority: Option<&str>,
    http: &reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, String> {
    let mut options = client_options(http);
    if let Some(a) = authority {
        let mut custom = CustomConfiguration::default();
        custom.authority_host = a.trim_end_matches('/').to_string();
        options.cloud = Some(Arc::new(CloudConfiguration::from(custom)));
    }
    // Credential errors from azure_identity name the tenant and client, never the secret.
    let fail = |what: &str, e: azure_core::Error| format!("{what}: {e}");
    Ok(match source {
        CredentialSource::ClientSecret { tenant, client_id, secret } => ClientSecretCredential::new(
            tenant,
            client_id.clone(),
            Secret::new(secret.clone()),
            Some(ClientSecretCredentialOptions { client_options: options }),
        )
        .map_err(|e| fail("service principal credential", e))?,
        CredentialSource::WorkloadIdentity { tenant, client_id, token_file } => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options: options },
                client_id: Some(client_id.clone()),
                tenant_id: Some(tenant.clone()),
                token_file_path: Some(token_file.clone()),
            }))
            .map_err(|e| fail("workload identity credential", e))?
        }
        CredentialSource::ManagedIdentity { client_id } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: options,
            }))
            .map_err(|e| fail("managed identity credential", e))?
        }
    })
}

/// Why an `AzureClusterIdentity` cannot be used by a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityProblem {
    NotAllowed(String),
    Unsupported(String),
    Invalid(String),
}

/// Whether `namespace` (with its labels) may use an `AzureClusterIdentity`, by CAPZ's rule:
/// no `allowedNamespaces` = nobody, `{}` = everybody, else listed or matched by the selector.
pub fn namespace_allowed(identity: &Value, namespace: &str, labels: &serde_json::Map<String, Value>) -> bool {
    let allowed = &identity["spec"]["allowedNamespaces"];
    let Some(obj) = allowed.as_object() else { return false };
    let list = obj.get("list").and_then(Value::as_array);
    let selector = obj.get("selector").and_then(Value::as_object);
    if list.is_none() && selector.is_none() {
        return true;
    }
    if list.into_iter().flatten().any(|n| n.as_str() == Some(namespace)) {
        return true;
    }
    let Some(sel) = selector else { return false };
    let match_labels = sel.get("matchLabels").and_then(Value::as_object);
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(|m| m.is_empty()) && exprs.is_none_or(|e| e.is_empty()) {
        return false;
    }
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let labels_ok = match_labels.into_iter().flatten().all(|(k, v)| label(k) == v.as_str());
    let exprs_ok = exprs.into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match e["operator"].as_str() {
            Some("In") => label(key).is_some_and(|v| values.contains(&v)),
            Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
            Some("Exists") => label(key).is_some(),
            Some("DoesNotExist") => label(key).is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// What an `AzureClusterIdentity` needs besides itself: the Secret for a service principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPlan {
    /// Read `clientSecret` from this Secret, then use a client-secret credential.
    ClientSecret {
        tenant: String,
        client_id: String,
        secret_namespace: String,
        secret_name: String,
    },
    Ready(CredentialSource),
    /// `ManualServicePrincipal`: the manager's own environment credential.
    ManagerOwn,
}

/// The credential an `AzureClusterIdentity` describes (CAPZ's `spec.type`).
pub fn identity_plan(identity: &Value, federated_token_file: Option<&str>) -> Result<IdentityPlan, IdentityProblem> {
    let spec = &identity["spec"];
    let s = |k: &str| spec[k].as_str().filter(|v| !v.is_empty()).map(String::from);
    let name = identity["metadata"]["name"].as_str().unwrap_or_default();
    let ns = identity["metadata"]["namespace"].as_str().unwrap_or_default();
    let need = |k: &str| {
        s(k).ok_or_else(|| IdentityProblem::Invalid(format!("AzureClusterIdentity {ns}/{name}: spec.{k} is not set")))
    };
    match spec["type"].as_str().unwrap_or_default() {
        "ServicePrincipal" => {
            let secret_name = spec["clientSecret"]["name"].as_str().filter(|v| !v.is_empty()).ok_or_else(|| {
                IdentityProblem::Invalid(format!("AzureClusterIdentity {ns}/{name}: spec.clientSecret.name is not set"))
            })?;
            Ok(IdentityPlan::ClientSecret {
                tenant: need("tenantID")?,
                client_id: need("clientID")?,
                secret_namespace: spec["clientSecret"]["namespace"]
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .unwrap_or(ns)
                    .to_string(),
                secret_name: secret_name.to_string(),
            })
        }
        "WorkloadIdentity" => {
            let file = federated_token_file.ok_or_else(|| {
                IdentityProblem::Invalid(format!(
                    "AzureClusterIdentity {ns}/{name} is WorkloadIdentity but the manager has no projected service account token (AZURE_FEDERATED_TOKEN_FILE)"
                ))
            })?;
            Ok(IdentityPlan::Ready(CredentialSource::WorkloadIdentity {
                tenant: need("tenantID")?,
                client_id: need("clientID")?,
                token_file: file.into(),
            }))
        }
        "UserAssignedMSI" => Ok(IdentityPlan::Ready(CredentialSource::ManagedIdentity { client_id: s("clientID") })),
        "ManualServicePrincipal" => Ok(IdentityPlan::ManagerOwn),
        other => Err(IdentityProblem::Unsupported(format!(
            "AzureClusterIdentity {ns}/{name} has type {other:?}; capwin supports ServicePrincipal, WorkloadIdentity, UserAssignedMSI and ManualServicePrincipal"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn environment_picks_secret_then_workload_identity_then_managed_identity() {
        let s =
            from_environment(env(&[("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c"), ("AZURE_CLIENT_SECRET", "s")]));
        assert!(matches!(s, CredentialSource::ClientSecret { .. }));
        assert_eq!(format!("{s:?}"), "ClientSecret(t, c)", "Debug must not show the secret");
        let w = from_environment(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
        ]));
        assert!(matches!(w, CredentialSource::WorkloadIdentity { .. }));
        assert_eq!(
            from_environment(env(&[("AZURE_CLIENT_ID", "c")])),
            CredentialSource::ManagedIdentity { client_id: Some("c".into()) }
        );
        assert_eq!(from_environment(env(&[])), CredentialSource::ManagedIdentity { client_id: None });
    }

    #[test]
    fn allowed_namespaces_follow_capz() {
        let labels = json!({"team": "a", "env": "prod"});
        let labels = labels.as_object().unwrap();
        let id = |allowed: Value| json!({"spec": {"allowedNamespaces": allowed}});
        assert!(!namespace_allowed(&json!({"spec": {}}), "ns", labels), "absent: nobody");
        assert!(namespace_allowed(&id(json!({})), "ns", labels), "{{}}: everybody");
        assert!(namespace_allowed(&id(json!({"list": ["x", "ns"]})), "ns", labels));
        assert!(!namespace_allowed(&id(json!({"list": []})), "ns", labels), "empty list: nobody");
        assert!(namespace_allowed(&id(json!({"selector": {"matchLabels": {"team": "a"}}})), "ns", labels));
        assert!(!namespace_allowed(&id(json!({"selector": {"matchLabels": {"team": "b"}}})), "ns", labels));
        assert!(!namespace_allowed(&id(json!({"selector": {}})), "ns", labels), "empty selector: nobody");
        let expr = |op: &str, values: Value| {
            id(json!({"selector": {"matchExpressions": [{"key": "env", "operator": op, "values": values}]}}))
        };
        assert!(namespace_allowed(&expr("In", json!(["prod"])), "ns", labels));
        assert!(!namespace_allowed(&expr("NotIn", json!(["prod"])), "ns", labels));
        assert!(namespace_allowed(&expr("Exists", json!([])), "ns", labels));
        assert!(!namespace_allowed(&expr("DoesNotExist", json!([])), "ns", labels));
    }

    #[test]
    fn identity_types_map_to_credentials() {
        let ident = |spec: Value| json!({"metadata": {"name": "i", "namespace": "capz"}, "spec": spec});
        assert_eq!(
            identity_plan(
                &ident(
                    json!({"type": "ServicePrincipal", "tenantID": "t", "clientID": "c", "clientSecret": {"name": "sp"}})
                ),
                None
            ),
            Ok(IdentityPlan::ClientSecret {
                tenant: "t".into(),
                client_id: "c".into(),
                secret_namespace: "capz".into(),
                secret_name: "sp".into()
            })
        );
        assert!(matches!(
            identity_plan(&ident(json!({"type": "ServicePrincipal", "tenantID": "t", "clientID": "c"})), None),
            Err(IdentityProblem::Invalid(m)) if m.contains("spec.clientSecret.name")
        ));
        assert!(matches!(
            identity_plan(&ident(json!({"type": "WorkloadIdentity", "tenantID": "t", "clientID": "c"})), None),
            Err(IdentityProblem::Invalid(m)) if m.contains("AZURE_FEDERATED_TOKEN_FILE")
        ));
        assert!(matches!(
            identity_plan(&ident(json!({"type": "WorkloadIdentity", "tenantID": "t", "clientID": "c"})), Some("/tok")),
            Ok(IdentityPlan::Ready(CredentialSource::WorkloadIdentity { .. }))
        ));
        assert_eq!(
            identity_plan(&ident(json!({"type": "UserAssignedMSI", "clientID": "c"})), None),
            Ok(IdentityPlan::Ready(CredentialSource::ManagedIdentity { client_id: Some("c".into()) }))
        );
        assert_eq!(
            identity_plan(&ident(json!({"type": "ManualServicePrincipal"})), None),
            Ok(IdentityPlan::ManagerOwn)
        );
        assert!(matches!(
            identity_plan(&ident(json!({"type": "ServicePrincipalCertificate"})), None),
            Err(IdentityProblem::Unsupported(_))
        ));
    }
}
