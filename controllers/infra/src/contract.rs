//! The CAPI v1beta2 infrastructure-machine contract edges both shims read the same way.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};

use crate::cache::CapiCache;
use crate::views::MachineView;
use crate::{Error, blocked};

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
pub async fn bootstrap_data(client: &Client, machine: &MachineView) -> Result<BootstrapData, Error> {
    let Some(name) = machine.data_secret_name.as_deref() else {
        return Err(blocked(
            "WaitingForBootstrapData",
            "Machine.spec.bootstrap.dataSecretName is not set yet",
            Some(Duration::from_secs(30)),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &machine.namespace);
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
pub async fn windows_year(client: &Client, machine: &MachineView, data: &BootstrapData) -> Result<String, Error> {
    if let Some(v) = &data.windows_version {
        return Ok(v.clone());
    }
    let Some(boot) = machine.config_ref.as_ref().filter(|r| r.kind == "WindowsKubeadmConfig") else {
        return Ok("2025".into());
    };
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bootstrap.cluster.x-k8s.io", "v1alpha1", "WindowsKubeadmConfig"),
        "windowskubeadmconfigs",
    );
    let configs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &machine.namespace, &ar);
    Ok(configs
        .get_opt(&boot.name)
        .await?
        .and_then(|c| c.data["spec"]["windows"]["version"].as_str().map(String::from))
        .unwrap_or_else(|| "2025".into()))
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
