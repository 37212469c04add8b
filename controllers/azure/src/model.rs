//! Pure pieces of the ARM shim: resource names and IDs, Windows computer names, ownership tags,
//! the NIC and VM bodies, image references, custom data, provider IDs, readings of ARM state and
//! VM-size capacity. No network in here.

use std::collections::BTreeMap;

use base64::Engine;
use capwin_api::azure::{AzureDiskType, AzureImage, AzureWindowsMachineSpec};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// api-version per resource type: explicit, so a new SDK or ARM default never changes behaviour.
pub mod api {
    pub const COMPUTE: &str = "2024-07-01";
    pub const DISKS: &str = "2024-03-02";
    pub const NETWORK: &str = "2024-05-01";
    pub const GALLERIES: &str = "2023-07-03";
}

/// Azure's limit on `osProfile.customData`, decoded.
pub const CUSTOM_DATA_LIMIT: usize = 65_535;
/// Tag prefix marking what capwin owns. ARM refuses `/` in tag names, so `_` as CAPZ does.
pub const TAG_PREFIX: &str = "capwin.cluster.x-k8s.io_";
/// Community gallery of the CAPI reference images (what CAPZ uses for Windows).
pub const REFERENCE_GALLERY: &str = "ClusterAPI-f72ceb4f-5159-4c26-a0fe-2ea738f0d019";
/// The local administrator capwin creates. Only cloudbase-init ever uses it; the password is
/// random per VM and never stored.
pub const ADMIN_USERNAME: &str = "capwin";
/// Annotation recording the VM name (= Windows computer name) chosen for a machine. Metadata,
/// unlike status, survives `clusterctl move`.
pub const VM_NAME_ANNOTATION: &str = "capwin.cluster.x-k8s.io/vm-name";

/// Where the cluster's network and resource group are, from CAPZ's `AzureCluster`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub vnet: String,
    pub vnet_resource_group: String,
    /// The subnet for the NIC: `spec.network.subnetName` or the AzureCluster's node subnet.
    pub subnet: String,
    /// The node subnet's network security group and route table (for `azure.json`), as CAPZ
    /// names them: the AzureCluster's `subnets[role=node].securityGroup.name` /
    /// `routeTable.name`, else CAPZ's defaults `<cluster>-node-nsg` / `<cluster>-node-routetable`.
    pub security_group: String,
    pub route_table: String,
}

/// Why an `AzureCluster` cannot place a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlacementError(pub String);

/// Reads the placement from an `AzureCluster` (its `spec`), preferring the machine's own subnet.
pub fn placement(azure_cluster: &Value, subnet_override: Option<&str>) -> Result<Placement, PlacementError> {
    let spec = &azure_cluster["spec"];
    let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
    let need = |v: &Value, path: &str| s(v).ok_or_else(|| PlacementError(format!("AzureCluster {path} is not set")));
    let subscription = need(&spec["subscriptionID"], "spec.subscriptionID")?;
    let resource_group = need(&spec["resourceGroup"], "spec.resourceGroup")?;
    let location = need(&spec["location"], "spec.location")?;
    let vnet = need(&spec["networkSpec"]["vnet"]["name"], "spec.networkSpec.vnet.name")?;
    let vnet_resource_group =
        s(&spec["networkSpec"]["vnet"]["resourceGroup"]).unwrap_or_else(|| resource_group.clone());
    let subnet = match subnet_override {
        Some(n) => n.to_string(),
        None => spec["networkSpec"]["subnets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["role"] == "node")
            .and_then(|n| s(&n["name"]))
            .ok_or_else(|| {
                PlacementError(
                    "spec.network.subnetName is not set and the AzureCluster has no subnet with role node".into(),
                )
            })?,
    };
    let node_subnet = spec["networkSpec"]["subnets"].as_array().into_iter().flatten().find(|n| n["role"] == "node");
    let cluster = azure_cluster["metadata"]["name"].as_str().unwrap_or_default();
    let security_group =
        node_subnet.and_then(|n| s(&n["securityGroup"]["name"])).unwrap_or_else(|| format!("{cluster}-node-nsg"));
    let route_table =
        node_subnet.and_then(|n| s(&n["routeTable"]["name"])).unwrap_or_else(|| format!("{cluster}-node-routetable"));
    Ok(Placement {
        subscription,
        resource_group,
        location,
        vnet,
        vnet_resource_group,
        subnet,
        security_group,
        route_table,
    })
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/{type}/{name}`.
pub fn resource_id(sub: &str, rg: &str, provider_type: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider_type}/{name}")
}

/// The ARM IDs of what capwin creates for one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub vm_name: String,
    pub vm: String,
    pub nic: String,
    pub os_disk_name: String,
    pub os_disk: String,
    pub subnet: String,
}

pub fn resources(p: &Placement, vm_name: &str) -> Resources {
    let nic_name = format!("{vm_name}-nic");
    let os_disk_name = format!("{vm_name}_OSDisk");
    Resources {
        vm_name: vm_name.to_string(),
        vm: resource_id(&p.subscription, &p.resource_group, "Microsoft.Compute/virtualMachines", vm_name),
        nic: resource_id(&p.subscription, &p.resource_group, "Microsoft.Network/networkInterfaces", &nic_name),
        os_disk: resource_id(&p.subscription, &p.resource_group, "Microsoft.Compute/disks", &os_disk_name),
        os_disk_name,
        subnet: format!(
            "{}/subnets/{}",
            resource_id(&p.subscription, &p.vnet_resource_group, "Microsoft.Network/virtualNetworks", &p.vnet),
            p.subnet
        ),
    }
}

/// The VM name for a machine, which is also its Windows computer name and so its node name.
///
/// Windows computer names are at most 15 characters. Truncating the Machine name collides
/// (`cluster-md-win-abcde` and `cluster-md-win-fghij` share any 15-character prefix that ends
/// before the random suffix), so the name is up to 8 characters of the Machine name, a hyphen,
/// and 6 base-36 characters of SHA-256(machine UID, attempt). `attempt` moves to the next
/// candidate when the name is taken in the resource group; the create uses `If-None-Match: *`,
/// so even two machines racing for one name cannot share a VM. Naming the VM like the computer
/// keeps cloud-provider-azure's node-name-to-VM mapping (it assumes they are equal) working.
pub fn vm_name(machine_name: &str, machine_uid: &str, attempt: u32) -> String {
    let mut prefix: String = machine_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .skip_while(|c| !c.is_ascii_alphabetic())
        .take(8)
        .collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    if prefix.is_empty() {
        prefix.push_str("win");
    }
    let digest = Sha256::digest(format!("{machine_uid}/{attempt}").as_bytes());
    let mut n = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
    let mut suffix = String::with_capacity(6);
    for _ in 0..6 {
        let d = (n % 36) as u32;
        suffix.push(char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    format!("{prefix}-{suffix}")
}

/// How many deterministic names a machine tries before giving up.
pub const VM_NAME_CANDIDATES: u32 = 16;

/// The candidate after `current` for a machine whose `current` name turned out to be taken
/// (a VM or NIC of that name that is not this machine's). A name that is not among the
/// machine's candidates (recorded before a `clusterctl move` changed the UID) starts over at
/// the first. `None` when every candidate has been tried.
pub fn next_vm_name(machine_name: &str, machine_uid: &str, current: &str) -> Option<String> {
    let next = (0..VM_NAME_CANDIDATES)
        .position(|a| vm_name(machine_name, machine_uid, a) == current)
        .map_or(0, |i| i as u32 + 1);
    (next < VM_NAME_CANDIDATES).then(|| vm_name(machine_name, machine_uid, next))
}

/// How long to wait before reading a VM whose create ARM accepted: ARM's `Retry-After` when it
/// gave one (at least a second: a 0 from a stand-in must not spin), else `fallback`. At most a
/// minute, so a long advice does not hide a finished VM for long.
pub fn creating_interval(
    retry_after: Option<std::time::Duration>,
    fallback: std::time::Duration,
) -> std::time::Duration {
    use std::time::Duration;
    retry_after.unwrap_or(fallback).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Tags on every resource capwin creates: ownership by cluster and machine, plus the user's.
pub fn tags(
    cluster: &str,
    namespace: &str,
    machine: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut t = extra.clone();
    t.insert(format!("{TAG_PREFIX}cluster_{cluster}"), "owned".into());
    t.insert(format!("{TAG_PREFIX}machine"), format!("{namespace}/{machine}"));
    t.insert(format!("{TAG_PREFIX}role"), "windows-node".into());
    // What cloud-provider-azure looks for on cluster-owned resources.
    t.insert(format!("kubernetes.io_cluster_{cluster}"), "owned".into());
    t
}

/// Whether an ARM resource carries this machine's ownership tag (tag names are case-insensitive
/// in ARM).
pub fn owned_by(resource: &Value, namespace: &str, machine: &str) -> bool {
    let want = format!("{namespace}/{machine}");
    let key = format!("{TAG_PREFIX}machine").to_ascii_lowercase();
    resource["tags"]
        .as_object()
        .map(|t| t.iter().any(|(k, v)| k.to_ascii_lowercase() == key && v.as_str() == Some(want.as_str())))
        .unwrap_or(false)
}

/// A resolved image: the `imageReference` body, the GET that proves it exists, and a name for
/// messages.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageChoice {
    pub reference: Value,
    /// ARM path (with api-version) whose GET succeeds iff the image exists; for `latest`
    /// marketplace versions a listing that must be non-empty.
    pub probe: String,
    pub describe: String,
}

/// The image for a machine: the spec's, else the CAPI reference image (community gallery) of the
/// Windows Server version the bootstrap config names, for the Machine's Kubernetes version.
pub fn image(spec: Option<&AzureImage>, p: &Placement, windows_year: &str, k8s_version: &str) -> ImageChoice {
    let sub = &p.subscription;
    let loc = &p.location;
    let compute = api::COMPUTE;
    let community = |g: &str, i: &str, v: &str| ImageChoice {
        reference: json!({"communityGalleryImageId": format!("/CommunityGalleries/{g}/Images/{i}/Versions/{v}")}),
        probe: format!(
            "/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/communityGalleries/{g}/images/{i}/versions/{v}?api-version={}",
            api::GALLERIES
        ),
        describe: format!("community gallery image {g}/{i}/{v}"),
    };
    match spec {
        Some(AzureImage { marketplace: Some(m), .. }) => {
            let base = format!(
                "/subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/publishers/{}/artifacttypes/vmimage/offers/{}/skus/{}/versions",
                m.publisher, m.offer, m.sku
            );
            let probe = if m.version == "latest" {
                format!("{base}?api-version={compute}&$orderby=name%20desc&$top=1")
            } else {
                format!("{base}/{}?api-version={compute}", m.version)
            };
            ImageChoice {
                reference: json!({"publisher": m.publisher, "offer": m.offer, "sku": m.sku, "version": m.version}),
                probe,
                describe: format!("marketplace image {}:{}:{}:{}", m.publisher, m.offer, m.sku, m.version),
            }
        }
        Some(AzureImage { compute_gallery: Some(g), .. }) => {
            let gsub = g.subscription_id.as_deref().unwrap_or(sub);
            let grg = g.resource_group.as_deref().unwrap_or(&p.resource_group);
            let id = format!(
                "{}/images/{}/versions/{}",
                resource_id(gsub, grg, "Microsoft.Compute/galleries", &g.gallery),
                g.name,
                g.version
            );
            ImageChoice {
                reference: json!({"id": id}),
                probe: format!("{id}?api-version={}", api::GALLERIES),
                describe: format!("compute gallery image {}/{}/{}", g.gallery, g.name, g.version),
            }
        }
        Some(AzureImage { community_gallery: Some(c), .. }) => community(&c.gallery, &c.name, &c.version),
        Some(AzureImage { id: Some(id), .. }) => {
            let version = if id.to_ascii_lowercase().contains("/galleries/") { api::GALLERIES } else { compute };
            ImageChoice {
                reference: json!({"id": id}),
                probe: format!("{id}?api-version={version}"),
                describe: format!("image {id}"),
            }
        }
        _ => {
            let version = k8s_version.trim_start_matches('v');
            community(REFERENCE_GALLERY, &format!("capi-win-{windows_year}-containerd"), version)
        }
    }
}

/// Why custom data cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the bootstrap data is {0} bytes; Azure allows at most {CUSTOM_DATA_LIMIT} bytes of custom data (fewer or smaller spec.files, or a shorter script, would fit)"
)]
pub struct CustomDataTooLarge(pub usize);

/// `osProfile.customData`: the payload, base64-encoded, after checking Azure's limit.
pub fn custom_data(payload: &[u8]) -> Result<String, CustomDataTooLarge> {
    if payload.len() > CUSTOM_DATA_LIMIT {
        return Err(CustomDataTooLarge(payload.len()));
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(payload))
}

/// A fresh local administrator password: 24 characters from the OS's random source, with
/// every class Windows' complexity rule counts. Used once in the create call and never kept.
pub fn admin_password(random: &[u8; 24]) -> String {
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SYMBOL: &[u8] = b"-_.+!#%";
    let classes = [LOWER, UPPER, DIGIT, SYMBOL];
    random
        .iter()
        .enumerate()
        .map(|(i, b)| {
            // The first four positions take one of each class; the rest any class.
            let class = if i < 4 { classes[i] } else { classes[(*b as usize >> 6) % 4] };
            class[*b as usize % class.len()] as char
        })
        .collect()
}

/// Everything the NIC and VM bodies need.
pub struct VmInputs<'a> {
    pub spec: &'a AzureWindowsMachineSpec,
    pub placement: &'a Placement,
    pub resources: &'a Resources,
    pub tags: &'a BTreeMap<String, String>,
    pub image: &'a ImageChoice,
    pub zone: Option<&'a str>,
    pub custom_data: &'a str,
    pub admin_password: &'a str,
}

/// The NIC body: one dynamic private address in the subnet.
pub fn nic_body(i: &VmInputs) -> Value {
    json!({
        "location": i.placement.location,
        "tags": i.tags,
        "properties": {
            "enableAcceleratedNetworking": i.spec.network.accelerated_networking.unwrap_or(false),
            "ipConfigurations": [{
                "name": "ipconfig1",
                "properties": {
                    "primary": true,
                    "privateIPAllocationMethod": "Dynamic",
                    "subnet": {"id": i.resources.subnet},
                },
            }],
        },
    })
}

/// The VM body. Automatic updates are off (a reboot mid-join breaks it; patch by replacing
/// nodes), boot diagnostics are managed (no storage account) so the serial log can be read,
/// the OS disk and NIC are deleted with the VM.
pub fn vm_body(i: &VmInputs) -> Value {
    let disk_type = match i.spec.os_disk.storage_account_type.unwrap_or_else(|| default_disk_type(&i.spec.vm_size)) {
        AzureDiskType::StandardLrs => "Standard_LRS",
        AzureDiskType::StandardSsdLrs => "StandardSSD_LRS",
        AzureDiskType::StandardSsdZrs => "StandardSSD_ZRS",
        AzureDiskType::PremiumLrs => "Premium_LRS",
        AzureDiskType::PremiumZrs => "Premium_ZRS",
    };
    let mut vm = json!({
        "location": i.placement.location,
        "tags": i.tags,
        "properties": {
            "hardwareProfile": {"vmSize": i.spec.vm_size},
            "storageProfile": {
                "imageReference": i.image.reference,
                "osDisk": {
                    "name": i.resources.os_disk_name,
                    "osType": "Windows",
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "deleteOption": "Delete",
                    "diskSizeGB": i.spec.os_disk.disk_size_gb.unwrap_or(128),
                    "managedDisk": {"storageAccountType": disk_type},
                },
            },
            "osProfile": {
                "computerName": i.resources.vm_name,
                "adminUsername": ADMIN_USERNAME,
                "adminPassword": i.admin_password,
                "customData": i.custom_data,
                "windowsConfiguration": {
                    "provisionVMAgent": true,
                    "enableAutomaticUpdates": false,
                    "patchSettings": {"patchMode": "Manual"},
                },
            },
            "networkProfile": {
                "networkInterfaces": [{"id": i.resources.nic, "properties": {"primary": true, "deleteOption": "Delete"}}],
            },
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}},
        },
    });
    if let Some(z) = i.zone {
        vm["zones"] = json!([z]);
    }
    if !i.spec.user_assigned_identities.is_empty() {
        let ids: serde_json::Map<String, Value> =
            i.spec.user_assigned_identities.iter().map(|id| (id.clone(), json!({}))).collect();
        vm["identity"] = json!({"type": "UserAssigned", "userAssignedIdentities": ids});
    }
    if i.spec.image.as_ref().and_then(|im| im.marketplace.as_ref()).is_some_and(|m| m.third_party_image) {
        let r = &i.image.reference;
        vm["plan"] = json!({"publisher": r["publisher"], "product": r["offer"], "name": r["sku"]});
    }
    vm
}

/// The OS disk type when the spec names none: `Premium_LRS` on sizes with premium storage (an
/// `s` among the feature letters after the vCPU count, e.g. `D4s_v5`, `B2ms`), else
/// `StandardSSD_LRS` (Premium on, e.g., `D4_v5` is refused by ARM).
pub fn default_disk_type(size: &str) -> AzureDiskType {
    let body = size.strip_prefix("Standard_").unwrap_or(size).split('_').next().unwrap_or_default();
    let features: String = body.chars().skip(1).skip_while(|c| c.is_ascii_digit() || *c == '-').collect();
    if features.contains('s') { AzureDiskType::PremiumLrs } else { AzureDiskType::StandardSsdLrs }
}

/// A zone from `Machine.spec.failureDomain`: Azure zones are `1`, `2`, `3`; CAPZ failure
/// domains are those numbers. Anything else is not a zone.
pub fn zone(failure_domain: Option<&str>) -> Result<Option<String>, String> {
    match failure_domain {
        None | Some("") => Ok(None),
        Some(z @ ("1" | "2" | "3")) => Ok(Some(z.to_string())),
        Some(other) => {
            Err(format!("Machine.spec.failureDomain {other:?} is not an Azure availability zone (1, 2 or 3)"))
        }
    }
}

/// `azure:///subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name>`
/// with the resource group lower-cased, as cloud-provider-azure writes it on the Node (CAPI
/// matches the two strings exactly).
pub fn provider_id(p: &Placement, vm_name: &str) -> String {
    // Exactly what the node's kubelet is given (`--provider-id`), so CAPI matches Machine and Node.
    capwin_payload::node::azure_provider_id(&p.subscription, &p.resource_group, vm_name)
}

/// What the VM's provisioning state and power state mean for `Ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmReading {
    Creating,
    Running,
    /// Provisioned but stopped or deallocated.
    Stopped(String),
    Failed {
        code: String,
        message: String,
    },
    Deleting,
}

/// Reads a VM GET (with `$expand=instanceView`).
pub fn read_vm(vm: &Value) -> VmReading {
    let props = &vm["properties"];
    let state = props["provisioningState"].as_str().unwrap_or("Creating");
    let statuses = props["instanceView"]["statuses"].as_array().cloned().unwrap_or_default();
    let code_of = |prefix: &str| {
        statuses.iter().filter_map(|s| s["code"].as_str()).find(|c| c.starts_with(prefix)).map(String::from)
    };
    match state {
        "Failed" => {
            let failed =
                statuses.iter().find(|s| s["code"].as_str().is_some_and(|c| c.starts_with("ProvisioningState/failed")));
            let code = failed
                .and_then(|s| s["code"].as_str())
                .and_then(|c| c.strip_prefix("ProvisioningState/failed/"))
                .unwrap_or("Failed")
                .to_string();
            let message =
                failed.and_then(|s| s["message"].as_str()).unwrap_or("ARM reports the VM as Failed").to_string();
            VmReading::Failed { code, message }
        }
        "Deleting" => VmReading::Deleting,
        "Succeeded" | "Updating" => match code_of("PowerState/").as_deref() {
            Some(
                "PowerState/stopped" | "PowerState/stopping" | "PowerState/deallocated" | "PowerState/deallocating",
            ) => VmReading::Stopped(
                code_of("PowerState/").unwrap_or_default().trim_start_matches("PowerState/").to_string(),
            ),
            _ => VmReading::Running,
        },
        _ => VmReading::Creating,
    }
}

/// The NIC's primary private address.
pub fn private_ip(nic: &Value) -> Option<String> {
    nic["properties"]["ipConfigurations"]
        .as_array()?
        .iter()
        .map(|c| &c["properties"])
        .find(|p| p["primary"] != false)
        .and_then(|p| p["privateIPAddress"].as_str())
        .map(String::from)
}

/// vCPUs and memory (MiB) of a VM size, for autoscaling from zero.
///
/// There is no size list in the ARM calls capwin makes (resource SKUs need a listing per
/// region), so the figures come from the size name: `Standard_<family><vCPUs><features>_v<n>`.
/// Memory per vCPU is fixed per family for the families listed (D v3+: 4 GiB, with `l`: 2 GiB;
/// E: 8 GiB; F: 2 GiB; B: a table). Unknown sizes give `None`, and the template says so.
pub fn vm_size_capacity(size: &str) -> Option<(u32, u64)> {
    let s = size.strip_prefix("Standard_")?;
    if let Some(&(_, cpu, gib)) = B_SERIES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(s)) {
        return Some((cpu, gib * 1024));
    }
    let (body, version) = s.split_once('_')?;
    let version: u32 = version.strip_prefix('v')?.parse().ok()?;
    let family = body.chars().next()?;
    let digits: String = body[1..].chars().take_while(|c| c.is_ascii_digit()).collect();
    let cpu: u32 = digits.parse().ok()?;
    let features = &body[1 + digits.len()..];
    if features.chars().any(|c| !c.is_ascii_lowercase()) {
        return None;
    }
    let gib_per_cpu = match family {
        'D' if version >= 3 && features.contains('l') => 2,
        'D' if version >= 3 => 4,
        'E' if version >= 3 => 8,
        'F' if version >= 2 => 2,
        _ => return None,
    };
    Some((cpu, u64::from(cpu) * gib_per_cpu * 1024))
}

const B_SERIES: &[(&str, u32, u64)] = &[
    ("B1s", 1, 1),
    ("B1ms", 1, 2),
    ("B2s", 2, 4),
    ("B2ms", 2, 8),
    ("B4ms", 4, 16),
    ("B8ms", 8, 32),
    ("B12ms", 12, 48),
    ("B16ms", 16, 64),
    ("B20ms", 20, 80),
];

/// The `azure.json` cloud-provider-azure reads on a worker (`--cloud-config`), as CAPZ writes it
/// into `<template>-azure-json` under `worker-node-azure.json`. It carries no credential: the
/// Windows node runs only cloud-node-manager, which reads the instance metadata service.
pub fn worker_azure_json(p: &Placement, tenant: Option<&str>, cloud: &str) -> Value {
    json!({
        "cloud": cloud,
        "tenantId": tenant.unwrap_or_default(),
        "subscriptionId": p.subscription,
        "resourceGroup": p.resource_group,
        "location": p.location,
        "vmType": "standard",
        "vnetName": p.vnet,
        "vnetResourceGroup": p.vnet_resource_group,
        "subnetName": p.subnet,
        "securityGroupName": p.security_group,
        "routeTableName": p.route_table,
        "loadBalancerSku": "Standard",
        "maximumLoadBalancerRuleCount": 250,
        "useManagedIdentityExtension": false,
        "useInstanceMetadata": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capwin_api::azure::{CommunityGalleryImage, ComputeGalleryImage, MarketplaceImage};
    use std::collections::BTreeSet;

    fn placement_fixture() -> Placement {
        Placement {
            subscription: "sub".into(),
            resource_group: "My-RG".into(),
            location: "westeurope".into(),
            vnet: "c1-vnet".into(),
            vnet_resource_group: "net-rg".into(),
            subnet: "node-subnet".into(),
            security_group: "c1-node-nsg".into(),
            route_table: "c1-node-routetable".into(),
        }
    }

    #[test]
    fn vm_names_are_short_valid_deterministic_and_distinct() {
        let mut seen = BTreeSet::new();
        for i in 0..20_000 {
            let n = vm_name("cluster-one-md-win-7d9f8-abcde", &format!("uid-{i}"), 0);
            assert!(n.len() <= 15, "{n}");
            assert!(n.starts_with("cluster-"), "{n}");
            assert!(!n.chars().all(|c| c.is_ascii_digit()));
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{n}");
            assert!(seen.insert(n.clone()), "collision at {i}: {n}");
        }
        assert_eq!(vm_name("m", "u", 0), vm_name("m", "u", 0));
        assert_ne!(vm_name("m", "u", 0), vm_name("m", "u", 1));
    }

    #[test]
    fn a_taken_name_moves_to_the_next_candidate_never_back_to_the_first() {
        let c = |a| vm_name("m", "u", a);
        assert_eq!(next_vm_name("m", "u", &c(0)).as_deref(), Some(c(1).as_str()));
        assert_eq!(next_vm_name("m", "u", &c(7)).as_deref(), Some(c(8).as_str()));
        assert_eq!(next_vm_name("m", "u", &c(VM_NAME_CANDIDATES - 1)), None, "all tried");
        assert_eq!(next_vm_name("m", "u", "from-before-a-move").as_deref(), Some(c(0).as_str()));
    }

    #[test]
    fn creating_vms_are_read_at_arms_advice() {
        use std::time::Duration;
        let ten = Duration::from_secs(10);
        assert_eq!(creating_interval(None, ten), ten);
        assert_eq!(creating_interval(Some(Duration::from_secs(15)), ten), Duration::from_secs(15));
        assert_eq!(creating_interval(Some(Duration::ZERO), ten), Duration::from_secs(1));
        assert_eq!(creating_interval(Some(Duration::from_secs(3600)), ten), Duration::from_secs(60));
    }

    #[test]
    fn vm_name_prefix_starts_with_a_letter_and_never_ends_in_a_hyphen() {
        assert!(vm_name("123-456", "u", 0).starts_with("win-"));
        assert!(vm_name("9abc", "u", 0).starts_with("abc-"));
        let n = vm_name("abcdefg-hijk", "u", 0);
        assert!(n.starts_with("abcdefg-"), "{n}");
        assert!(!n.contains("--"));
        assert!(vm_name("", "u", 0).starts_with("win-"));
    }

    #[test]
    fn placement_prefers_the_machine_subnet_then_the_node_role() {
        let ac = json!({"spec": {"subscriptionID": "s", "resourceGroup": "rg", "location": "westeurope",
            "networkSpec": {"vnet": {"name": "v"}, "subnets": [{"name": "cp", "role": "control-plane"}, {"name": "nodes", "role": "node"}]}}});
        let p = placement(&ac, None).unwrap();
        assert_eq!((p.subnet.as_str(), p.vnet_resource_group.as_str()), ("nodes", "rg"));
        assert_eq!(placement(&ac, Some("mine")).unwrap().subnet, "mine");
        let mut no_node = ac.clone();
        no_node["spec"]["networkSpec"]["subnets"] = json!([{"name": "cp", "role": "control-plane"}]);
        assert!(placement(&no_node, None).unwrap_err().0.contains("role node"));
        let mut no_loc = ac;
        no_loc["spec"]["location"] = json!("");
        assert_eq!(placement(&no_loc, None).unwrap_err().0, "AzureCluster spec.location is not set");
    }

    #[test]
    fn resource_ids_and_provider_id() {
        let p = placement_fixture();
        let r = resources(&p, "win-abc123");
        assert_eq!(
            r.vm,
            "/subscriptions/sub/resourceGroups/My-RG/providers/Microsoft.Compute/virtualMachines/win-abc123"
        );
        assert_eq!(
            r.nic,
            "/subscriptions/sub/resourceGroups/My-RG/providers/Microsoft.Network/networkInterfaces/win-abc123-nic"
        );
        assert_eq!(
            r.subnet,
            "/subscriptions/sub/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/c1-vnet/subnets/node-subnet"
        );
        assert_eq!(
            provider_id(&p, "win-abc123"),
            "azure:///subscriptions/sub/resourceGroups/my-rg/providers/Microsoft.Compute/virtualMachines/win-abc123"
        );
    }

    #[test]
    fn tags_mark_ownership_without_slashes_in_names() {
        let t = tags("c1", "ns", "m1", &BTreeMap::from([("team".to_string(), "x".to_string())]));
        assert!(t.keys().all(|k| !k.contains('/')));
        assert_eq!(t["team"], "x");
        let vm = json!({"tags": t});
        assert!(owned_by(&vm, "ns", "m1"));
        assert!(!owned_by(&vm, "ns", "m2"));
        assert!(!owned_by(&json!({}), "ns", "m1"));
    }

    #[test]
    fn default_image_is_the_reference_image_for_the_versions() {
        let p = placement_fixture();
        let i = image(None, &p, "2025", "v1.35.10");
        assert_eq!(
            i.reference["communityGalleryImageId"],
            format!("/CommunityGalleries/{REFERENCE_GALLERY}/Images/capi-win-2025-containerd/Versions/1.35.10")
        );
        assert!(
            i.probe
                .starts_with("/subscriptions/sub/providers/Microsoft.Compute/locations/westeurope/communityGalleries/")
        );
    }

    #[test]
    fn every_image_source_has_a_reference_and_a_probe() {
        let p = placement_fixture();
        let m = AzureImage {
            marketplace: Some(MarketplaceImage {
                publisher: "P".into(),
                offer: "O".into(),
                sku: "S".into(),
                version: "latest".into(),
                third_party_image: false,
            }),
            ..Default::default()
        };
        let i = image(Some(&m), &p, "2025", "v1.35.0");
        assert_eq!(i.reference, json!({"publisher": "P", "offer": "O", "sku": "S", "version": "latest"}));
        assert!(i.probe.contains("/skus/S/versions?") && i.probe.contains("$top=1"), "{}", i.probe);
        let g = AzureImage {
            compute_gallery: Some(ComputeGalleryImage {
                gallery: "g".into(),
                name: "i".into(),
                version: "1.0.0".into(),
                subscription_id: None,
                resource_group: Some("imgs".into()),
            }),
            ..Default::default()
        };
        let i = image(Some(&g), &p, "2025", "v1.35.0");
        assert_eq!(
            i.reference["id"],
            "/subscriptions/sub/resourceGroups/imgs/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0"
        );
        let c = AzureImage {
            community_gallery: Some(CommunityGalleryImage {
                gallery: "G".into(),
                name: "I".into(),
                version: "2".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            image(Some(&c), &p, "2025", "v1").reference["communityGalleryImageId"],
            "/CommunityGalleries/G/Images/I/Versions/2"
        );
        let id = AzureImage {
            id: Some("/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/x".into()),
            ..Default::default()
        };
        let i = image(Some(&id), &p, "2025", "v1");
        assert!(i.probe.ends_with(&format!("?api-version={}", api::COMPUTE)));
    }

    #[test]
    fn custom_data_is_base64_up_to_the_limit() {
        assert_eq!(custom_data(b"hi").unwrap(), "aGk=");
        assert!(custom_data(&vec![b'a'; CUSTOM_DATA_LIMIT]).is_ok());
        let e = custom_data(&vec![b'a'; CUSTOM_DATA_LIMIT + 1]).unwrap_err();
        assert_eq!(e, CustomDataTooLarge(65_536));
        assert!(e.to_string().contains("65536 bytes"));
    }

    #[test]
    fn passwords_meet_windows_complexity() {
        for seed in 0u8..=255 {
            let mut r = [0u8; 24];
            for (i, b) in r.iter_mut().enumerate() {
                *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 7);
            }
            let p = admin_password(&r);
            assert_eq!(p.len(), 24);
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
            assert!(p.chars().any(|c| !c.is_ascii_alphanumeric()));
        }
    }

    fn inputs_fixture(spec: &AzureWindowsMachineSpec) -> Value {
        let p = placement_fixture();
        let r = resources(&p, "win-abc123");
        let t = tags("c1", "ns", "m", &BTreeMap::new());
        let im = image(None, &p, "2025", "v1.35.10");
        vm_body(&VmInputs {
            spec,
            placement: &p,
            resources: &r,
            tags: &t,
            image: &im,
            zone: Some("2"),
            custom_data: "Y2Q=",
            admin_password: "pw",
        })
    }

    #[test]
    fn vm_body_has_what_a_windows_worker_needs() {
        let spec = AzureWindowsMachineSpec {
            vm_size: "Standard_D4s_v5".into(),
            user_assigned_identities: vec![
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i".into(),
            ],
            ..Default::default()
        };
        let vm = inputs_fixture(&spec);
        let p = &vm["properties"];
        assert_eq!(vm["zones"], json!(["2"]));
        assert_eq!(p["osProfile"]["computerName"], "win-abc123");
        assert_eq!(p["osProfile"]["windowsConfiguration"]["enableAutomaticUpdates"], false);
        assert_eq!(p["osProfile"]["customData"], "Y2Q=");
        assert_eq!(p["storageProfile"]["osDisk"]["deleteOption"], "Delete");
        assert_eq!(p["storageProfile"]["osDisk"]["diskSizeGB"], 128);
        assert_eq!(p["storageProfile"]["osDisk"]["managedDisk"]["storageAccountType"], "Premium_LRS");
        assert_eq!(p["networkProfile"]["networkInterfaces"][0]["properties"]["deleteOption"], "Delete");
        assert_eq!(p["diagnosticsProfile"]["bootDiagnostics"]["enabled"], true);
        assert_eq!(vm["identity"]["type"], "UserAssigned");
        assert!(vm.get("plan").is_none());
    }

    #[test]
    fn premium_disks_only_on_sizes_with_premium_storage() {
        assert_eq!(default_disk_type("Standard_D4s_v5"), AzureDiskType::PremiumLrs);
        assert_eq!(default_disk_type("Standard_B2ms"), AzureDiskType::PremiumLrs);
        assert_eq!(default_disk_type("Standard_E8ds_v5"), AzureDiskType::PremiumLrs);
        assert_eq!(default_disk_type("Standard_D4_v5"), AzureDiskType::StandardSsdLrs);
        assert_eq!(default_disk_type("Standard_D2_v3"), AzureDiskType::StandardSsdLrs);
        assert_eq!(default_disk_type("Standard_D4ads_v5"), AzureDiskType::PremiumLrs);
    }

    #[test]
    fn azure_json_names_the_node_subnets_nsg_and_route_table() {
        let ac = json!({"metadata": {"name": "c1"}, "spec": {"subscriptionID": "s", "resourceGroup": "rg", "location": "l",
            "networkSpec": {"vnet": {"name": "v"}, "subnets": [{"name": "n", "role": "node", "securityGroup": {"name": "my-nsg"}}]}}});
        let p = placement(&ac, None).unwrap();
        let j = worker_azure_json(&p, None, "AzurePublicCloud");
        assert_eq!(
            (j["securityGroupName"].as_str(), j["routeTableName"].as_str()),
            (Some("my-nsg"), Some("c1-node-routetable"))
        );
    }

    #[test]
    fn zones_come_only_from_zone_failure_domains() {
        assert_eq!(zone(None), Ok(None));
        assert_eq!(zone(Some("3")), Ok(Some("3".into())));
        assert!(zone(Some("westeurope-1")).unwrap_err().contains("failureDomain"));
    }

    #[test]
    fn vm_readings() {
        let vm = |state: &str, statuses: Value| json!({"properties": {"provisioningState": state, "instanceView": {"statuses": statuses}}});
        assert_eq!(read_vm(&vm("Creating", json!([]))), VmReading::Creating);
        assert_eq!(read_vm(&vm("Succeeded", json!([{"code": "PowerState/running"}]))), VmReading::Running);
        assert_eq!(
            read_vm(&vm("Succeeded", json!([{"code": "PowerState/deallocated"}]))),
            VmReading::Stopped("deallocated".into())
        );
        assert_eq!(
            read_vm(&vm(
                "Failed",
                json!([{"code": "ProvisioningState/failed/OSProvisioningTimedOut", "message": "took too long"}])
            )),
            VmReading::Failed { code: "OSProvisioningTimedOut".into(), message: "took too long".into() }
        );
        assert_eq!(read_vm(&vm("Deleting", json!([]))), VmReading::Deleting);
    }

    #[test]
    fn private_ip_of_the_primary_configuration() {
        let nic = json!({"properties": {"ipConfigurations": [{"properties": {"primary": true, "privateIPAddress": "10.1.0.4"}}]}});
        assert_eq!(private_ip(&nic).as_deref(), Some("10.1.0.4"));
        assert_eq!(private_ip(&json!({})), None);
    }

    #[test]
    fn capacity_from_size_names() {
        assert_eq!(vm_size_capacity("Standard_D4s_v5"), Some((4, 16 * 1024)));
        assert_eq!(vm_size_capacity("Standard_D2_v3"), Some((2, 8 * 1024)));
        assert_eq!(vm_size_capacity("Standard_D8ls_v5"), Some((8, 16 * 1024)));
        assert_eq!(vm_size_capacity("Standard_E8ds_v5"), Some((8, 64 * 1024)));
        assert_eq!(vm_size_capacity("Standard_F16s_v2"), Some((16, 32 * 1024)));
        assert_eq!(vm_size_capacity("Standard_B2ms"), Some((2, 8 * 1024)));
        assert_eq!(vm_size_capacity("Standard_D4_v2"), None);
        assert_eq!(vm_size_capacity("Standard_M128s"), None);
        assert_eq!(vm_size_capacity("D4s_v5"), None);
    }

    #[test]
    fn azure_json_has_no_credentials() {
        let j = worker_azure_json(&placement_fixture(), Some("t"), "AzurePublicCloud");
        let text = j.to_string();
        assert!(!text.contains("aadClientSecret"));
        assert_eq!(j["subnetName"], "node-subnet");
        assert_eq!(j["useInstanceMetadata"], true);
    }
}
