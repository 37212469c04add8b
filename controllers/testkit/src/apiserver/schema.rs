//! Structural-schema handling for custom resources, as the API server does on every write:
//! unknown fields are pruned, `default`s applied, then the object is validated. Errors carry
//! the field path, e.g. `spec.windows.cni.vxlan.vni`.
//!
//! Covered: `type`, `properties`, `required`, `items`, `additionalProperties`, `enum`,
//! `pattern`, `minimum`/`maximum` (and exclusive), `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `minProperties`/`maxProperties`, `nullable`, `default`,
//! `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
//! `x-kubernetes-embedded-resource`, `x-kubernetes-list-type` `set`/`map` uniqueness, and CEL
//! (`x-kubernetes-validations`, see [`validate_cel`]). Not covered: `format`,
//! `oneOf`/`anyOf`/`allOf`/`not`.

use serde_json::{Map, Value};

/// Prunes unknown fields and applies defaults in place.
pub fn prune_and_default(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool).unwrap_or(false);
            let embedded = schema.get("x-kubernetes-embedded-resource").and_then(Value::as_bool).unwrap_or(false);
            if let Some(props) = props {
                for (k, s) in props {
                    if !map.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                }
            }
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child = props.and_then(|p| p.get(&k)).or(additional);
                match child {
                    Some(s) => prune_and_default(map.get_mut(&k).expect("key exists"), s),
                    None => {
                        let keep = preserve
                            || schema.get("additionalProperties") == Some(&Value::Bool(true))
                            || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
                        if !keep {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    prune_and_default(item, s);
                }
            }
        }
        _ => {}
    }
}

/// Validates `value` against `schema`; returns `(field path, message)` per problem.
pub fn validate(value: &Value, schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if value.is_null() {
        if !schema.get("nullable").and_then(Value::as_bool).unwrap_or(false) && schema.get("type").is_some() {
            out.push((path.into(), "Invalid value: \"null\": field must not be null".into()));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool).unwrap_or(false);
    if int_or_string {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            out.push((path.into(), format!("Invalid value: {}: must be an integer or a string", short(value))));
        }
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            out.push((
                path.into(),
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type {t}: \"{}\"",
                    json_type(value),
                    json_type(value)
                ),
            ));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(value)
    {
        let allowed: Vec<String> = e.iter().map(|v| v.to_string()).collect();
        out.push((path.into(), format!("Unsupported value: {}: supported values: {}", value, allowed.join(", "))));
    }
    match value {
        Value::String(s) => {
            let n = s.chars().count() as f64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_f64)
                && n < min
            {
                out.push((
                    path.into(),
                    format!("Invalid value: {}: {path} in body should be at least {min} chars long", short(value)),
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_f64)
                && n > max
            {
                out.push((path.into(), format!("Too long: may not be more than {max} bytes")));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(s) => out.push((
                        path.into(),
                        format!("Invalid value: {}: {path} in body should match '{p}'", short(value)),
                    )),
                    _ => {}
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let excl_min = schema.get("exclusiveMinimum").and_then(Value::as_bool).unwrap_or(false);
            let excl_max = schema.get("exclusiveMaximum").and_then(Value::as_bool).unwrap_or(false);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && (x < min || (excl_min && x == min))
            {
                out.push((
                    path.into(),
                    format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}"),
                ));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && (x > max || (excl_max && x == max))
            {
                out.push((
                    path.into(),
                    format!("Invalid value: {n}: {path} in body should be less than or equal to {max}"),
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as f64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_f64)
                && n < min
            {
                out.push((path.into(), format!("Invalid value: {n}: {path} in body should have at least {min} items")));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_f64)
                && n > max
            {
                out.push((path.into(), format!("Too many: {n}: must have at most {max} items")));
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item, s, &format!("{path}[{i}]"), out);
                }
            }
            list_uniqueness(items, schema, path, out);
        }
        Value::Object(map) => {
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        out.push((join(path, r), "Required value".into()));
                    }
                }
            }
            let n = map.len() as f64;
            if schema.get("minProperties").and_then(Value::as_f64).is_some_and(|m| n < m) {
                out.push((path.into(), "Invalid value: too few properties".into()));
            }
            if schema.get("maxProperties").and_then(Value::as_f64).is_some_and(|m| n > m) {
                out.push((path.into(), "Too many: too many properties".into()));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                // A map entry is `path[key]`, a property `path.key`, as the API server writes them.
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    validate(v, s, &join(path, k), out);
                } else if let Some(s) = additional {
                    validate(v, s, &format!("{path}[{k}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: set` (items unique) and `map` (the `x-kubernetes-list-map-keys`
/// tuple unique), as the API server checks them: `Duplicate value: …` at the repeated item.
fn list_uniqueness(items: &[Value], schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    out.push((format!("{path}[{i}]"), format!("Duplicate value: {item}")));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| -> Map<String, Value> {
                keys.iter().filter_map(|k| item.get(*k).map(|v| (k.to_string(), v.clone()))).collect()
            };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|o| key_of(o) == key) {
                    out.push((format!("{path}[{i}]"), format!("Duplicate value: {}", Value::Object(key))));
                }
            }
        }
        _ => {}
    }
}

/// Evaluates the schema's CEL rules (`x-kubernetes-validations`) with kube-cel, a CEL
/// implementation with Kubernetes' extension libraries, as the API server does after the
/// structural checks; `old` (an update's previous object) enables transition rules. A rule that
/// is false, does not give a bool or fails to evaluate is a cause `Invalid value: "<type>":
/// <message>` at the rule's node (or its `fieldPath`), as kube-apiserver writes it. A rule
/// kube-cel cannot compile or evaluate (a macro or function it lacks) is skipped, as before CEL
/// support: capwin's own CRDs are checked to have none (`cel_rules_of_capwin_crds_compile`).
pub fn validate_cel(value: &Value, schema: &Value, old: Option<&Value>, out: &mut Vec<(String, String)>) {
    let Err(errors) = kube_cel::validate(schema, value, old) else { return };
    for e in errors.iter() {
        match e.kind {
            kube_cel::ErrorKind::ValidationFailure
            | kube_cel::ErrorKind::InvalidResult
            | kube_cel::ErrorKind::EvaluationError => {
                let at = lookup(value, &e.field_path).map_or("object", json_type);
                out.push((e.field_path.clone(), format!("Invalid value: \"{at}\": {}", e.message)));
            }
            _ => {}
        }
    }
}

/// The value at a `spec.a[1].b` path, if there is one.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for index in rest.split('[').filter(|i| !i.is_empty()) {
            cur = cur.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(cur)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 { format!("{}...", &s[..s.char_indices().nth(77).map(|(i, _)| i).unwrap_or(s.len())]) } else { s }
}

/// The schema of `metadata` is the API server's own: only a few checks matter to clients.
pub fn validate_metadata(obj: &Value, out: &mut Vec<(String, String)>) {
    let meta = &obj["metadata"];
    if let Some(name) = meta["name"].as_str()
        && !is_dns_subdomain(name)
    {
        out.push((
                "metadata.name".into(),
                format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
            ));
    }
    for key in ["labels", "annotations"] {
        if let Some(m) = meta.get(key)
            && !m.is_null()
            && !m.as_object().is_some_and(|m| m.values().all(Value::is_string))
        {
            out.push((format!("metadata.{key}"), "Invalid value: must be a map of strings".into()));
        }
    }
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// An empty object schema accepts anything (built-in kinds this server does not model).
pub fn schemaless() -> Value {
    Value::Object(Map::from_iter([("x-kubernetes-preserve-unknown-fields".to_string(), Value::Bool(true))]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
        "spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
            "port": {"x-kubernetes-int-or-string": true},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}
        }}}})
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let mut obj =
            json!({"spec": {"size": 3, "unknown": 1, "free": {"x": {"y": 1}}, "labels": {"a": "b"}, "port": "http"}});
        prune_and_default(&mut obj, &schema());
        assert_eq!(obj["spec"]["mode"], "a");
        assert!(obj["spec"].get("unknown").is_none(), "unknown fields are pruned");
        assert_eq!(obj["spec"]["free"]["x"]["y"], 1, "preserve-unknown-fields keeps them");
        let mut errs = Vec::new();
        validate(&obj, &schema(), "", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn reports_field_paths() {
        let obj = json!({"spec": {"size": 11, "mode": "c", "name": "ABCDEFG", "tags": ["a", "b", 3], "port": 1.5}});
        let mut errs = Vec::new();
        validate(&obj, &schema(), "", &mut errs);
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        for f in ["spec.size", "spec.mode", "spec.name", "spec.tags", "spec.tags[2]", "spec.port"] {
            assert!(fields.contains(&f), "{f} missing in {errs:?}");
        }
        let mut errs = Vec::new();
        validate(&json!({"spec": {}}), &schema(), "", &mut errs);
        assert_eq!(errs, vec![("spec.size".to_string(), "Required value".to_string())]);
    }

    #[test]
    fn list_types_and_map_entries() {
        let schema = json!({"type": "object", "properties": {
            "args": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[a-z]*$"}}
        }});
        let obj = json!({"args": [{"name": "a", "value": "1"}, {"name": "b"}, {"name": "a", "value": "2"}],
            "tags": ["x", "y", "x"], "labels": {"k": "UPPER"}});
        let mut errs = Vec::new();
        validate(&obj, &schema, "spec", &mut errs);
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.args[2]", "spec.labels[k]", "spec.tags[2]"], "{errs:?}");
        assert!(errs[0].1.starts_with("Duplicate value: {\"name\":\"a\"}"), "{errs:?}");
    }

    #[test]
    fn cel_rules_are_evaluated() {
        let schema = json!({"type": "object", "properties": {
            "file": {"type": "object", "properties": {"path": {"type": "string"}, "mode": {"type": "string"}},
                "x-kubernetes-validations": [
                    {"rule": "!self.path.matches('(?i)nul')", "message": "no devices", "fieldPath": ".path"},
                    {"rule": "has(self.mode)", "message": "mode is required"}
                ]},
            "weird": {"type": "object", "x-kubernetes-validations": [{"rule": "self.noSuchMacro(x, 1)"}]}
        }});
        let mut errs = Vec::new();
        validate_cel(&json!({"file": {"path": "C:\\NUL"}, "weird": {}}), &schema, None, &mut errs);
        assert_eq!(
            errs,
            [
                ("file.path".to_string(), "Invalid value: \"string\": no devices".to_string()),
                ("file".to_string(), "Invalid value: \"object\": mode is required".to_string())
            ]
        );
        let mut errs = Vec::new();
        validate_cel(&json!({"file": {"path": "C:\\x", "mode": "1"}}), &schema, None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }
}
