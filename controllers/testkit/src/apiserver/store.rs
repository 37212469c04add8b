//! Objects, resource versions, the event history watches resume from, and the write rules:
//! status-subresource separation, generation, no-op writes, optimistic concurrency,
//! finalizers, owner-reference garbage collection and namespace deletion.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use base64::Engine;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::clock::now_rfc3339;
use super::errors::{ApiError, ApiResult};
use super::patch;
use super::schema;
use super::selector::{FieldSelector, LabelSelector, labels_of};
use super::types::{ResourceType, builtins};

type TypeKey = (String, String);
type ObjKey = (String, String);

/// A change, as watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
    /// The object before a modification (to turn selector transitions into ADDED/DELETED).
    pub previous: Option<Value>,
}

/// How a delete treats dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// Patch flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// The whole server state, behind one lock.
pub struct Store {
    types: BTreeMap<TypeKey, ResourceType>,
    objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Value>>,
    /// Server-side apply: (type, object) -> manager -> applied leaf paths and values.
    applied: BTreeMap<(TypeKey, ObjKey), BTreeMap<String, Value>>,
    rv: u64,
    uid_seq: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Lowest resource version a watch can still resume from.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(16_384);
        let mut s = Self {
            types: BTreeMap::new(),
            objects: BTreeMap::new(),
            applied: BTreeMap::new(),
            rv: 0,
            uid_seq: 0,
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            tx,
        };
        for t in builtins() {
            s.types.insert(t.key(), t);
        }
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let t = s.types[&(String::new(), "namespaces".to_string())].clone();
            s.create(&t, "v1", "", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}), false)
                .expect("the initial namespaces are valid");
        }
        s
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn types(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .filter(|t| t.versions.iter().any(|v| v == version))
            .cloned()
    }

    /// Registers a CRD's type (used by the loader and by CRD creation).
    pub fn register_crd(&mut self, crd: &Value) -> ApiResult<()> {
        let t = ResourceType::from_crd(crd)?;
        self.types.insert(t.key(), t);
        Ok(())
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn new_uid(&mut self) -> String {
        self.uid_seq += 1;
        let pid = std::process::id() as u64;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            pid & 0xffff_ffff,
            (pid >> 32) & 0xffff,
            0,
            self.uid_seq >> 48,
            self.uid_seq
        )
    }

    fn emit(&mut self, t: &ResourceType, ns: &str, kind: &'static str, object: Value, previous: Option<Value>) {
        let ev = Arc::new(Event {
            rv: self.rv,
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: ns.to_string(),
            kind,
            object,
            previous,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Events after `rv` for a watch that resumes, or 410 Gone when they were compacted away.
    pub fn events_since(&self, rv: u64) -> ApiResult<Vec<Arc<Event>>> {
        if rv < self.compacted {
            return Err(ApiError::gone(format!("too old resource version: {rv} ({})", self.compacted + 1)));
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// Drops history up to the current version (tests use it to provoke 410 Gone).
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn view(t: &ResourceType, version: &str, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = Value::String(t.api_version(version));
        o["kind"] = Value::String(t.kind.clone());
        o
    }

    pub fn get(&self, t: &ResourceType, version: &str, ns: &str, name: &str) -> ApiResult<Value> {
        self.objects
            .get(&t.key())
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .map(|o| Self::view(t, version, o))
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))
    }

    /// Objects matching the selectors; `ns == None` lists across namespaces.
    pub fn list(
        &self,
        t: &ResourceType,
        version: &str,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .get(&t.key())
            .map(|m| {
                m.iter()
                    .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
                    .map(|(_, o)| o)
                    .filter(|o| labels.matches(&labels_of(o)) && fields.matches(o))
                    .map(|o| Self::view(t, version, o))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn namespace_state(&self, ns: &str) -> Option<&Value> {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))
            .and_then(|m| m.get(&(String::new(), ns.to_string())))
    }

    /// Prunes, defaults and validates a custom resource; 422 with every bad field. `old` is the
    /// stored object of an update (CEL transition rules see it as `oldSelf`).
    fn admit(
        &self,
        t: &ResourceType,
        version: &str,
        obj: &mut Value,
        name: &str,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        let mut causes = Vec::new();
        schema::validate_metadata(obj, &mut causes);
        if t.custom
            && let Some(s) = t.schema(version)
        {
            let meta = obj.get("metadata").cloned();
            schema::prune_and_default(obj, s);
            if let Some(m) = meta {
                obj["metadata"] = m;
            }
            obj["apiVersion"] = Value::String(t.api_version(version));
            obj["kind"] = Value::String(t.kind.clone());
            let strip = |o: &Value| {
                let mut body = o.clone();
                if let Some(m) = body.as_object_mut() {
                    m.remove("metadata");
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                body
            };
            let body = strip(obj);
            let mut s2 = s.clone();
            if let Some(props) = s2.get_mut("properties").and_then(Value::as_object_mut) {
                props.remove("metadata");
                props.remove("apiVersion");
                props.remove("kind");
            }
            schema::validate(&body, &s2, "", &mut causes);
            schema::validate_cel(&body, &s2, old.map(strip).as_ref(), &mut causes);
        }
        if t.group.is_empty() && t.plural == "secrets" {
            secret_admission(obj, &mut causes);
        }
        if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(&t.kind, &t.group, name, causes)) }
    }

    pub fn create(
        &mut self,
        t: &ResourceType,
        version: &str,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> ApiResult<Value> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be an object"));
        }
        if obj["kind"].as_str().is_some_and(|k| k != t.kind) {
            return Err(ApiError::bad_request(format!("the body kind {} does not match {}", obj["kind"], t.kind)));
        }
        let meta = obj.get_mut("metadata").and_then(Value::as_object_mut).map(std::mem::take).unwrap_or_default();
        let mut meta: Map<String, Value> = meta;
        if t.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            match self.namespace_state(ns) {
                None => return Err(ApiError::not_found("", "namespaces", ns)),
                Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!("unable to create new content in namespace {ns} because it is being terminated"),
                    ));
                }
                _ => {}
            }
            meta.insert("namespace".into(), Value::String(ns.into()));
        } else {
            meta.remove("namespace");
        }
        let name = match (meta.get("name").and_then(Value::as_str), meta.get("generateName").and_then(Value::as_str)) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => format!("{g}{}", self.random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    &t.kind,
                    &t.group,
                    "",
                    vec![("metadata.name".into(), "Required value: name or generateName is required".into())],
                ));
            }
        };
        if self.objects.get(&t.key()).is_some_and(|m| m.contains_key(&(ns.to_string(), name.clone()))) {
            return Err(ApiError::already_exists(&t.group, &t.plural, &name));
        }
        meta.insert("name".into(), Value::String(name.clone()));
        for k in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "selfLink"] {
            meta.remove(k);
        }
        let uid = self.new_uid();
        meta.insert("uid".into(), Value::String(uid));
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        if t.custom {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        obj["metadata"] = Value::Object(meta);
        if t.custom
            && t.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.admit(t, version, &mut obj, &name, None)?;
        if t.group.is_empty() && t.plural == "namespaces" {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        if t.group == "apiextensions.k8s.io" {
            ResourceType::from_crd(&obj)?;
            obj["status"] = json!({"conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now_rfc3339()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now_rfc3339()}
            ], "acceptedNames": obj["spec"]["names"].clone(), "storedVersions": []});
        }
        obj["apiVersion"] = Value::String(t.api_version(version));
        obj["kind"] = Value::String(t.kind.clone());
        if dry_run {
            return Ok(obj);
        }
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        if t.group == "apiextensions.k8s.io" {
            self.register_crd(&obj)?;
        }
        let stored = Self::view(t, &t.versions[0], &obj);
        self.objects.entry(t.key()).or_default().insert((ns.to_string(), name), stored.clone());
        self.emit(t, ns, "ADDED", stored, None);
        Ok(Self::view(t, version, &obj))
    }

    fn random_suffix(&mut self) -> String {
        // Deterministic per server, distinct per call: enough for generateName.
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.uid_seq += 1;
        let mut x = self.uid_seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (std::process::id() as u64);
        (0..5)
            .map(|_| {
                let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
                x /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    /// Replace (PUT) of the object or its status.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        t: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        new: Value,
        status: bool,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let old = self.get(t, &t.versions[0], ns, name)?;
        let current = old["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        match new["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() && rv != current => {
                return Err(ApiError::conflict(
                    &t.group,
                    &t.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            None | Some("") if t.custom => {
                return Err(ApiError::invalid(
                    &t.kind,
                    &t.group,
                    name,
                    vec![(
                        "metadata.resourceVersion".into(),
                        "Invalid value: 0x0: must be specified for an update".into(),
                    )],
                ));
            }
            _ => {}
        }
        if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
        }
        self.write(t, version, ns, name, old, new, status, dry_run)
    }

    /// PATCH of the object or its status.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        t: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        status: bool,
        manager: Option<&str>,
        force: bool,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let existing = self.get(t, &t.versions[0], ns, name);
        if kind == PatchKind::Apply {
            let manager = manager
                .ok_or_else(|| ApiError::bad_request("PATCH requests with apply content type need fieldManager"))?;
            return match existing {
                Err(e) if e.code == 404 => {
                    let mut obj = body.clone();
                    obj["metadata"]["name"] = Value::String(name.into());
                    let created = self.create(t, version, ns, obj, dry_run)?;
                    if !dry_run {
                        self.remember_apply(t, ns, name, manager, body);
                    }
                    Ok(created)
                }
                Err(e) => Err(e),
                Ok(old) => {
                    let new = self.apply(t, ns, name, &old, body, manager, force)?;
                    let out = self.write(t, version, ns, name, old, new, status, dry_run)?;
                    if !dry_run {
                        self.remember_apply(t, ns, name, manager, body);
                    }
                    Ok(out)
                }
            };
        }
        let old = existing?;
        if kind == PatchKind::Strategic && t.custom {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let mut new = old.clone();
        match kind {
            PatchKind::Json => patch::json_patch(&mut new, body)?,
            _ => patch::merge_patch(&mut new, body),
        }
        if new["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
            return Err(ApiError::conflict(
                &t.group,
                &t.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.write(t, version, ns, name, old, new, status, dry_run)
    }

    fn remember_apply(&mut self, t: &ResourceType, ns: &str, name: &str, manager: &str, body: &Value) {
        let mut cfg = body.clone();
        strip_for_apply(&mut cfg);
        self.applied.entry((t.key(), (ns.to_string(), name.to_string()))).or_default().insert(manager.to_string(), cfg);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        t: &ResourceType,
        ns: &str,
        name: &str,
        old: &Value,
        body: &Value,
        manager: &str,
        force: bool,
    ) -> ApiResult<Value> {
        let mut cfg = body.clone();
        strip_for_apply(&mut cfg);
        let mut now = BTreeSet::new();
        patch::leaf_paths(&cfg, "", &mut now);
        let managers = self.applied.get(&(t.key(), (ns.to_string(), name.to_string()))).cloned().unwrap_or_default();
        let mut conflicts = Vec::new();
        for (other, their_cfg) in managers.iter().filter(|(m, _)| *m != manager) {
            let mut theirs = BTreeSet::new();
            patch::leaf_paths(their_cfg, "", &mut theirs);
            for p in now.intersection(&theirs) {
                if patch::at(&cfg, p) != patch::at(their_cfg, p) {
                    conflicts.push(format!("conflict with \"{other}\": {p}"));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(ApiError::conflict(
                &t.group,
                &t.plural,
                name,
                &format!("Apply failed with {} conflicts: {}", conflicts.len(), conflicts.join(", ")),
            ));
        }
        let mut new = old.clone();
        if let Some(prev) = managers.get(manager) {
            let mut before = BTreeSet::new();
            patch::leaf_paths(prev, "", &mut before);
            let others: BTreeSet<String> = managers
                .iter()
                .filter(|(m, _)| *m != manager)
                .flat_map(|(_, c)| {
                    let mut s = BTreeSet::new();
                    patch::leaf_paths(c, "", &mut s);
                    s
                })
                .collect();
            for gone in before.difference(&now).filter(|p| !others.contains(*p)) {
                patch::remove_leaf(&mut new, gone);
            }
        }
        patch::apply_merge(&mut new, &cfg);
        Ok(new)
    }

    /// The common write path of update and patch.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        t: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
        status: bool,
        dry_run: bool,
    ) -> ApiResult<Value> {
        if !new.is_object() {
            return Err(ApiError::bad_request("the body must be an object"));
        }
        if status {
            // The status subresource changes status only.
            let st = new.get("status").cloned();
            new = old.clone();
            match st {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        } else if t.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        }
        // Fields the server owns.
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for k in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    new["metadata"].as_object_mut().expect("object").remove(k);
                }
            }
        }
        let deleting = !old["metadata"]["deletionTimestamp"].is_null();
        if deleting {
            let before: BTreeSet<&str> = finalizers(&old).into_iter().collect();
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &t.kind,
                    &t.group,
                    name,
                    vec![(
                        "metadata.finalizers".into(),
                        "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                    )],
                ));
            }
        }
        if t.group.is_empty() && t.plural == "secrets" && old["immutable"] == true {
            let strip = |v: &Value| json!([v["data"], v["type"]]);
            if strip(&old) != strip(&new) || new.get("stringData").is_some() {
                return Err(ApiError::invalid(
                    &t.kind,
                    "",
                    name,
                    vec![("data".into(), "Forbidden: field is immutable when `immutable` is set".into())],
                ));
            }
        }
        self.admit(t, version, &mut new, name, Some(&old))?;
        new["apiVersion"] = Value::String(t.api_version(&t.versions[0]));
        new["kind"] = Value::String(t.kind.clone());
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return Ok(Self::view(t, version, &old));
        }
        if t.custom && body_without_meta(&new) != body_without_meta(&old) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if dry_run {
            return Ok(Self::view(t, version, &new));
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        if deleting && finalizers(&new).is_empty() {
            self.remove(t, ns, name, new.clone(), Propagation::Background);
            return Ok(Self::view(t, version, &new));
        }
        self.objects.entry(t.key()).or_default().insert((ns.to_string(), name.to_string()), new.clone());
        self.emit(t, ns, "MODIFIED", new.clone(), Some(old));
        Ok(Self::view(t, version, &new))
    }

    /// DELETE: marks for deletion while finalizers remain, otherwise removes and collects
    /// dependents.
    #[allow(clippy::too_many_arguments)]
    pub fn delete(
        &mut self,
        t: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        propagation: Propagation,
        preconditions: &Value,
        dry_run: bool,
    ) -> ApiResult<Value> {
        let old = self.get(t, &t.versions[0], ns, name)?;
        if let Some(uid) = preconditions["uid"].as_str()
            && old["metadata"]["uid"] != uid
        {
            return Err(ApiError::conflict(
                &t.group,
                &t.plural,
                name,
                "Precondition failed: UID in precondition does not match the object",
            ));
        }
        if let Some(rv) = preconditions["resourceVersion"].as_str()
            && old["metadata"]["resourceVersion"] != rv
        {
            return Err(ApiError::conflict(
                &t.group,
                &t.plural,
                name,
                "Precondition failed: resourceVersion does not match the object",
            ));
        }
        if dry_run {
            return Ok(Self::view(t, version, &old));
        }
        let is_namespace = t.group.is_empty() && t.plural == "namespaces";
        if !finalizers(&old).is_empty() || is_namespace {
            let mut new = old.clone();
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = Value::String(now_rfc3339());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if is_namespace {
                    new["status"]["phase"] = json!("Terminating");
                }
                let rv = self.next_rv();
                new["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                self.objects.entry(t.key()).or_default().insert((ns.to_string(), name.to_string()), new.clone());
                self.emit(t, ns, "MODIFIED", new.clone(), Some(old));
            }
            if is_namespace {
                self.empty_namespace(name);
                self.finish_namespace(name);
            } else if propagation == Propagation::Foreground {
                // Foreground: dependents go first, while the owner waits for its finalizers.
                // Background dependents go only once the owner is really gone (in `remove`).
                let uid = new["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                self.collect_dependents(&uid, propagation);
            }
            return Ok(Self::view(t, version, &self.get(t, &t.versions[0], ns, name).unwrap_or(new)));
        }
        let mut last = old.clone();
        let rv = self.next_rv();
        last["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.remove(t, ns, name, last.clone(), propagation);
        Ok(Self::view(t, version, &last))
    }

    /// Removes an object for good and collects what depended on it.
    fn remove(&mut self, t: &ResourceType, ns: &str, name: &str, last: Value, propagation: Propagation) {
        if let Some(m) = self.objects.get_mut(&t.key()) {
            m.remove(&(ns.to_string(), name.to_string()));
        }
        self.applied.remove(&(t.key(), (ns.to_string(), name.to_string())));
        self.emit(t, ns, "DELETED", last.clone(), None);
        if t.group == "apiextensions.k8s.io" {
            let crd = ResourceType::from_crd(&last);
            if let Ok(ct) = crd {
                let all: Vec<(ObjKey, Value)> =
                    self.objects.remove(&ct.key()).map(|m| m.into_iter().collect()).unwrap_or_default();
                for ((ons, _), o) in all {
                    self.rv += 1;
                    let mut o = o;
                    o["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
                    self.emit(&ct, &ons, "DELETED", o, None);
                }
                self.types.remove(&ct.key());
            }
        }
        let uid = last["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        match propagation {
            Propagation::Orphan => self.orphan_dependents(&uid),
            p => self.collect_dependents(&uid, p),
        }
        if !ns.is_empty() {
            self.finish_namespace(ns);
        }
    }

    fn dependents(&self, uid: &str) -> Vec<(ResourceType, String, String)> {
        let mut out = Vec::new();
        for (key, objs) in &self.objects {
            for ((ns, name), o) in objs {
                let owned = o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
                if owned {
                    out.push((self.types[key].clone(), ns.clone(), name.clone()));
                }
            }
        }
        out
    }

    fn collect_dependents(&mut self, uid: &str, propagation: Propagation) {
        for (t, ns, name) in self.dependents(uid) {
            let _ = self.delete(&t, &t.versions[0].clone(), &ns, &name, propagation, &Value::Null, false);
        }
    }

    fn orphan_dependents(&mut self, uid: &str) {
        for (t, ns, name) in self.dependents(uid) {
            if let Ok(old) = self.get(&t, &t.versions[0], &ns, &name) {
                let mut new = old.clone();
                if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != uid);
                }
                let v = t.versions[0].clone();
                let _ = self.write(&t, &v, &ns, &name, old, new, false, false);
            }
        }
    }

    fn empty_namespace(&mut self, ns: &str) {
        let victims: Vec<(ResourceType, String)> = self
            .objects
            .iter()
            .flat_map(|(k, m)| {
                let t = self.types[k].clone();
                m.keys().filter(|(ons, _)| ons == ns).map(move |(_, n)| (t.clone(), n.clone())).collect::<Vec<_>>()
            })
            .collect();
        for (t, name) in victims {
            let v = t.versions[0].clone();
            let _ = self.delete(&t, &v, ns, &name, Propagation::Background, &Value::Null, false);
        }
    }

    /// A terminating namespace goes once nothing is left in it.
    fn finish_namespace(&mut self, ns: &str) {
        let Some(n) = self.namespace_state(ns).cloned() else { return };
        if n["metadata"]["deletionTimestamp"].is_null() {
            return;
        }
        let left = self.objects.iter().any(|(_, m)| m.keys().any(|(ons, _)| ons == ns));
        if !left {
            let t = self.types[&(String::new(), "namespaces".to_string())].clone();
            if let Some(m) = self.objects.get_mut(&t.key()) {
                m.remove(&(String::new(), ns.to_string()));
            }
            let mut last = n;
            let rv = self.next_rv();
            last["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            self.emit(&t, "", "DELETED", last, None);
        }
    }
}

fn finalizers(o: &Value) -> Vec<&str> {
    o["metadata"]["finalizers"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn body_without_meta(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

/// What an apply configuration owns: not identity fields.
fn strip_for_apply(cfg: &mut Value) {
    if let Some(m) = cfg.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        m.remove("status");
    }
    if let Some(meta) = cfg.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"] {
            meta.remove(k);
        }
        if meta.is_empty() {
            cfg.as_object_mut().expect("object").remove("metadata");
        }
    }
}

/// Secrets: `stringData` merges into `data`, and every `data` value must be base64.
fn secret_admission(obj: &mut Value, causes: &mut Vec<(String, String)>) {
    if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
        && let Some(sd) = sd.as_object()
    {
        for (k, v) in sd {
            let enc = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
            obj["data"][k] = Value::String(enc);
        }
    }
    if let Some(data) = obj["data"].as_object() {
        for (k, v) in data {
            let ok = v.as_str().is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !ok {
                causes.push((format!("data[{k}]"), "Invalid value: must be base64 encoded".into()));
            }
        }
    }
    if obj["type"].is_null() {
        obj["type"] = json!("Opaque");
    }
}
