//! The CAPI v1beta2 infrastructure-machine contract edges both shims read the same way.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, Resource, ResourceExt};

use crate::cache::CapiCache;
use crate::{Error, blocked};

/// The CAPI objects a machine hangs off.
pub struct Owners {
    pub machine: DynamicObject,
    pub cluster: DynamicObject,
    pub cluster_name: String,
}

/// The owning Machine (by owner reference) and its Cluster, from the watch caches; blocked
/// until both exist (the Machine and Cluster watches wake the machine when they appear).
pub async fn owners<K: Resource>(cache: &CapiCache, m: &K, kind: &str) -> Result<Owners, Error> {
    let ns = m.meta().namespace.clone().unwrap_or_default();
    let Some(owner) = m.meta().owner_references.iter().flatten().find(|o| o.kind == "Machine").cloned() else {
        return Err(blocked("WaitingForMachineOwner", format!("no CAPI Machine owns this {kind} yet"), None));
    };
    let Some(machine) = cache.machine(&ns, &owner.name).await else {
        return Err(blocked(
            "WaitingForMachineOwner",
            format!("Machine {} does not exist", owner.name),
            Some(Duration::from_secs(30)),
        ));
    };
    let cluster_name = machine.data["spec"]["clusterName"].as_str().unwrap_or_default().to_string();
    let Some(cluster) = cache.cluster(&ns, &cluster_name).await else {
        return Err(blocked(
            "WaitingForCluster",
            format!("Cluster {cluster_name} does not exist"),
            Some(Duration::from_secs(30)),
        ));
    };
    Ok(Owners { machine, cluster, cluster_name })
}

/// Paused: the object's `cluster.x-k8s.io/paused` annotation, or its Cluster's `spec.paused`
/// (found through the owner Machine, from the caches; a machine whose Machine or Cluster is gone
/// is not paused, so its deletion can go on).
pub async fn paused<K: Resource>(cache: &CapiCache, m: &K) -> bool {
    if m.meta().annotations.as_ref().is_some_and(|a| a.contains_key("cluster.x-k8s.io/paused")) {
        return true;
    }
    let ns = m.meta().namespace.clone().unwrap_or_default();
    let Some(owner) = m.meta().owner_references.iter().flatten().find(|o| o.kind == "Machine") else {
        return false;
    };
    let Some(machine) = cache.machine(&ns, &owner.name).await else { return false };
    let cluster = cache.cluster(&ns, machine.data["spec"]["clusterName"].as_str().unwrap_or_default()).await;
    cluster.is_some_and(|c| c.data["spec"]["paused"] == true)
}

/// Blocked until the Cluster's infrastructure (CAPZ's `AzureCluster`, CAPA's `AWSCluster`) is
/// provisioned: the network a machine goes into exists only then.
pub fn require_cluster_infrastructure(cluster: &DynamicObject) -> Result<(), Error> {
    if cluster.data["status"]["initialization"]["infrastructureProvisioned"] == true {
        return Ok(());
    }
    Err(blocked(
        "WaitingForClusterInfrastructure",
        "the Cluster's infrastructure is not provisioned yet",
        // The Cluster watch wakes the machine when it is; this is a safety net.
        Some(Duration::from_secs(60)),
    ))
}

/// Annotation the bootstrap controller puts on its data Secret: the Windows Server version the
/// config names, so the image can be chosen without reading the config.
pub const WINDOWS_VERSION_ANNOTATION: &str = "capwin.cluster.x-k8s.io/windows-version";

/// What a machine takes from its bootstrap data Secret.
pub struct BootstrapData {
    /// The payload (`value`).
    pub value: Vec<u8>,
    /// [`WINDOWS_VERSION_ANNOTATION`], when the Secret carries it.
    pub windows_version: Option<String>,
}

/// The bootstrap payload: the `value` of the Secret `Machine.spec.bootstrap.dataSecretName`. A
/// GET, not the cache: the payload is read once, when the instance is made, and must be the
/// bootstrap controller's latest write (a cache of every labelled Secret's payloads would also
/// hold a thousand payloads in memory).
pub async fn bootstrap_data(client: &Client, machine: &DynamicObject) -> Result<BootstrapData, Error> {
    let Some(name) = machine.data["spec"]["bootstrap"]["dataSecretName"].as_str() else {
        return Err(blocked(
            "WaitingForBootstrapData",
            "Machine.spec.bootstrap.dataSecretName is not set yet",
            Some(Duration::from_secs(30)),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &machine.namespace().unwrap_or_default());
    let secret = secrets.get_opt(name).await?;
    let windows_version = secret.as_ref().and_then(|s| s.annotations().get(WINDOWS_VERSION_ANNOTATION).cloned());
    let value = secret.and_then(|s| s.data).and_then(|d| d.get("value").map(|v| v.0.clone())).ok_or_else(|| {
        blocked("WaitingForBootstrapData", format!("Secret {name} has no key value"), Some(Duration::from_secs(15)))
    })?;
    Ok(BootstrapData { value, windows_version })
}

/// The Windows Server version the Machine's `WindowsKubeadmConfig` names (`2025` otherwise), for
/// choosing the default image: from the data Secret's annotation, else (data written by an
/// earlier version) from the config.
pub async fn windows_year(client: &Client, machine: &DynamicObject, data: &BootstrapData) -> Result<String, Error> {
    if let Some(v) = &data.windows_version {
        return Ok(v.clone());
    }
    let boot = &machine.data["spec"]["bootstrap"]["configRef"];
    if boot["kind"] != "WindowsKubeadmConfig" {
        return Ok("2025".into());
    }
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfig"),
        "windowskubeadmconfigs",
    );
    let configs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &machine.namespace().unwrap_or_default(), &ar);
    Ok(configs
        .get_opt(boot["name"].as_str().unwrap_or_default())
        .await?
        .and_then(|c| c.data["spec"]["windows"]["version"].as_str().map(String::from))
        .unwrap_or_else(|| "2025".into()))
}

/// Whether the Machine's Node exists (CAPI has set `status.nodeRef`).
pub fn node_joined(machine: &DynamicObject) -> bool {
    machine.data["status"]["nodeRef"].is_object()
}

/// An object of a kind the cache keeps (`CapiCache::reflect_kind`), else by GET (the kind is
/// not watched, or its watch has not listed yet).
pub async fn cached_or_get(
    cache: &CapiCache,
    client: &Client,
    ar: &ApiResource,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<DynamicObject>, Error> {
    match cache.cached(ar, ns, name) {
        crate::cache::Cached::Found(o) => Ok(Some(*o)),
        crate::cache::Cached::Absent => Ok(None),
        crate::cache::Cached::NotCached => {
            let api: Api<DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
                None => Api::all_with(client.clone(), ar),
            };
            Ok(api.get_opt(name).await?)
        }
    }
}
