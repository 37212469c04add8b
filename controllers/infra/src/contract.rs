//! The CAPI v1beta2 infrastructure-machine contract edges both shims read the same way.

use std::time::Duration;

use capwin_api::common::capi_resource as capi;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, Resource, ResourceExt};

use crate::{Error, blocked};

/// The CAPI objects a machine hangs off.
pub struct Owners {
    pub machine: DynamicObject,
    pub cluster: DynamicObject,
    pub cluster_name: String,
}

/// The owning Machine (by owner reference) and its Cluster; blocked until both exist.
pub async fn owners<K: Resource>(client: &Client, m: &K, kind: &str) -> Result<Owners, Error> {
    let ns = m.meta().namespace.clone().unwrap_or_default();
    let Some(owner) = m.meta().owner_references.iter().flatten().find(|o| o.kind == "Machine").cloned() else {
        return Err(blocked("WaitingForMachineOwner", format!("no CAPI Machine owns this {kind} yet"), None));
    };
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &capi("Machine"));
    let Some(machine) = machines.get_opt(&owner.name).await? else {
        return Err(blocked(
            "WaitingForMachineOwner",
            format!("Machine {} does not exist", owner.name),
            Some(Duration::from_secs(30)),
        ));
    };
    let cluster_name = machine.data["spec"]["clusterName"].as_str().unwrap_or_default().to_string();
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &capi("Cluster"));
    let Some(cluster) = clusters.get_opt(&cluster_name).await? else {
        return Err(blocked(
            "WaitingForCluster",
            format!("Cluster {cluster_name} does not exist"),
            Some(Duration::from_secs(30)),
        ));
    };
    Ok(Owners { machine, cluster, cluster_name })
}

/// Paused: the object's `cluster.x-k8s.io/paused` annotation, or its Cluster's `spec.paused`
/// (found through the owner Machine; a machine whose Machine or Cluster is gone is not paused, so
/// its deletion can go on).
pub async fn paused<K: Resource>(client: &Client, m: &K) -> Result<bool, Error> {
    if m.meta().annotations.as_ref().is_some_and(|a| a.contains_key("cluster.x-k8s.io/paused")) {
        return Ok(true);
    }
    let ns = m.meta().namespace.clone().unwrap_or_default();
    let Some(owner) = m.meta().owner_references.iter().flatten().find(|o| o.kind == "Machine") else {
        return Ok(false);
    };
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &capi("Machine"));
    let Some(machine) = machines.get_opt(&owner.name).await? else { return Ok(false) };
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &capi("Cluster"));
    let cluster = clusters.get_opt(machine.data["spec"]["clusterName"].as_str().unwrap_or_default()).await?;
    Ok(cluster.is_some_and(|c| c.data["spec"]["paused"] == true))
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

/// The bootstrap payload: the `value` of the Secret `Machine.spec.bootstrap.dataSecretName`.
pub async fn bootstrap_data(client: &Client, machine: &DynamicObject) -> Result<Vec<u8>, Error> {
    let Some(name) = machine.data["spec"]["bootstrap"]["dataSecretName"].as_str() else {
        return Err(blocked(
            "WaitingForBootstrapData",
            "Machine.spec.bootstrap.dataSecretName is not set yet",
            Some(Duration::from_secs(30)),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &machine.namespace().unwrap_or_default());
    secrets.get_opt(name).await?.and_then(|s| s.data).and_then(|d| d.get("value").map(|v| v.0.clone())).ok_or_else(
        || blocked("WaitingForBootstrapData", format!("Secret {name} has no key value"), Some(Duration::from_secs(15))),
    )
}

/// The Windows Server version the Machine's `WindowsKubeadmConfig` names (`2025` otherwise), for
/// choosing the default image.
pub async fn windows_year(client: &Client, machine: &DynamicObject) -> Result<String, Error> {
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
