//! One test per defect of issue 12 (and the VNI removal): what the renderer decides, as the
//! node receives it in `bootstrap.json`, and the part of `bootstrap.ps1` that performs it. Each
//! failed on the code before the fix.

mod support;

use std::collections::BTreeMap;

use capwin_api::bootstrap::*;
use capwin_payload::Cloud;
use serde_json::Value;

fn params(spec: &WindowsKubeadmConfigSpec, cloud: Cloud) -> Value {
    let account = support::ad_secret();
    let account = spec.windows.domain_join.as_ref().map(|_| &account);
    let p = support::render_joined(spec, &BTreeMap::new(), account, cloud).expect("renders");
    support::params(&support::files(&p))
}

/// The text of a function of the script.
fn function(name: &str) -> &'static str {
    let src = capwin_payload::BOOTSTRAP_SOURCE;
    let start = src.find(&format!("\nfunction {name} {{\n")).unwrap_or_else(|| panic!("no function {name}"));
    let end = src[start + 1..].find("\n}\n").map(|e| start + 1 + e + 2).unwrap();
    &src[start..end]
}

fn spec(cni: CniFlavour) -> WindowsKubeadmConfigSpec {
    support::spec(cni, WindowsServerVersion::Ws2025)
}

#[test]
fn defect1_serial_port_is_the_one_each_cloud_shows() {
    assert_eq!(params(&spec(CniFlavour::CalicoVxlan), Cloud::Azure)["serialPort"], "COM2");
    assert_eq!(params(&spec(CniFlavour::CalicoVxlan), Cloud::Aws)["serialPort"], "COM1");
    let mut off = spec(CniFlavour::CalicoVxlan);
    off.windows.diagnostics.serial_port = Some("none".into());
    assert_eq!(params(&off, Cloud::Azure)["serialPort"], Value::Null);
    // cloudbase-init holds its logging port while the script runs: the record goes to stdout,
    // which cloudbase-init logs to that port when the script exits.
    let serial = function("Write-Serial");
    assert!(serial.contains("return\n    } catch {") && serial.trim_end().ends_with("Write-Host $Line\n}"), "{serial}");
}

#[test]
fn defect2_provider_id_is_set_on_both_clouds() {
    assert_eq!(params(&spec(CniFlavour::CalicoVxlan), Cloud::Azure)["providerId"], "azure");
    assert_eq!(params(&spec(CniFlavour::CalicoVxlan), Cloud::Aws)["providerId"], "aws");
    let mut off = spec(CniFlavour::CalicoVxlan);
    off.windows.kubelet.set_provider_id = Some(false);
    assert_eq!(params(&off, Cloud::Azure)["providerId"], Value::Null);
    let p = support::render(&spec(CniFlavour::CalicoVxlan), Cloud::Azure);
    let join = support::join_config(&support::files(&p));
    let args = join["nodeRegistration"]["kubeletExtraArgs"].as_sequence().unwrap();
    assert!(args.iter().any(|a| a["name"] == "provider-id" && a["value"] == "@@CAPWIN_PROVIDER_ID@@"));
    // The script builds the ID as cloud-provider-azure and CAPZ do (resource group lower-cased).
    let want = capwin_payload::node::azure_provider_id("{0}", "{1}", "{2}");
    assert!(function("Assert-NodeName").contains(&format!(
        "'{want}' -f $compute.subscriptionId, ([string]$compute.resourceGroupName).ToLowerInvariant(), $compute.name"
    )));
}

#[test]
fn defect3_azure_node_name_is_the_vm_name_from_imds() {
    let p = params(&spec(CniFlavour::CalicoVxlan), Cloud::Azure);
    assert_eq!(p["nodeName"], serde_json::json!({"source": "azure-vm-name", "value": null, "requireVmName": true}));
    let p = params(&spec(CniFlavour::CalicoVxlan), Cloud::Aws);
    assert_eq!(p["nodeName"]["source"], "aws-private-dns-name");
    let f = function("Assert-NodeName");
    assert!(f.contains("$name = ([string]$compute.name).ToLowerInvariant()"));
    assert!(f.contains("$computer = ([string]$compute.osProfile.computerName).ToLowerInvariant()"));
    assert!(f.contains("throw ('CAPWIN-NODE-NAME: node name {0}, VM name {1} and computer name {2} must be equal"));
    assert!(!f.contains("$name = $env:COMPUTERNAME"), "the computer name is never the node name");
}

#[test]
fn defect4_flannel_external_network_is_created_by_hns_on_the_default_route_adapter() {
    let p = params(&spec(CniFlavour::FlannelVxlan), Cloud::Azure);
    assert_eq!(
        p["externalNetwork"],
        serde_json::json!({"name": "External", "type": "Overlay", "addressPrefix": "198.18.255.252/30", "gateway": "198.18.255.253", "vsid": 9999, "adapter": "default-route"})
    );
    assert_eq!(params(&spec(CniFlavour::FlannelHostGw), Cloud::Azure)["externalNetwork"]["type"], "L2Bridge");
    assert_eq!(params(&spec(CniFlavour::CalicoVxlan), Cloud::Azure)["externalNetwork"], Value::Null);
    let f = function("Step-ExternalNetwork");
    assert!(f.contains("$adapter = Get-NetAdapter -InterfaceIndex $route.ifIndex"), "{f}");
    assert!(f.contains("Invoke-Hns 'POST' '/networks'"), "{f}");
    let src = capwin_payload::BOOTSTRAP_SOURCE;
    assert!(
        !src.contains("Get-NetAdapter -Physical") && !src.contains("Import-Module"),
        "no first-physical-adapter rule, no module"
    );
    assert!(function("Invoke-Hns").contains("[DllImport(\"vmcompute.dll\")] public static extern void HNSCall("));
}

#[test]
fn defect5_metadata_routes_are_reasserted_through_the_real_gateway() {
    let p = params(&spec(CniFlavour::CalicoVxlan), Cloud::Azure);
    assert_eq!(
        p["metadataRoutes"],
        serde_json::json!({"destinations": ["169.254.169.254", "168.63.129.16"], "taskName": "capwin-metadata-routes", "intervalMinutes": 1})
    );
    let f = function("Step-MetadataRoutes");
    assert!(f.contains("-InterfaceIndex $route.ifIndex -NextHop $route.NextHop"), "{f}");
    assert!(
        !capwin_payload::BOOTSTRAP_SOURCE.contains("0.0.0.0')")
            && !capwin_payload::BOOTSTRAP_SOURCE.contains("route.exe")
    );
    let task = function("Step-MetadataRouteTask");
    assert!(task.contains("New-ScheduledTaskTrigger -AtStartup") && task.contains("-RepetitionInterval"), "{task}");
    assert!(function("Get-MetadataTaskArguments").contains("-Mode MetadataRoutes"));
    assert!(capwin_payload::BOOTSTRAP_SOURCE.contains("[ValidateSet('Join', 'MetadataRoutes')]"));
}

#[test]
fn defect6_hyperv_handler_has_a_sandbox_image_and_the_node_its_label() {
    let mut s = spec(CniFlavour::CalicoVxlan);
    s.windows.hyper_v.enabled = true;
    let p = params(&s, Cloud::Azure);
    let h = &p["containerd"]["hyperV"];
    assert_eq!(h["sandboxImage"], "registry.k8s.io/pause:3.10.2");
    for k in ["dropInV2", "dropInV3"] {
        let t = h[k].as_str().unwrap();
        assert!(
            t.contains("SandboxImage = 'registry.k8s.io/pause:3.10.2'")
                && t.contains("SandboxPlatform = 'windows/amd64'"),
            "{t}"
        );
    }
    let labels = |p: &Value| {
        p["kubeletFlags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str()?.strip_prefix("--node-labels=").map(String::from))
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&p), vec!["capwin.cluster.x-k8s.io/hyperv-isolation=true".to_string()]);
    assert!(labels(&params(&spec(CniFlavour::CalicoVxlan), Cloud::Azure)).is_empty(), "no label without the handler");
    // The check for a usable hypervisor is the role's features, not HypervisorPresent (true in every VM).
    let f = function("Assert-HyperVCapable");
    assert!(
        f.contains("'Microsoft-Hyper-V-Online'") && !capwin_payload::BOOTSTRAP_SOURCE.contains("HypervisorPresent"),
        "{f}"
    );
}

#[test]
fn defect7_domain_join_and_ccg_plugin_are_performed_as_documented() {
    let mut s = spec(CniFlavour::CalicoVxlan);
    s.windows.gmsa.enabled = true;
    s.windows.gmsa.ccg_plugin = Some(CcgPlugin {
        url: "https://example.com/ccg.dll".into(),
        sha256: "c".repeat(64),
        clsid: "{CCC2A336-D7F3-4818-A213-272B7924213E}".into(),
        app_id: Some("{557110E1-88BC-4583-8281-6AAC6F708584}".into()),
    });
    s.windows.domain_join = Some(DomainJoin {
        domain: "corp.example.com".into(),
        organizational_unit: None,
        credentials_secret: DomainJoinSecretRef { name: "ad".into(), ..Default::default() },
    });
    let p = params(&s, Cloud::Azure);
    assert_eq!(
        p["domainJoin"],
        serde_json::json!({"domain": "corp.example.com", "organizationalUnit": null, "credentialsPath": "C:\\run\\capwin\\domain-join.json", "rebootExitCode": 1003})
    );
    assert_eq!(p["gmsa"]["requirePlugin"], false, "a domain-joined node uses its membership");
    assert_eq!(p["gmsa"]["plugin"]["appId"], "{557110E1-88BC-4583-8281-6AAC6F708584}");
    assert_eq!(p["gmsa"]["plugin"]["dllPath"], "C:\\Windows\\System32\\capwin-ccg-cccccccccccc.dll");
    // The account file: private, exact, and the cloudbase-init oracle writes it so.
    let account = support::ad_secret();
    let payload = support::render_joined(&s, &BTreeMap::new(), Some(&account), Cloud::Azure).unwrap();
    let report = support::assert_cbi_accepts(&payload.bytes, "domain join");
    let file =
        report["files"].as_array().unwrap().iter().find(|f| f["path"] == "C:\\run\\capwin\\domain-join.json").unwrap();
    assert_eq!(file["permissions"], "0600", "{file}");
    let account_json: Value =
        serde_json::from_slice(&support::cbi_files(&report)["C:\\run\\capwin\\domain-join.json"]).unwrap();
    assert_eq!(account_json, serde_json::json!({"username": support::AD_USER, "password": support::AD_PASSWORD}));
    // The script: Add-Computer with the credential, reboot via 1003, the account deleted once
    // the membership is confirmed; the COM class registered out of process, the CLSID under
    // CCG\COMClasses with ownership taken and restored.
    let join = function("Step-DomainJoin");
    assert!(join.contains("Add-Computer @join") && join.contains("Exit-ForReboot"), "{join}");
    assert!(
        join.contains("if (Test-DomainJoinComplete) {\n        Remove-DomainJoinAccount\n        return"),
        "{join}"
    );
    let com = function("Register-CcgComClass");
    assert!(
        com.contains("'DllSurrogate'") && com.contains("'LaunchPermission'") && com.contains("'ThreadingModel' 'Both'"),
        "{com}"
    );
    let clsid = function("Register-CcgPluginClsid");
    assert!(
        clsid.contains("Enable-TokenPrivilege 'SeTakeOwnershipPrivilege'")
            && clsid.contains("SetSecurityDescriptorSddlForm($original"),
        "{clsid}"
    );
    assert!(
        !capwin_payload::BOOTSTRAP_SOURCE.contains("regsvr32"),
        "the plugin is registered as Microsoft documents, not self-registered"
    );
}

#[test]
fn defect8_annual_channel_builds_are_accepted_and_others_named() {
    assert_eq!(
        params(&support::spec(CniFlavour::CalicoVxlan, WindowsServerVersion::Ws2022), Cloud::Azure)["windows"]["acceptedBuilds"],
        serde_json::json!([20348, 25398])
    );
    let f = function("Assert-WindowsBuild");
    assert!(f.contains("$accepted -notcontains $build") && f.contains("the image is Windows build {0}"), "{f}");
}

#[test]
fn the_vxlan_settings_are_gone() {
    // The VNI comes from the cluster's CNI configuration; Windows carries VXLAN on UDP 4789 only,
    // which the firewall rule opens.
    let s: WindowsKubeadmConfigSpec =
        serde_yaml_ng::from_str("windows:\n  cni:\n    flavour: flannel-vxlan\n    vxlan: {vni: 4097, port: 4789}\n")
            .unwrap();
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v["windows"]["cni"],
        serde_json::json!({"flavour": "flannel-vxlan"}),
        "an old object's vxlan is dropped"
    );
    let p = params(&s, Cloud::Azure);
    assert_eq!(p["cni"], serde_json::json!({"flavour": "flannel-vxlan"}));
    assert_eq!(p["firewallRules"][0]["port"], 4789);
    assert_eq!(params(&spec(CniFlavour::FlannelHostGw), Cloud::Azure)["firewallRules"], serde_json::json!([]));
}
