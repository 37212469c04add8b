//! What the Windows node does, decided here: pure functions of the spec, the cluster and the
//! cloud, each unit-tested. `bootstrap.ps1` receives their results in `bootstrap.json` and only
//! performs them; the few facts known only on the node (its build, addresses, instance metadata)
//! are checked against what is decided here, and a disagreement fails the step with a message
//! naming both values.

use std::net::Ipv4Addr;

use capwin_api::bootstrap::{CcgPlugin, CloudProviderMode, CniFlavour, WindowsKubeadmConfigSpec, WindowsServerVersion};
use sha2::{Digest, Sha256};

use crate::Cloud;

// ---------------------------------------------------------------------------------------------
// Serial console

/// The serial port each cloud's console capture shows: EC2 `GetConsoleOutput` reads COM1; CAPI's
/// Azure images expose only COM2 to the guest and Azure boot diagnostics show it (image-builder
/// `packer/azure/packer-windows.json` logs cloudbase-init there; kubernetes-sigs/image-builder#875).
pub fn console_port(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Aws => "COM1",
        Cloud::Azure => "COM2",
    }
}

/// The port the bootstrap writes its `CAPWIN-BOOTSTRAP` records to: the configured one, else the
/// one the cloud shows. `None` when diagnostics are off (`none`).
pub fn serial_port(cloud: Cloud, configured: Option<&str>) -> Option<String> {
    match configured {
        Some("none") => None,
        Some(p) => Some(p.to_string()),
        None => Some(console_port(cloud).to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Node identity

/// `--provider-id` is set from the instance metadata unless the spec turns it off: on both clouds,
/// so CAPI can match Machine and Node without waiting for the cloud node manager.
pub fn set_provider_id(configured: Option<bool>) -> bool {
    configured.unwrap_or(true)
}

/// The Azure provider ID as cloud-provider-azure writes it on the Node (and CAPZ on the Machine,
/// `VMResourceIDToProviderID`): the resource group lower-cased "for historical reasons". The
/// script builds the same string from IMDS `compute.subscriptionId`, `resourceGroupName` and
/// `name`; the infrastructure controller must produce the identical string for CAPI to match.
pub fn azure_provider_id(subscription: &str, resource_group: &str, vm_name: &str) -> String {
    format!(
        "azure:///subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{vm_name}",
        resource_group.to_ascii_lowercase()
    )
}

/// Where the node name comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeNameSource {
    /// `joinConfiguration.nodeRegistration.name`.
    Fixed,
    /// Azure IMDS `compute.name`, lower-cased: cloud-provider-azure only initialises Nodes named
    /// after their VM (kubernetes/kubernetes#79232). Not `$env:COMPUTERNAME`: on images whose
    /// cloudbase-init runs SetHostName after UserData that is still the sysprep name.
    AzureVmName,
    /// EC2 `local-hostname` (the private DNS name), what the AWS cloud controller expects.
    AwsPrivateDnsName,
}

/// How the node name is found and checked on the node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeNamePlan {
    pub source: NodeNameSource,
    /// The name when `source` is `fixed`.
    pub value: Option<String>,
    /// Fail (marker `CAPWIN-NODE-NAME`) unless the node name equals the VM name from IMDS and the
    /// VM's `osProfile.computerName`: on Azure with the external cloud provider, a Node under
    /// another name is never initialised and the Machine never gets its Node.
    pub require_vm_name: bool,
}

/// The node name plan for a spec on a cloud.
pub fn node_name(cloud: Cloud, spec: &WindowsKubeadmConfigSpec) -> NodeNamePlan {
    let fixed = spec.join_configuration.node_registration.name.clone();
    let require_vm_name = cloud == Cloud::Azure && spec.windows.kubelet.cloud_provider == CloudProviderMode::External;
    let source = match (&fixed, cloud) {
        (Some(_), _) => NodeNameSource::Fixed,
        (None, Cloud::Azure) => NodeNameSource::AzureVmName,
        (None, Cloud::Aws) => NodeNameSource::AwsPrivateDnsName,
    };
    NodeNamePlan { source, value: fixed, require_vm_name }
}

/// The Windows builds the `host` step accepts for the configured release (see
/// [`WindowsServerVersion::accepted_builds`]); any other build fails naming itself.
pub fn accepted_builds(version: WindowsServerVersion) -> Vec<u32> {
    version.accepted_builds().to_vec()
}

// ---------------------------------------------------------------------------------------------
// Host networking

/// The only UDP port Windows HNS carries VXLAN on (flannel and Calico for Windows cannot change
/// it), opened for the VXLAN flavours.
pub const VXLAN_UDP_PORT: u16 = 4789;

/// An inbound firewall rule the node needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallRule {
    pub name: &'static str,
    pub display_name: &'static str,
    pub protocol: &'static str,
    pub port: u16,
}

/// Inbound rules per CNI: VXLAN on UDP 4789 for the overlay flavours (microsoft/SDN
/// `Kubernetes/windows/helper.psm1` `CreateExternalNetwork` opens the same port).
pub fn firewall_rules(cni: CniFlavour) -> Vec<FirewallRule> {
    match cni {
        CniFlavour::CalicoVxlan | CniFlavour::FlannelVxlan => vec![FirewallRule {
            name: "capwin-vxlan-4789",
            display_name: "capwin VXLAN overlay (UDP 4789)",
            protocol: "UDP",
            port: VXLAN_UDP_PORT,
        }],
        CniFlavour::FlannelHostGw | CniFlavour::None => Vec::new(),
    }
}

/// The throw-away HNS network flannel needs before it starts: creating the first HNS network
/// makes the vSwitch (and the connectivity blip) once, up front (microsoft/SDN `helper.psm1`
/// `CreateExternalNetwork`; CAPZ's `create-external-network.ps1`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalNetwork {
    pub name: &'static str,
    /// HNS network type: `Overlay` for VXLAN, `L2Bridge` for host-gw.
    #[serde(rename = "type")]
    pub hns_type: &'static str,
    pub address_prefix: String,
    pub gateway: String,
    /// The overlay's VSID subnet policy (CAPZ uses 9999); none for L2Bridge.
    pub vsid: Option<u32>,
    /// Which adapter the vSwitch binds to: the one holding the IPv4 default route (what
    /// sig-windows-tools' flannel `start.ps1` takes as the management IP). Not "the first
    /// physical adapter that is up": with Azure accelerated networking that can be the Mellanox
    /// virtual function, which carries no IP configuration.
    pub adapter: &'static str,
}

/// Candidate prefixes for the External network, in order: RFC 2544 benchmarking and RFC 5737
/// documentation ranges, which no cloud hands out to VNets or VPCs. The upstream
/// `192.168.255.0/30` sits inside the common pod CIDR `192.168.0.0/16` (CAPZ's and capwin's
/// templates), so it is not one of them.
pub const EXTERNAL_NETWORK_CANDIDATES: &[&str] =
    &["198.18.255.252/30", "198.51.100.252/30", "203.0.113.252/30", "192.0.2.252/30"];

/// The External network for a CNI, clear of the cluster's pod and service CIDRs.
pub fn external_network(
    cni: CniFlavour,
    pod_cidrs: &[String],
    service_cidrs: &[String],
) -> Result<Option<ExternalNetwork>, String> {
    let (hns_type, vsid) = match cni {
        CniFlavour::FlannelVxlan => ("Overlay", Some(9999)),
        CniFlavour::FlannelHostGw => ("L2Bridge", None),
        CniFlavour::CalicoVxlan | CniFlavour::None => return Ok(None),
    };
    let taken: Vec<(u32, u32)> = pod_cidrs.iter().chain(service_cidrs).filter_map(|c| ipv4_cidr(c)).collect();
    for candidate in EXTERNAL_NETWORK_CANDIDATES {
        let (net, len) = ipv4_cidr(candidate).expect("candidates are valid");
        if taken.iter().all(|t| !overlaps((net, len), *t)) {
            return Ok(Some(ExternalNetwork {
                name: "External",
                hns_type,
                address_prefix: candidate.to_string(),
                gateway: Ipv4Addr::from(net + 1).to_string(),
                vsid,
                adapter: "default-route",
            }));
        }
    }
    Err(format!(
        "every candidate prefix for flannel's External HNS network ({}) overlaps the cluster's pod or service CIDRs",
        EXTERNAL_NETWORK_CANDIDATES.join(", ")
    ))
}

/// `a.b.c.d/n` as (network address, prefix length); `None` for IPv6 or malformed text.
fn ipv4_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(addr) & mask, len))
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// Link-local service addresses the host must keep reaching after the CNI's vSwitch replaces
/// its adapter (the routes live on the old interface and go with it): the instance metadata
/// service everywhere; on Azure also the WireServer 168.63.129.16 (DHCP, health probes, the
/// guest agent); on AWS the time service (.123), DNS (.253) and the Windows activation (KMS)
/// addresses EC2Launch routes (.249-.251).
pub fn metadata_routes(cloud: Cloud) -> Vec<&'static str> {
    match cloud {
        Cloud::Azure => vec!["169.254.169.254", "168.63.129.16"],
        Cloud::Aws => {
            vec![
                "169.254.169.254",
                "169.254.169.123",
                "169.254.169.249",
                "169.254.169.250",
                "169.254.169.251",
                "169.254.169.253",
            ]
        }
    }
}

/// The scheduled task that re-asserts the metadata routes after the CNI (a DaemonSet started
/// after the join) creates its network: at every start and then every minute, via the default
/// route's real gateway (not `0.0.0.0`, which is not on-link on either cloud).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataRoutes {
    pub destinations: Vec<&'static str>,
    pub task_name: &'static str,
    pub interval_minutes: u32,
}

/// The route plan; `None` without a CNI (nothing replaces the adapter).
pub fn metadata_route_plan(cloud: Cloud, cni: CniFlavour) -> Option<MetadataRoutes> {
    (cni != CniFlavour::None).then(|| MetadataRoutes {
        destinations: metadata_routes(cloud),
        task_name: "capwin-metadata-routes",
        interval_minutes: 1,
    })
}

/// TCP ephemeral ports start above the NodePort range 30000-32767 (image-builder `systemprep`
/// sets 34000 + 31536; the script only changes a range that starts lower than `minimum_start`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DynamicPortRange {
    pub start: u32,
    pub count: u32,
    pub minimum_start: u32,
}

pub const DYNAMIC_PORT_RANGE: DynamicPortRange = DynamicPortRange { start: 34000, count: 31536, minimum_start: 32768 };

// ---------------------------------------------------------------------------------------------
// Hyper-V isolation

/// The label the node registers with when it has the Hyper-V handler; the cluster templates'
/// RuntimeClass `runhcs-wcow-hypervisor` selects it in `scheduling.nodeSelector`.
pub const HYPERV_LABEL: (&str, &str) = ("capwin.cluster.x-k8s.io/hyperv-isolation", "true");
/// The runtime handler (and RuntimeClass handler) name.
pub const HYPERV_HANDLER: &str = "runhcs-wcow-hypervisor";
/// pause 3.10.2 is the first release with a Windows Server 2025 variant and keeps the 2019 and
/// 2022 ones (kubernetes-sigs/windows-testing#557: 3.10 and 3.10.1 boot a 2022 utility VM on 2025
/// hosts and fail with `HCS_E_IMAGE_MISMATCH`).
pub const DEFAULT_HYPERV_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
/// The platform the handler pulls its sandbox image for (Azure/AgentBaker
/// `staging/cse/windows/containerd2template.toml`).
pub const HYPERV_SANDBOX_PLATFORM: &str = "windows/amd64";

/// The Hyper-V runtime handler as containerd drop-ins, one per config schema: the script picks
/// by the containerd major version it finds (1.x reads schema 2, 2.x schema 3).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HyperVRuntime {
    pub sandbox_image: String,
    pub drop_in_v2: String,
    pub drop_in_v3: String,
}

/// The handler for a spec, `None` when Hyper-V isolation is off.
pub fn hyperv_runtime(spec: &WindowsKubeadmConfigSpec) -> Option<HyperVRuntime> {
    let h = &spec.windows.hyper_v;
    if !h.enabled {
        return None;
    }
    let image = h.sandbox_image.clone().unwrap_or_else(|| DEFAULT_HYPERV_SANDBOX_IMAGE.to_string());
    let drop_in = |version: u8, table: &str| {
        [
            format!("version = {version}"),
            format!("[{table}.{HYPERV_HANDLER}]"),
            "  runtime_type = 'io.containerd.runhcs.v1'".to_string(),
            format!("[{table}.{HYPERV_HANDLER}.options]"),
            format!("  SandboxImage = '{image}'"),
            format!("  SandboxPlatform = '{HYPERV_SANDBOX_PLATFORM}'"),
            "  SandboxIsolation = 1".to_string(),
            "  ScaleCPULimitsToSandbox = true".to_string(),
        ]
        .join("\r\n")
            + "\r\n"
    };
    Some(HyperVRuntime {
        drop_in_v2: drop_in(2, "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes"),
        drop_in_v3: drop_in(3, "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes"),
        sandbox_image: image,
    })
}

// ---------------------------------------------------------------------------------------------
// gMSA and Active Directory

/// Where the domain join account lands on the node (ACL: SYSTEM and Administrators); the script
/// deletes it once the domain membership is confirmed after the reboot.
pub const DOMAIN_JOIN_PATH: &str = r"C:\run\capwin\domain-join.json";

/// The interface every CCG plugin implements, and its proxy/stub, registered so the class can
/// be activated out of process (microsoft/Azure-Key-Vault-Plugin-gMSA `registerplugin.reg`).
pub const CCG_INTERFACE_IID: &str = "{6ECDA518-2010-4437-8BC3-46E752B7B172}";
pub const CCG_PROXY_STUB_CLSID: &str = "{A6FF50C0-56C0-71CA-5732-BED303A59628}";

/// The COM AppID's `LaunchPermission` and `AccessPermission`: a self-relative security descriptor
/// owned by Administrators that allows local launch, activation and execution to SYSTEM and
/// SERVICE, byte for byte the one in Microsoft's `registerplugin.reg`.
pub const CCG_COM_PERMISSION: [u8; 100] = [
    0x01, 0x00, 0x04, 0x80, 0x44, 0x00, 0x00, 0x00, 0x54, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00,
    0x00, 0x02, 0x00, 0x30, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x0B, 0x00, 0x00, 0x00, 0x01, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x0B, 0x00, 0x00, 0x00, 0x01,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x06, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05,
    0x20, 0x00, 0x00, 0x00, 0x20, 0x02, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x20, 0x00, 0x00,
    0x00, 0x20, 0x02, 0x00, 0x00,
];

/// A CCG plugin install, as the script performs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CcgPluginPlan {
    pub url: String,
    pub sha256: String,
    /// `C:\Windows\System32\capwin-ccg-<first 12 hex of the SHA-256>.dll` (System32, as
    /// image-builder's `gmsa_keyvault.yml` places the Key Vault plugin).
    pub dll_path: String,
    /// Upper-case `{GUID}`.
    pub clsid: String,
    pub app_id: String,
    pub interface_iid: &'static str,
    pub proxy_stub_clsid: &'static str,
    /// [`CCG_COM_PERMISSION`], base64.
    pub com_permission: String,
}

/// The install plan for a plugin.
pub fn ccg_plugin(p: &CcgPlugin) -> CcgPluginPlan {
    use base64::Engine;
    let clsid = p.clsid.to_ascii_uppercase();
    CcgPluginPlan {
        url: p.url.clone(),
        sha256: p.sha256.clone(),
        dll_path: format!(r"C:\Windows\System32\capwin-ccg-{}.dll", &p.sha256[..12.min(p.sha256.len())]),
        app_id: p.app_id.as_ref().map(|a| a.to_ascii_uppercase()).unwrap_or_else(|| derived_app_id(&clsid)),
        clsid,
        interface_iid: CCG_INTERFACE_IID,
        proxy_stub_clsid: CCG_PROXY_STUB_CLSID,
        com_permission: base64::engine::general_purpose::STANDARD.encode(CCG_COM_PERMISSION),
    }
}

/// A stable AppID for a plugin CLSID: a name-based GUID (version 5 layout) over SHA-256 of the
/// CLSID, so every node registers the same AppID and re-runs change nothing.
pub fn derived_app_id(clsid: &str) -> String {
    let digest = Sha256::digest(format!("capwin-ccg-appid:{}", clsid.to_ascii_uppercase()).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!("{{{}-{}-{}-{}-{}}}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// What the gMSA step does.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GmsaPlan {
    pub enabled: bool,
    /// A registered CCG plugin is required: gMSA on a node that is not domain-joined.
    pub require_plugin: bool,
    pub plugin: Option<CcgPluginPlan>,
}

/// The gMSA plan: domain-joined nodes use their own membership, others need a CCG plugin.
pub fn gmsa(spec: &WindowsKubeadmConfigSpec) -> GmsaPlan {
    let g = &spec.windows.gmsa;
    GmsaPlan {
        enabled: g.enabled,
        require_plugin: g.enabled && spec.windows.domain_join.is_none(),
        plugin: g.ccg_plugin.as_ref().filter(|_| g.enabled).map(ccg_plugin),
    }
}

/// The domain join as the script performs it (credentials travel in their own private file).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainJoinPlan {
    pub domain: String,
    pub organizational_unit: Option<String>,
    pub credentials_path: &'static str,
    /// The cloudbase-init exit code that reboots and runs the user data again (`execcmd.py`):
    /// the join takes effect at the reboot, and the re-run confirms it and continues.
    pub reboot_exit_code: u32,
}

/// cloudbase-init: reboot, and run the plugin again at the next boot.
pub const REBOOT_AND_RERUN: u32 = 1003;

/// The domain join plan, `None` without `windows.domainJoin`.
pub fn domain_join(spec: &WindowsKubeadmConfigSpec) -> Option<DomainJoinPlan> {
    spec.windows.domain_join.as_ref().map(|d| DomainJoinPlan {
        domain: d.domain.to_ascii_lowercase(),
        organizational_unit: d.organizational_unit.clone(),
        credentials_path: DOMAIN_JOIN_PATH,
        reboot_exit_code: REBOOT_AND_RERUN,
    })
}

// ---------------------------------------------------------------------------------------------
// Services

/// Service recovery (`sc.exe failure`): restart after 10 s, 30 s, then every 60 s; counters
/// reset after 15 minutes (AgentBaker `Update-ServiceFailureActions`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecovery {
    pub services: [&'static str; 2],
    pub reset_seconds: u32,
    pub actions: &'static str,
}

pub const SERVICE_RECOVERY: ServiceRecovery = ServiceRecovery {
    services: ["containerd", "kubelet"],
    reset_seconds: 900,
    actions: "restart/10000/restart/30000/restart/60000",
};

#[cfg(test)]
mod tests {
    use super::*;
    use capwin_api::bootstrap::DomainJoin;

    #[test]
    fn serial_port_defaults_to_the_port_each_cloud_shows() {
        // Defect 1: COM1 was the default everywhere; Azure images expose only COM2.
        assert_eq!(serial_port(Cloud::Azure, None).as_deref(), Some("COM2"));
        assert_eq!(serial_port(Cloud::Aws, None).as_deref(), Some("COM1"));
        assert_eq!(serial_port(Cloud::Azure, Some("COM3")).as_deref(), Some("COM3"));
        assert_eq!(serial_port(Cloud::Aws, Some("none")), None);
    }

    #[test]
    fn provider_id_is_on_for_both_clouds_unless_turned_off() {
        // Defect 2: it was on for AWS only.
        assert!(set_provider_id(None));
        assert!(!set_provider_id(Some(false)));
        assert_eq!(
            azure_provider_id("sub", "My-RG", "win-0"),
            "azure:///subscriptions/sub/resourceGroups/my-rg/providers/Microsoft.Compute/virtualMachines/win-0"
        );
    }

    #[test]
    fn azure_node_names_come_from_the_vm_name_and_are_checked() {
        // Defect 3: the computer name at user-data time may still be the sysprep name.
        let mut spec = WindowsKubeadmConfigSpec::default();
        let p = node_name(Cloud::Azure, &spec);
        assert_eq!((p.source, p.value.as_deref(), p.require_vm_name), (NodeNameSource::AzureVmName, None, true));
        let p = node_name(Cloud::Aws, &spec);
        assert_eq!((p.source, p.require_vm_name), (NodeNameSource::AwsPrivateDnsName, false));
        spec.join_configuration.node_registration.name = Some("win-a".into());
        let p = node_name(Cloud::Azure, &spec);
        assert_eq!((p.source, p.value.as_deref(), p.require_vm_name), (NodeNameSource::Fixed, Some("win-a"), true));
        spec.windows.kubelet.cloud_provider = CloudProviderMode::None;
        assert!(!node_name(Cloud::Azure, &spec).require_vm_name, "no cloud provider, nothing to match");
    }

    #[test]
    fn windows_builds_include_the_annual_channel() {
        // Defect 8: 25398 (Windows Server 23H2) was rejected.
        assert_eq!(accepted_builds(WindowsServerVersion::Ws2022), vec![20348, 25398]);
        assert_eq!(accepted_builds(WindowsServerVersion::Ws2025), vec![26100]);
        assert_eq!(accepted_builds(WindowsServerVersion::Ws2019), vec![17763]);
    }

    #[test]
    fn the_external_network_stays_clear_of_cluster_cidrs() {
        // Defect 4: 192.168.255.0/30 sits in the templates' pod CIDR 192.168.0.0/16.
        let pods = vec!["192.168.0.0/16".to_string()];
        let services = vec!["10.96.0.0/12".to_string()];
        let n = external_network(CniFlavour::FlannelVxlan, &pods, &services).unwrap().unwrap();
        assert_eq!(
            (n.hns_type, n.address_prefix.as_str(), n.gateway.as_str(), n.vsid, n.adapter),
            ("Overlay", "198.18.255.252/30", "198.18.255.253", Some(9999), "default-route")
        );
        for c in pods.iter().chain(&services) {
            assert!(!overlaps(ipv4_cidr(&n.address_prefix).unwrap(), ipv4_cidr(c).unwrap()));
        }
        let n = external_network(CniFlavour::FlannelHostGw, &pods, &services).unwrap().unwrap();
        assert_eq!((n.hns_type, n.vsid), ("L2Bridge", None));
        assert_eq!(external_network(CniFlavour::CalicoVxlan, &pods, &services), Ok(None));
        // A cluster that uses the first candidate gets the next one; IPv6 CIDRs are ignored.
        let pods = vec!["198.18.0.0/15".to_string(), "fd00::/48".to_string()];
        let n = external_network(CniFlavour::FlannelVxlan, &pods, &services).unwrap().unwrap();
        assert_eq!(n.address_prefix, "198.51.100.252/30");
        let all = vec!["0.0.0.0/0".to_string()];
        assert!(external_network(CniFlavour::FlannelVxlan, &all, &[]).unwrap_err().contains("overlaps"));
        assert!(overlaps(ipv4_cidr("192.168.255.0/30").unwrap(), ipv4_cidr("192.168.0.0/16").unwrap()));
    }

    #[test]
    fn metadata_routes_per_cloud_and_only_with_a_cni() {
        // Defect 5: only 169.254.169.254, only during bootstrap.
        let azure = metadata_route_plan(Cloud::Azure, CniFlavour::CalicoVxlan).unwrap();
        assert_eq!(azure.destinations, vec!["169.254.169.254", "168.63.129.16"]);
        assert_eq!((azure.task_name, azure.interval_minutes), ("capwin-metadata-routes", 1));
        let aws = metadata_route_plan(Cloud::Aws, CniFlavour::FlannelVxlan).unwrap();
        assert!(aws.destinations.contains(&"169.254.169.254") && aws.destinations.contains(&"169.254.169.123"));
        assert_eq!(metadata_route_plan(Cloud::Aws, CniFlavour::None), None);
    }

    #[test]
    fn hyperv_handler_pins_a_sandbox_image_and_platform() {
        // Defect 6: no SandboxImage/SandboxPlatform.
        let mut spec = WindowsKubeadmConfigSpec::default();
        assert_eq!(hyperv_runtime(&spec), None);
        spec.windows.hyper_v.enabled = true;
        let h = hyperv_runtime(&spec).unwrap();
        assert_eq!(h.sandbox_image, DEFAULT_HYPERV_SANDBOX_IMAGE);
        for (text, table) in [
            (
                &h.drop_in_v3,
                "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runhcs-wcow-hypervisor.options]",
            ),
            (
                &h.drop_in_v2,
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runhcs-wcow-hypervisor.options]",
            ),
        ] {
            assert!(text.contains(table), "{text}");
            assert!(text.contains("SandboxImage = 'registry.k8s.io/pause:3.10.2'"), "{text}");
            assert!(text.contains("SandboxPlatform = 'windows/amd64'"), "{text}");
            assert!(text.contains("SandboxIsolation = 1"), "{text}");
        }
        assert!(h.drop_in_v3.starts_with("version = 3\r\n") && h.drop_in_v2.starts_with("version = 2\r\n"));
        spec.windows.hyper_v.sandbox_image = Some("example.com/pause:1.0".into());
        assert!(hyperv_runtime(&spec).unwrap().drop_in_v3.contains("SandboxImage = 'example.com/pause:1.0'"));
    }

    #[test]
    fn ccg_plugins_are_registered_as_microsoft_documents() {
        // Defect 7b: the permission blob is Microsoft's, byte for byte: owner and group BA, two
        // allow ACEs (mask 0x0B: execute, local execute, local activate) for SY and SU.
        let sd = CCG_COM_PERMISSION;
        assert_eq!(&sd[..4], &[1, 0, 0x04, 0x80], "revision 1, self-relative, DACL present");
        let sid = |off: usize, sub: &[u32]| {
            let mut v = vec![1u8, sub.len() as u8, 0, 0, 0, 0, 0, 5];
            for s in sub {
                v.extend_from_slice(&s.to_le_bytes());
            }
            sd[off..off + v.len()] == v[..]
        };
        assert!(sid(0x44, &[32, 544]) && sid(0x54, &[32, 544]), "owner and group Administrators");
        assert_eq!(&sd[0x14..0x18], &[2, 0, 0x30, 0], "DACL revision 2, 48 bytes");
        assert!(sd[0x20] == 0x0B && sid(0x24, &[18]), "SYSTEM may launch and activate");
        assert!(sd[0x34] == 0x0B && sid(0x38, &[6]), "SERVICE may launch and activate");
        let p = ccg_plugin(&CcgPlugin {
            url: "https://example.com/p.dll".into(),
            sha256: "ab".repeat(32),
            clsid: "{ccc2a336-d7f3-4818-a213-272b7924213e}".into(),
            app_id: None,
        });
        assert_eq!(p.clsid, "{CCC2A336-D7F3-4818-A213-272B7924213E}");
        assert_eq!(p.dll_path, r"C:\Windows\System32\capwin-ccg-abababababab.dll");
        assert_eq!(p.app_id, derived_app_id("{CCC2A336-D7F3-4818-A213-272B7924213E}"));
        assert_eq!(p.app_id, derived_app_id("{ccc2a336-d7f3-4818-a213-272b7924213e}"), "case-insensitive");
        assert_ne!(p.app_id, derived_app_id("{00000000-0000-0000-0000-000000000000}"));
        let a = p.app_id.as_bytes();
        assert!(a.len() == 38 && a[0] == b'{' && a[37] == b'}' && a[15] == b'5', "{}", p.app_id);
    }

    #[test]
    fn gmsa_needs_a_plugin_only_off_the_domain() {
        let mut spec = WindowsKubeadmConfigSpec::default();
        assert!(!gmsa(&spec).require_plugin);
        spec.windows.gmsa.enabled = true;
        assert!(gmsa(&spec).require_plugin);
        spec.windows.domain_join = Some(DomainJoin { domain: "Corp.Example.com".into(), ..Default::default() });
        assert!(!gmsa(&spec).require_plugin);
        let d = domain_join(&spec).unwrap();
        assert_eq!(
            (d.domain.as_str(), d.credentials_path, d.reboot_exit_code),
            ("corp.example.com", DOMAIN_JOIN_PATH, 1003)
        );
    }
}
