//! The CRDs follow the CAPI v1beta2 contract, and `crds/` is exactly what the types generate
//! (`crds/<provider>/`: the CRD files and their kustomization.yaml).
//! After changing a type: `CAPWIN_UPDATE_CRDS=1 cargo test -p capwin-api --test crds`.

use std::path::{Path, PathBuf};

use capwin_api::crds;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds")
}

#[test]
fn crds_folder_matches_the_types() {
    let update = std::env::var_os("CAPWIN_UPDATE_CRDS").is_some();
    let mut want_files = Vec::new();
    for (name, text) in crds::files() {
        let path = crds_dir().join(&name);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "crds/{name} drifted from the Rust types; regenerate with CAPWIN_UPDATE_CRDS=1 or `capwin crds --out-dir crds`"
        );
        want_files.push(name);
    }
    let mut have = Vec::new();
    files_below(&crds_dir(), "", &mut have);
    have.sort();
    want_files.sort();
    assert_eq!(have, want_files, "crds/ holds files no type generates");
}

/// Every file below `dir`, as a path relative to it with `/` separators.
fn files_below(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().into_string().unwrap());
        if e.file_type().unwrap().is_dir() {
            files_below(&e.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

#[test]
fn one_folder_per_provider() {
    // config/bootstrap and config/infrastructure include these folders; each CRD sits in its group's.
    let kustomizations: Vec<String> =
        crds::files().into_iter().map(|(name, _)| name).filter(|n| n.ends_with("/kustomization.yaml")).collect();
    assert_eq!(kustomizations, ["bootstrap/kustomization.yaml", "infrastructure/kustomization.yaml"]);
    for crd in crds::all() {
        assert_eq!(crd.spec.group, format!("{}.cluster.x-k8s.io", crds::provider(&crd)));
        assert!(crds::kustomization(crds::provider(&crd)).contains(&format!("\n- {}\n", crds::file_name(&crd))));
    }
}

#[test]
fn names_are_what_capi_computes() {
    // CAPI and clusterctl compute `<flect plural of kind, lower-cased>.<group>`.
    let names: Vec<String> = crds::all().iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "windowskubeadmconfigs.bootstrap.cluster.x-k8s.io",
            "windowskubeadmconfigtemplates.bootstrap.cluster.x-k8s.io",
            "azurewindowsmachines.infrastructure.cluster.x-k8s.io",
            "azurewindowsmachinetemplates.infrastructure.cluster.x-k8s.io",
            "awswindowsmachines.infrastructure.cluster.x-k8s.io",
            "awswindowsmachinetemplates.infrastructure.cluster.x-k8s.io",
        ]
    );
    for c in crds::all() {
        assert_eq!(c.metadata.name.as_deref().unwrap(), format!("{}.{}", c.spec.names.plural, c.spec.group));
        assert_eq!(c.spec.names.plural, format!("{}s", c.spec.names.kind.to_lowercase()));
        assert_eq!(c.spec.scope, "Namespaced");
    }
}

#[test]
fn every_crd_carries_the_v1beta2_contract_label() {
    for c in crds::all() {
        let labels = c.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(capwin_api::CONTRACT_LABEL).map(String::as_str),
            Some("v1alpha1"),
            "{}",
            c.spec.names.kind
        );
        assert!(!labels.contains_key("cluster.x-k8s.io/v1beta1"), "v1beta1 contract fields are not maintained");
        let versions: Vec<&str> = c.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, ["v1alpha1"]);
    }
}

/// `clusterctl move` lists only the kinds of CRDs labelled `clusterctl.cluster.x-k8s.io`
/// (`getDiscoveryTypes`); clusterctl init adds it, other installs get it from `crds/`. No kind is
/// force-moved: every object is reached from its Cluster through owner references.
#[test]
fn every_crd_is_discovered_by_clusterctl_move() {
    for c in crds::all() {
        let labels = c.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("clusterctl.cluster.x-k8s.io").map(String::as_str), Some(""), "{}", c.spec.names.kind);
        assert!(!labels.contains_key("clusterctl.cluster.x-k8s.io/move"), "{}", c.spec.names.kind);
        assert!(!labels.contains_key("clusterctl.cluster.x-k8s.io/move-hierarchy"), "{}", c.spec.names.kind);
    }
}

fn schema(
    c: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    serde_json::to_value(c.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

#[test]
fn status_subresources_follow_the_contract() {
    for c in crds::all() {
        let kind = c.spec.names.kind.clone();
        let v = &c.spec.versions[0];
        let has_status_sub = v.subresources.as_ref().is_some_and(|s| s.status.is_some());
        let has_status_field = schema(&c)["properties"].get("status").is_some();
        match kind.as_str() {
            // The bootstrap template has nothing to report.
            "WindowsKubeadmConfigTemplate" => assert!(!has_status_sub && !has_status_field, "{kind}"),
            // Infra templates report capacity and nodeInfo for autoscaling from zero (contract I7).
            _ => assert!(has_status_sub && has_status_field, "{kind}"),
        }
        assert!(!v.additional_printer_columns.as_ref().unwrap().is_empty(), "{kind} has printer columns");
    }
}

#[test]
fn infra_machines_have_no_failure_domain_in_spec() {
    for c in crds::all().into_iter().filter(|c| c.spec.group.starts_with("infrastructure")) {
        let s = schema(&c);
        let spec = if c.spec.names.kind.ends_with("Template") {
            &s["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
        } else {
            &s["properties"]["spec"]
        };
        assert!(spec["properties"].is_object(), "{}", c.spec.names.kind);
        assert!(
            spec["properties"].get("failureDomain").is_none(),
            "{} must not define spec.failureDomain (CAPI would overwrite the Machine's)",
            c.spec.names.kind
        );
        if !c.spec.names.kind.ends_with("Template") {
            assert!(spec["properties"].get("providerID").is_some(), "spec.providerID");
            let status = &s["properties"]["status"]["properties"];
            assert!(status["initialization"]["properties"]["provisioned"].is_object());
            assert!(status["addresses"].is_object() && status["conditions"].is_object());
        }
    }
}

#[test]
fn bootstrap_config_status_has_the_contract_fields() {
    let c = &crds::all()[0];
    let status = &schema(c)["properties"]["status"]["properties"];
    assert_eq!(status["dataSecretName"]["type"], "string");
    assert_eq!(status["initialization"]["properties"]["dataSecretCreated"]["type"], "boolean");
    assert_eq!(
        status["conditions"]["items"]["required"],
        serde_json::json!(["lastTransitionTime", "reason", "status", "type"])
    );
}

#[test]
fn windows_settings_are_validated_by_the_schema() {
    let s = schema(&crds::all()[0]);
    let w = &s["properties"]["spec"]["properties"]["windows"]["properties"];
    assert_eq!(w["version"]["enum"], serde_json::json!(["2019", "2022", "2025"]));
    assert_eq!(
        w["cni"]["properties"]["flavour"]["enum"],
        serde_json::json!(["calico-vxlan", "flannel-vxlan", "flannel-host-gw", "none"])
    );
    // The VXLAN VNI and port live in the CNI addons (flannel net-conf.json, Calico Felix), not here.
    assert!(w["cni"]["properties"]["vxlan"].is_null());
    assert_eq!(w["kubeProxy"]["properties"]["mode"]["enum"], serde_json::json!(["daemonset", "none"]));
    let rules = serde_json::to_string(&s).unwrap();
    for rule in ["has(self.content) != has(self.contentFrom)", "self.source != 'Download' || has(self.download)"] {
        assert!(rules.contains(rule), "CEL rule {rule}");
    }
}
