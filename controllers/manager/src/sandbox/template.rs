//! The cluster templates the sandbox can apply, and clusterctl's variable substitution.
//!
//! clusterctl (through drone/envsubst) replaces `${NAME}` with the variable's value, and
//! `${NAME:=default}` / `${NAME:-default}` with the default when the variable is unset or empty
//! (`${NAME=default}` / `${NAME-default}`: only when unset). A `${NAME}` without a value and
//! without a default is an error naming every such variable. `$name` without braces (PowerShell's
//! `$env:X`, shell's `$host`) is left alone, as clusterctl leaves names it does not know.

use std::collections::BTreeMap;

/// The flavours of `templates/`, embedded so the sandbox needs no checkout at run time.
pub const TEMPLATES: [(&str, &str); 3] = [
    ("aws-windows-calico", include_str!("../../../../templates/cluster-template-aws-windows-calico.yaml")),
    ("azure-windows-calico", include_str!("../../../../templates/cluster-template-azure-windows-calico.yaml")),
    ("azure-windows-flannel", include_str!("../../../../templates/cluster-template-azure-windows-flannel.yaml")),
];

/// The flavour the sandbox applies without `--template`.
pub const DEFAULT_TEMPLATE: &str = "aws-windows-calico";

/// A flavour's text by name (`aws-windows-calico` or `cluster-template-aws-windows-calico.yaml`).
pub fn template(name: &str) -> anyhow::Result<&'static str> {
    let flavour = name.trim_start_matches("cluster-template-").trim_end_matches(".yaml");
    TEMPLATES.iter().find(|(n, _)| *n == flavour).map(|(_, t)| *t).ok_or_else(|| {
        let names: Vec<&str> = TEMPLATES.iter().map(|(n, _)| *n).collect();
        anyhow::anyhow!("no template {name:?}; the sandbox has {}", names.join(", "))
    })
}

/// What `clusterctl generate cluster` would be given for the sandbox, for every flavour (a
/// template ignores the variables it does not use). The Kubernetes version is one both kits
/// have a Windows Server 2025 image for: the AMI list (`test/kit/aws/amis.json`) and the fake
/// ARM's seed (`test/kit/azure/seed.json`: the community-gallery reference image
/// `capi-win-2025-containerd/1.35.10`), so capwin's image look-ups find one. The Azure values are
/// the seed's subscription and region, and a tenant and client ID the fake Entra ID accepts. No
/// Linux workers: nothing in the sandbox plays CAPA's `AWSMachine` or CAPZ's `AzureMachine`,
/// and the control plane is played by the CAPI-core simulator.
pub fn sandbox_variables() -> BTreeMap<String, String> {
    [
        ("CLUSTER_NAME", "demo"),
        ("NAMESPACE", "default"),
        ("KUBERNETES_VERSION", "v1.35.10"),
        ("CONTROL_PLANE_MACHINE_COUNT", "1"),
        ("WORKER_MACHINE_COUNT", "0"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_SSH_KEY_NAME", "capwin-sandbox"),
        ("AWS_CONTROL_PLANE_MACHINE_TYPE", "m6i.large"),
        ("AZURE_SUBSCRIPTION_ID", super::azure::SEED.subscription),
        ("AZURE_LOCATION", super::azure::SEED.location),
        ("AZURE_TENANT_ID", super::azure::TENANT),
        ("AZURE_CLIENT_ID_USER_ASSIGNED_IDENTITY", super::azure::IDENTITY_CLIENT_ID),
        ("AZURE_CONTROL_PLANE_MACHINE_TYPE", "Standard_D2s_v3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `NAME=VALUE` from the command line.
pub fn parse_assignment(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    if !is_name(name) {
        return Err(format!("{name:?} is not a variable name (letters, digits and _)"));
    }
    Ok((name.to_string(), value.to_string()))
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Variables a template needs but nobody set.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingVariables(pub Vec<String>);

impl std::fmt::Display for MissingVariables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // clusterctl's wording, with the sandbox's way to set one.
        write!(f, "value for variables [{}] is not set; set them with --var NAME=VALUE", self.0.join(", "))
    }
}

impl std::error::Error for MissingVariables {}

/// One `${…}` reference.
#[derive(Debug, PartialEq, Eq)]
struct Reference<'a> {
    name: &'a str,
    /// `:=`, `:-`, `=` or `-`, and the default after it.
    default: Option<(&'a str, &'a str)>,
    /// Bytes the reference spans, `${` to `}` inclusive.
    len: usize,
}

/// Parses a reference at the start of `s` (which begins with `${`).
fn reference(s: &str) -> Option<Reference<'_>> {
    let body = &s[2..];
    let name_len = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
    let name = &body[..name_len];
    if !is_name(name) {
        return None;
    }
    let rest = &body[name_len..];
    if rest.starts_with('}') {
        return Some(Reference { name, default: None, len: 2 + name_len + 1 });
    }
    let op = [":=", ":-", "=", "-"].into_iter().find(|op| rest.starts_with(op))?;
    let value_and_rest = &rest[op.len()..];
    let end = value_and_rest.find(['}', '$', '{'])?;
    if !value_and_rest[end..].starts_with('}') {
        return None;
    }
    let default = &value_and_rest[..end];
    Some(Reference { name, default: Some((op, default)), len: 2 + name_len + op.len() + end + 1 })
}

/// Substitutes every `${…}` reference; fails naming every variable without value or default.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, MissingVariables> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(r) = reference(tail) else {
            // Not a variable reference clusterctl would read: keep it as written.
            out.push_str("${");
            rest = &tail[2..];
            continue;
        };
        let value = vars.get(r.name);
        let replaced = match (value, r.default) {
            (Some(v), Some((op, d))) if op.starts_with(':') && v.is_empty() => d.to_string(),
            (Some(v), _) => v.clone(),
            (None, Some((_, d))) => d.to_string(),
            (None, None) => {
                if !missing.iter().any(|m| m == r.name) {
                    missing.push(r.name.to_string());
                }
                String::new()
            }
        };
        out.push_str(&replaced);
        rest = &tail[r.len..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        missing.sort();
        Err(MissingVariables(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn plain_references_take_the_value() {
        let v = vars(&[("CLUSTER_NAME", "demo"), ("NS", "x")]);
        assert_eq!(substitute("name: ${CLUSTER_NAME}-md-0 in ${NS}", &v).unwrap(), "name: demo-md-0 in x");
    }

    #[test]
    fn colon_defaults_apply_when_unset_or_empty() {
        let text = "replicas: ${COUNT:=2}, cni: ${CNI:-calico}";
        assert_eq!(substitute(text, &vars(&[])).unwrap(), "replicas: 2, cni: calico");
        assert_eq!(substitute(text, &vars(&[("COUNT", ""), ("CNI", "")])).unwrap(), "replicas: 2, cni: calico");
        assert_eq!(
            substitute(text, &vars(&[("COUNT", "5"), ("CNI", "flannel")])).unwrap(),
            "replicas: 5, cni: flannel"
        );
    }

    #[test]
    fn plain_defaults_apply_only_when_unset() {
        assert_eq!(substitute("${A=x}${B-y}", &vars(&[("A", "")])).unwrap(), "y");
        assert_eq!(substitute("${A=x}", &vars(&[])).unwrap(), "x");
    }

    #[test]
    fn empty_defaults_are_defaults() {
        assert_eq!(substitute("[${A:=}]", &vars(&[])).unwrap(), "[]");
    }

    #[test]
    fn every_unset_variable_is_named_once_and_sorted() {
        let err = substitute("${B} ${A} ${B} ${C:=ok}", &vars(&[])).unwrap_err();
        assert_eq!(err, MissingVariables(vec!["A".into(), "B".into()]));
        assert_eq!(err.to_string(), "value for variables [A, B] is not set; set them with --var NAME=VALUE");
    }

    #[test]
    fn what_is_not_a_reference_stays() {
        let v = vars(&[("host", "NO")]);
        let text = "$env:CONTAINER_SANDBOX_MOUNT_POINT $host $(printf x) ${} ${1X} ${A B} ${A:=a$b} ${ unterminated";
        assert_eq!(substitute(text, &v).unwrap(), text);
    }

    #[test]
    fn a_value_is_not_substituted_again() {
        assert_eq!(substitute("${A}", &vars(&[("A", "${B}")])).unwrap(), "${B}");
    }

    #[test]
    fn assignments_parse() {
        assert_eq!(parse_assignment("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert_eq!(parse_assignment("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_assignment("A").is_err());
        assert!(parse_assignment("1A=x").is_err());
        assert!(parse_assignment("=x").is_err());
    }

    #[test]
    fn templates_are_found_by_flavour_or_file_name() {
        assert!(template("aws-windows-calico").unwrap().contains("kind: AWSCluster"));
        assert!(template("cluster-template-azure-windows-flannel.yaml").unwrap().contains("kind: AzureCluster"));
        let err = template("gcp").unwrap_err().to_string();
        assert!(err.contains("aws-windows-calico, azure-windows-calico, azure-windows-flannel"), "{err}");
    }

    #[test]
    fn the_sandbox_variables_complete_every_template() {
        for (flavour, _) in TEMPLATES {
            let text = substitute(template(flavour).unwrap(), &sandbox_variables()).unwrap();
            assert!(!text.contains("${"), "{flavour}: a reference is left");
            assert!(text.contains("name: demo-md-win\n"), "{flavour}");
            assert!(text.contains("replicas: 2\n"), "{flavour}: the template's Windows worker default");
            assert!(text.contains("version: v1.35.10\n"), "{flavour}");
            // Every document still parses.
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let _: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            }
        }
        let azure = substitute(template("azure-windows-calico").unwrap(), &sandbox_variables()).unwrap();
        assert!(azure.contains("subscriptionID: 11111111-2222-3333-4444-555555555555\n"));
        assert!(azure.contains("location: westeurope\n"));
    }

    #[test]
    fn without_the_sandbox_variables_the_template_names_what_is_missing() {
        let err = substitute(template(DEFAULT_TEMPLATE).unwrap(), &BTreeMap::new()).unwrap_err();
        for v in ["AWS_REGION", "CLUSTER_NAME", "KUBERNETES_VERSION", "NAMESPACE", "WORKER_MACHINE_COUNT"] {
            assert!(err.0.contains(&v.to_string()), "{v}");
        }
        assert!(!err.0.contains(&"CAPWIN_WINDOWS_WORKER_MACHINE_COUNT".to_string()), "has a default");
    }
}
