//! The table of hostile `WindowsKubeadmConfig`s in `test/hostile/windowskubeadmconfigs.yaml`,
//! shared by the admission test (in-memory API server with capwin's CRDs) and the `capwin render`
//! test (the controller's own checks), so both lines of defence see the same input.

use serde_json::{Value, json};

/// One bad input.
#[derive(Clone, Debug)]
pub struct HostileCase {
    pub name: String,
    /// The field the API server's 422 names.
    pub field: String,
    /// What `capwin render`'s error names (the controller's path for the same field).
    pub render: String,
    /// The whole spec: the valid one with the case's patch merged in.
    pub spec: Value,
}

/// The table's file.
pub fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test/hostile/windowskubeadmconfigs.yaml")
}

/// The valid spec and the hostile cases.
pub fn windows_kubeadm_configs() -> (Value, Vec<HostileCase>) {
    let text = std::fs::read_to_string(path()).expect("reading the hostile-input table");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("the hostile-input table is YAML");
    let valid = doc["valid"].clone();
    let cases = doc["cases"]
        .as_array()
        .expect("cases is a list")
        .iter()
        .map(|c| {
            let field = c["field"].as_str().expect("every case names its field").to_string();
            let mut spec = valid.clone();
            merge(&mut spec, &c["patch"]);
            HostileCase {
                name: c["name"].as_str().expect("every case has a name").to_string(),
                render: c["render"].as_str().map_or_else(|| field.clone(), String::from),
                field,
                spec,
            }
        })
        .collect();
    (valid, cases)
}

/// A `WindowsKubeadmConfig` object holding `spec`.
pub fn object(name: &str, spec: &Value) -> Value {
    json!({
        "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha1",
        "kind": "WindowsKubeadmConfig",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// RFC 7386 merge: objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
