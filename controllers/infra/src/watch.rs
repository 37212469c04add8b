//! Which Machine changes wake a machine controller. CAPI rewrites Machine status all the time
//! (conditions, addresses, timestamps), and each reconcile of a running machine costs a cloud
//! read, so only what the controllers read triggers one (measured on AWS: one DescribeInstances
//! a second per machine without this).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

/// What the machine controllers read from a Machine.
pub fn machine_fingerprint(m: &DynamicObject) -> u64 {
    let spec = &m.data["spec"];
    let relevant = json!([
        m.metadata.uid,
        m.metadata.deletion_timestamp.is_some(),
        m.annotations().get("cluster.x-k8s.io/paused"),
        spec["clusterName"],
        spec["version"],
        spec["failureDomain"],
        spec["bootstrap"],
        spec["infrastructureRef"],
        m.data["status"]["nodeRef"],
    ]);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    relevant.to_string().hash(&mut h);
    h.finish()
}

/// The last fingerprint seen per Machine (by namespace/name).
#[derive(Clone, Default)]
pub struct MachineChanges(Arc<Mutex<HashMap<String, u64>>>);

impl MachineChanges {
    /// Whether `m` differs, in what the controllers read, from the last time it was seen.
    pub fn changed(&self, m: &DynamicObject) -> bool {
        let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
        let print = machine_fingerprint(m);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key, print) != Some(print)
    }
}

/// The mapper for `Controller::watches_with`: a Machine whose `infrastructureRef` is of `kind`
/// wakes that object, when it changed in what the controllers read.
pub fn machines_to<K: Resource<DynamicType = ()>>(
    kind: &'static str,
) -> impl Fn(DynamicObject) -> Option<ObjectRef<K>> + Send + Sync + Clone + 'static {
    let seen = MachineChanges::default();
    move |m: DynamicObject| {
        let r = &m.data["spec"]["infrastructureRef"];
        if r["kind"] != kind || !seen.changed(&m) {
            return None;
        }
        Some(ObjectRef::new(r["name"].as_str().unwrap_or_default()).within(&m.namespace().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn machine(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_relevant_machine_changes_trigger_a_reconcile() {
        let base = json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "metadata": {"name": "w-0", "namespace": "ns", "uid": "u1", "resourceVersion": "1"},
            "spec": {"clusterName": "c", "version": "v1.34.13", "bootstrap": {"configRef": {"name": "w-0"}},
                "infrastructureRef": {"kind": "AWSWindowsMachine", "name": "w-0"}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let seen = MachineChanges::default();
        assert!(seen.changed(&machine(base.clone())), "first sight");
        assert!(!seen.changed(&machine(base.clone())), "same object");

        // CAPI's status churn and a new resourceVersion: no reconcile.
        let mut churn = base.clone();
        churn["metadata"]["resourceVersion"] = json!("2");
        churn["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "now"}]);
        churn["status"]["addresses"] = json!([{"type": "InternalIP", "address": "10.0.0.7"}]);
        churn["status"]["lastUpdated"] = json!("2026-11-21T00:00:00Z");
        assert!(!seen.changed(&machine(churn.clone())));

        // Bootstrap data appears: reconcile; then the Node: reconcile; then deletion.
        let mut data = churn.clone();
        data["spec"]["bootstrap"]["dataSecretName"] = json!("w-0");
        assert!(seen.changed(&machine(data.clone())));
        assert!(!seen.changed(&machine(data.clone())));
        let mut node = data.clone();
        node["status"]["nodeRef"] = json!({"name": "ip-10-0-0-7.ec2.internal"});
        assert!(seen.changed(&machine(node.clone())));
        let mut deleting = node.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-21T00:00:00Z");
        assert!(seen.changed(&machine(deleting)));

        // Other machines are tracked apart; a recreated Machine (new UID) is new.
        let mut other = base.clone();
        other["metadata"]["name"] = json!("w-1");
        assert!(seen.changed(&machine(other)));
        let mut recreated = node.clone();
        recreated["metadata"]["uid"] = json!("u2");
        assert!(seen.changed(&machine(recreated)));
        for field in ["version", "failureDomain", "clusterName"] {
            let mut changed = node.clone();
            changed["spec"][field] = json!("other");
            assert_ne!(machine_fingerprint(&machine(changed)), machine_fingerprint(&machine(node.clone())), "{field}");
        }
    }

    #[test]
    fn the_mapper_maps_only_its_kind() {
        let map = machines_to::<capwin_api::aws::AWSWindowsMachine>("AWSWindowsMachine");
        let m = |kind: &str| {
            machine(json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
                "metadata": {"name": "w-0", "namespace": "ns", "uid": kind},
                "spec": {"infrastructureRef": {"kind": kind, "name": "infra-0"}}}))
        };
        let r = map(m("AWSWindowsMachine")).expect("its kind");
        assert_eq!((r.name.as_str(), r.namespace.as_deref()), ("infra-0", Some("ns")));
        assert!(map(m("AzureWindowsMachine")).is_none());
    }
}
