//! Every capwin CRD, as `capwin crds` prints it and `crds/` holds it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{aws, azure, bootstrap};

/// All CRDs in a stable order: bootstrap kinds first, then infrastructure kinds.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        bootstrap::WindowsKubeadmConfig::crd(),
        bootstrap::WindowsKubeadmConfigTemplate::crd(),
        azure::AzureWindowsMachine::crd(),
        azure::AzureWindowsMachineTemplate::crd(),
        aws::AWSWindowsMachine::crd(),
        aws::AWSWindowsMachineTemplate::crd(),
    ]
}

/// The file name under `crds/` for a CRD (`<group>_<plural>.yaml`, as controller-gen names them).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as YAML.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml_ng::to_string(crd).expect("a CRD always serialises")
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> String {
    all().iter().map(|c| format!("---\n{}", to_yaml(c))).collect()
}
