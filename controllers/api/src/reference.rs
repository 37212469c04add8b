//! The configuration reference (`docs/reference.md`): every field of every capwin CRD, read from
//! the same generated `openAPIV3Schema` the API server enforces, so the document cannot say
//! something the schema does not. A test in `tests/reference.rs` fails when the file drifts.
//!
//! Per kind, one table row per field path (`spec.windows.cni.flavour`; array items as `[]`,
//! map values as `<key>`) with its type, whether its parent requires it, its default, the schema's
//! constraints (enum, pattern, ranges, lengths, item counts), its CEL rules
//! (`x-kubernetes-validations`) and its doc comment.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::crds;

/// How to regenerate the document, printed at its top.
pub const REGENERATE: &str = "CAPWIN_UPDATE_DOCS=1 cargo test -p capwin-api --test reference";

/// One row of a kind's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// `spec.windows.version`, `spec.files[].path`, `spec.additionalTags.<key>`.
    pub path: String,
    /// `string`, `integer (int32)`, `[]string`, `map[string]string`, `object`, ...
    pub type_: String,
    /// Listed in the parent object's `required`.
    pub required: bool,
    /// The schema default as compact JSON.
    pub default: Option<String>,
    /// Enum values, pattern, ranges, lengths, item counts, in that order.
    pub constraints: Vec<String>,
    /// CEL rules as `rule` — message.
    pub rules: Vec<String>,
    pub description: String,
}

/// Every field under a schema's `properties`, depth first, properties in name order.
pub fn fields(schema: &Value) -> Vec<Field> {
    let mut out = Vec::new();
    walk_properties(schema, "", &mut out);
    out
}

fn walk_properties(object: &Value, prefix: &str, out: &mut Vec<Field>) {
    let Some(props) = object["properties"].as_object() else { return };
    let required: Vec<&str> =
        object["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let mut names: Vec<&String> = props.keys().collect();
    names.sort();
    for name in names {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        walk_field(&props[name.as_str()], path, required.contains(&name.as_str()), out);
    }
}

fn walk_field(schema: &Value, path: String, required: bool, out: &mut Vec<Field>) {
    out.push(Field {
        path: path.clone(),
        type_: type_name(schema),
        required,
        default: schema.get("default").map(canonical_json),
        constraints: constraints(schema),
        rules: rules(schema),
        description: schema["description"].as_str().unwrap_or_default().to_string(),
    });
    walk_properties(schema, &path, out);
    let items = &schema["items"];
    if items.is_object() {
        // A list of scalars is fully described by its own row unless its items carry rules.
        if has_detail(items) {
            walk_field(items, format!("{path}[]"), false, out);
        }
    }
    let values = &schema["additionalProperties"];
    if values.is_object() && has_detail(values) && values["properties"].is_object() {
        walk_field(values, format!("{path}.<key>"), false, out);
    }
}

/// Compact JSON with object keys sorted: the same text whichever map type serde_json was built
/// with (another crate in the build may turn on its `preserve_order`).
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> =
                entries.iter().map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), canonical_json(v))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// Whether an array item or map value deserves its own rows: objects with fields, or scalars
/// with constraints the parent row cannot show.
fn has_detail(schema: &Value) -> bool {
    schema["properties"].is_object() || !constraints(schema).is_empty() || !rules(schema).is_empty()
}

/// The type as a reader thinks of it.
pub fn type_name(schema: &Value) -> String {
    if schema["x-kubernetes-int-or-string"] == true {
        return "int-or-string".into();
    }
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", type_name(&schema["items"])),
        Some("object") if schema["additionalProperties"].is_object() => {
            format!("map[string]{}", type_name(&schema["additionalProperties"]))
        }
        Some(t) => match schema["format"].as_str() {
            Some(f) => format!("{t} ({f})"),
            None => t.to_string(),
        },
        None if schema["x-kubernetes-preserve-unknown-fields"] == true => "any".into(),
        None => "any".into(),
    }
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

/// `lo–hi`, `≥ lo` or `≤ hi` from two optional bounds.
fn range(lo: Option<&Value>, hi: Option<&Value>, lo_exclusive: bool, hi_exclusive: bool) -> Option<String> {
    let lo_op = if lo_exclusive { ">" } else { "≥" };
    let hi_op = if hi_exclusive { "<" } else { "≤" };
    match (lo, hi) {
        (Some(l), Some(h)) if !lo_exclusive && !hi_exclusive => Some(format!("{}–{}", number(l), number(h))),
        (Some(l), Some(h)) => Some(format!("{lo_op} {}, {hi_op} {}", number(l), number(h))),
        (Some(l), None) => Some(format!("{lo_op} {}", number(l))),
        (None, Some(h)) => Some(format!("{hi_op} {}", number(h))),
        (None, None) => None,
    }
}

/// The schema's own constraints, one phrase each.
pub fn constraints(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(values) = schema["enum"].as_array() {
        // `null` is how a nullable enum admits "unset"; the Required column already says that.
        let shown: Vec<String> = values
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| format!("`{}`", v.as_str().map(String::from).unwrap_or_else(|| v.to_string())))
            .collect();
        out.push(format!("one of {}", shown.join(", ")));
    }
    if let Some(p) = schema["pattern"].as_str() {
        out.push(format!("pattern `{p}`"));
    }
    let flag = |k: &str| schema[k] == true;
    if let Some(r) =
        range(schema.get("minimum"), schema.get("maximum"), flag("exclusiveMinimum"), flag("exclusiveMaximum"))
    {
        out.push(format!("value {r}"));
    }
    if let Some(r) = range(schema.get("minLength"), schema.get("maxLength"), false, false) {
        out.push(format!("length {r}"));
    }
    if let Some(r) = range(schema.get("minItems"), schema.get("maxItems"), false, false) {
        out.push(format!("items {r}"));
    }
    if let Some(r) = range(schema.get("minProperties"), schema.get("maxProperties"), false, false) {
        out.push(format!("entries {r}"));
    }
    if flag("uniqueItems") {
        out.push("unique items".into());
    }
    if let Some(t) = schema["x-kubernetes-list-type"].as_str() {
        out.push(format!("list type `{t}`"));
    }
    out
}

/// CEL rules (`x-kubernetes-validations`) with their messages.
pub fn rules(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let rule = r["rule"].as_str().unwrap_or_default();
                    match r["message"].as_str() {
                        Some(m) => format!("CEL `{rule}`: {m}"),
                        None => format!("CEL `{rule}`"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Text safe inside one Markdown table cell: pipes escaped (GitHub needs that even inside code
/// spans), paragraphs kept as `<br>`, other line breaks joined.
pub fn cell(text: &str) -> String {
    let paragraphs: Vec<String> = text
        .trim()
        .split("\n\n")
        .map(|p| p.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect();
    paragraphs.join("<br>").replace('|', "\\|")
}

/// One table row.
pub fn row(f: &Field) -> String {
    let validation: Vec<String> = f.constraints.iter().chain(&f.rules).cloned().collect();
    format!(
        "| `{}` | {} | {} | {} | {} | {} |",
        cell(&f.path),
        cell(&f.type_),
        if f.required { "yes" } else { "" },
        f.default.as_deref().map(|d| cell(&format!("`{d}`"))).unwrap_or_default(),
        cell(&validation.join("; ")),
        cell(&f.description),
    )
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    serde_json::to_value(version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()))
        .expect("a schema always serialises")
}

/// Anchor GitHub gives a `## Kind` heading.
fn anchor(kind: &str) -> String {
    kind.to_lowercase()
}

/// The section of one kind.
pub fn kind_markdown(crd: &CustomResourceDefinition) -> String {
    let kind = &crd.spec.names.kind;
    let version = &crd.spec.versions[0].name;
    let schema = schema_of(crd);
    let mut out = format!("## {kind}\n\n");
    out.push_str(&format!("`apiVersion: {}/{version}`, `kind: {kind}`", crd.spec.group));
    if let Some(short) = crd.spec.names.short_names.as_ref().filter(|s| !s.is_empty()) {
        let names: Vec<String> = short.iter().map(|s| format!("`{s}`")).collect();
        out.push_str(&format!(" (short name {})", names.join(", ")));
    }
    out.push_str(&format!(", {}.\n\n", crd.spec.scope.to_lowercase()));
    if let Some(d) = schema["properties"]["spec"]["description"].as_str() {
        out.push_str(&format!("{}\n\n", d.trim()));
    }
    let rows = fields(&schema);
    let (spec, status): (Vec<&Field>, Vec<&Field>) = rows.iter().partition(|f| !f.path.starts_with("status"));
    for (title, part) in [("Spec", spec), ("Status (written by the controllers)", status)] {
        if part.is_empty() {
            continue;
        }
        out.push_str(&format!("### {kind} {title}\n\n"));
        out.push_str("| Field | Type | Required | Default | Validation | Description |\n");
        out.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for f in part {
            out.push_str(&row(f));
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The whole reference, for the CRDs of [`crds::all`].
pub fn reference_markdown() -> String {
    let all = crds::all();
    let mut out = String::from("# capwin configuration reference\n\n");
    out.push_str(&format!(
        "Generated from the CRD schemas (`capwin_api::reference`); do not edit by hand. After \
         changing a type: `{REGENERATE}`.\n\n"
    ));
    out.push_str(
        "Every field of every capwin kind. *Required* is relative to the enclosing object: a \
         required field of an optional object is needed only when that object is given. `[]` \
         stands for any item of a list, `<key>` for any key of a map. *Validation* is what the API \
         server enforces (schema constraints and CEL rules); the controllers check more and report \
         it as a condition reason.\n\n",
    );
    for crd in &all {
        let kind = &crd.spec.names.kind;
        out.push_str(&format!("- [{kind}](#{}) (`{}`)\n", anchor(kind), crd.spec.group));
    }
    out.push('\n');
    for crd in &all {
        out.push_str(&kind_markdown(crd));
    }
    // One trailing newline, as editors leave files.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_objects_arrays_and_maps_get_their_paths() {
        let s = json!({"properties": {"spec": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}}},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "zones": {"type": "object", "additionalProperties": {"type": "object", "properties": {"id": {"type": "string"}}}},
            "names": {"type": "array", "items": {"type": "string"}},
        }}}});
        let paths: Vec<(String, String, bool)> =
            fields(&s).into_iter().map(|f| (f.path, f.type_, f.required)).collect();
        let want = [
            ("spec", "object", false),
            ("spec.files", "[]object", true),
            ("spec.files[]", "object", false),
            ("spec.files[].path", "string", true),
            ("spec.names", "[]string", false),
            ("spec.tags", "map[string]string", false),
            ("spec.zones", "map[string]object", false),
            ("spec.zones.<key>", "object", false),
            ("spec.zones.<key>.id", "string", false),
        ];
        let want: Vec<(String, String, bool)> =
            want.iter().map(|(p, t, r)| (p.to_string(), t.to_string(), *r)).collect();
        assert_eq!(paths, want);
    }

    #[test]
    fn scalar_items_with_constraints_get_a_row() {
        let s =
            json!({"properties": {"cidrs": {"type": "array", "items": {"type": "string", "pattern": "^[0-9./]+$"}}}});
        let f = fields(&s);
        assert_eq!(f[1].path, "cidrs[]");
        assert_eq!(f[1].constraints, ["pattern `^[0-9./]+$`"]);
    }

    #[test]
    fn types_read_as_a_user_thinks_of_them() {
        assert_eq!(type_name(&json!({"type": "integer", "format": "int32"})), "integer (int32)");
        assert_eq!(type_name(&json!({"x-kubernetes-int-or-string": true})), "int-or-string");
        assert_eq!(
            type_name(&json!({"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": true}})),
            "map[string]int-or-string"
        );
        assert_eq!(
            type_name(&json!({"type": "array", "items": {"type": "array", "items": {"type": "string"}}})),
            "[][]string"
        );
        assert_eq!(type_name(&json!({"x-kubernetes-preserve-unknown-fields": true})), "any");
    }

    #[test]
    fn constraints_are_phrased_and_null_enum_members_hidden() {
        let s = json!({"enum": ["gp2", "gp3", null], "pattern": "^a$", "minimum": 4096.0, "maximum": 16777215.0,
            "minLength": 1, "maxLength": 64, "maxItems": 32, "x-kubernetes-list-type": "set"});
        assert_eq!(
            constraints(&s),
            [
                "one of `gp2`, `gp3`",
                "pattern `^a$`",
                "value 4096–16777215",
                "length 1–64",
                "items ≤ 32",
                "list type `set`"
            ]
        );
        assert_eq!(constraints(&json!({"minimum": 1, "exclusiveMaximum": true, "maximum": 2.5})), ["value ≥ 1, < 2.5"]);
        assert_eq!(constraints(&json!({"minItems": 1})), ["items ≥ 1"]);
        assert_eq!(constraints(&json!({"enum": [1, 2]})), ["one of `1`, `2`"]);
        assert!(constraints(&json!({"type": "string"})).is_empty());
    }

    #[test]
    fn cel_rules_carry_their_messages() {
        let s = json!({"x-kubernetes-validations": [{"rule": "has(self.a) != has(self.b)", "message": "one of a and b"}, {"rule": "self.x > 0"}]});
        assert_eq!(rules(&s), ["CEL `has(self.a) != has(self.b)`: one of a and b", "CEL `self.x > 0`"]);
    }

    #[test]
    fn defaults_are_compact_json_with_sorted_keys() {
        let mut m = serde_json::Map::new();
        m.insert("z".into(), json!(1));
        m.insert("a".into(), json!({"y": [true, null], "b": "q\""}));
        assert_eq!(canonical_json(&Value::Object(m)), r#"{"a":{"b":"q\"","y":[true,null]},"z":1}"#);
        assert_eq!(canonical_json(&json!("optional")), r#""optional""#);
    }

    #[test]
    fn cells_survive_pipes_and_line_breaks() {
        assert_eq!(cell("a\nb\n\nc | d\n"), "a b<br>c \\| d");
        assert_eq!(cell("  "), "");
    }

    #[test]
    fn a_row_has_six_cells_and_the_default_as_json() {
        let f = Field {
            path: "spec.x".into(),
            type_: "string".into(),
            required: true,
            default: Some("\"optional\"".into()),
            constraints: vec!["one of `a`, `b`".into()],
            rules: vec!["CEL `r`: m".into()],
            description: "Says why.".into(),
        };
        assert_eq!(row(&f), "| `spec.x` | string | yes | `\"optional\"` | one of `a`, `b`; CEL `r`: m | Says why. |");
    }

    #[test]
    fn the_reference_covers_every_kind_and_known_fields() {
        let doc = reference_markdown();
        for crd in crds::all() {
            assert!(doc.contains(&format!("\n## {}\n", crd.spec.names.kind)), "{}", crd.spec.names.kind);
        }
        assert!(doc.contains("| `spec.windows.version` | string |"));
        assert!(doc.contains("one of `2019`, `2022`, `2025`"));
        assert!(doc.contains("| `spec.windows.cni.flavour` |"));
        assert!(doc.contains("CEL `has(self.content) != has(self.contentFrom)`"));
        assert!(doc.contains("| `spec.template.spec.instanceType` |"));
        assert!(doc.contains("| `status.conditions[].type` |"));
        assert!(doc.ends_with(".\n") || doc.ends_with("|\n"));
        // Every table line has the same six cells (escaped pipes do not count).
        for line in doc.lines().filter(|l| l.starts_with('|')) {
            assert_eq!(line.replace("\\|", "").matches('|').count(), 7, "{line}");
        }
    }
}
