//! The resource types the server knows: a fixed set of built-ins plus every CRD, loaded from
//! files at start or created through the API.

use serde_json::{Value, json};

use super::errors::{ApiError, ApiResult};

/// One resource type (a `plural.group`), served at one or more versions.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    /// Served versions; the first is the preferred one (objects are stored in it).
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// `openAPIV3Schema` per served version, for custom resources.
    pub schemas: Vec<(String, Value)>,
    /// A custom resource: schema-validated, `generation` tracked, status dropped on create,
    /// `resourceVersion` required on update, strategic merge patch refused.
    pub custom: bool,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool, status: bool) -> Self {
        Self {
            group: group.into(),
            versions: vec![version.into()],
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            status_subresource: status,
            short_names: vec![],
            categories: vec![],
            schemas: vec![],
            custom: false,
        }
    }

    pub fn key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }

    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas.iter().find(|(v, _)| v == version).map(|(_, s)| s)
    }

    /// The `APIResource` entries for discovery (the resource and its status subresource).
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut verbs = vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        if self.group == "events.k8s.io" || self.plural == "events" {
            verbs.retain(|v| *v != "deletecollection");
        }
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }

    /// From a `CustomResourceDefinition` object.
    pub fn from_crd(crd: &Value) -> ApiResult<Self> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().ok_or_else(|| ApiError::bad_request("CRD without spec.group"))?;
        let names = &spec["names"];
        let plural = names["plural"].as_str().ok_or_else(|| ApiError::bad_request("CRD without spec.names.plural"))?;
        let kind = names["kind"].as_str().ok_or_else(|| ApiError::bad_request("CRD without spec.names.kind"))?;
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        if name != format!("{plural}.{group}") {
            return Err(ApiError::invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                name,
                vec![(
                    "metadata.name".into(),
                    format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
                )],
            ));
        }
        let mut versions = Vec::new();
        let mut schemas = Vec::new();
        let mut status = false;
        let all = spec["versions"].as_array().cloned().unwrap_or_default();
        // The storage version first, then the other served versions.
        let mut ordered: Vec<&Value> = all.iter().filter(|v| v["storage"] == true).collect();
        ordered.extend(all.iter().filter(|v| v["storage"] != true));
        for v in ordered.into_iter().filter(|v| v["served"] != false) {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            if v["subresources"]["status"].is_object() {
                status = true;
            }
            if let Some(s) = v["schema"].get("openAPIV3Schema") {
                schemas.push((vname.clone(), s.clone()));
            }
            versions.push(vname);
        }
        if versions.is_empty() {
            return Err(ApiError::bad_request(format!("CRD {name} serves no version")));
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
        };
        Ok(Self {
            group: group.into(),
            versions,
            kind: kind.into(),
            plural: plural.into(),
            singular: names["singular"].as_str().map(String::from).unwrap_or_else(|| kind.to_lowercase()),
            namespaced: spec["scope"] != "Cluster",
            status_subresource: status,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            schemas,
            custom: true,
        })
    }
}

/// The built-in kinds the server models.
pub fn builtins() -> Vec<ResourceType> {
    let mut crd = ResourceType::builtin(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
    );
    crd.short_names = vec!["crd".into(), "crds".into()];
    let mut ns = ResourceType::builtin("", "v1", "Namespace", "namespaces", false, true);
    ns.short_names = vec!["ns".into()];
    let mut cm = ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true, false);
    cm.short_names = vec!["cm".into()];
    let mut ev = ResourceType::builtin("", "v1", "Event", "events", true, false);
    ev.short_names = vec!["ev".into()];
    let mut node = ResourceType::builtin("", "v1", "Node", "nodes", false, true);
    node.short_names = vec!["no".into()];
    let mut ev2 = ResourceType::builtin("events.k8s.io", "v1", "Event", "events", true, false);
    ev2.short_names = vec!["ev".into()];
    let mut sa = ResourceType::builtin("", "v1", "ServiceAccount", "serviceaccounts", true, false);
    sa.short_names = vec!["sa".into()];
    const RBAC: &str = "rbac.authorization.k8s.io";
    vec![
        ns,
        sa,
        ResourceType::builtin(RBAC, "v1", "ClusterRole", "clusterroles", false, false),
        ResourceType::builtin(RBAC, "v1", "ClusterRoleBinding", "clusterrolebindings", false, false),
        ResourceType::builtin(RBAC, "v1", "Role", "roles", true, false),
        ResourceType::builtin(RBAC, "v1", "RoleBinding", "rolebindings", true, false),
        ResourceType::builtin("", "v1", "Secret", "secrets", true, false),
        cm,
        ev,
        node,
        ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", true, false),
        ev2,
        crd,
    ]
}
