//! Every generated PowerShell script must parse with the tree-sitter PowerShell grammar, and use
//! nothing Windows PowerShell 5.1 lacks.

use tree_sitter::{Node, Parser};

/// Syntax errors as (line, column, kind), 1-based.
fn syntax_errors(src: &str) -> Vec<(usize, usize, String)> {
    let mut parser = Parser::new();
    parser.set_language(&tree_sitter_powershell::LANGUAGE.into()).unwrap();
    let tree = parser.parse(src, None).unwrap();
    let mut out = Vec::new();
    fn walk(n: Node<'_>, out: &mut Vec<(usize, usize, String)>) {
        if n.is_error() || n.is_missing() {
            let p = n.start_position();
            out.push((p.row + 1, p.column + 1, n.kind().to_string()));
            return;
        }
        let mut c = n.walk();
        for child in n.children(&mut c) {
            if child.has_error() || child.is_missing() {
                walk(child, out);
            }
        }
    }
    walk(tree.root_node(), &mut out);
    out
}

/// Windows PowerShell 5.1 rejects pipeline chains and the null operators of PowerShell 7; the
/// grammar accepts them, so look for them outside strings and comments.
fn ps7_only_constructs(src: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let code = strip_strings_and_comments(line);
        for op in ["&&", "||", "??", "?."] {
            if code.contains(op) {
                found.push((i + 1, op.to_string()));
            }
        }
    }
    found
}

fn strip_strings_and_comments(line: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' => break,
            None => out.push(c),
        }
    }
    out
}

#[test]
fn the_bootstrap_script_parses_cleanly() {
    let errors = syntax_errors(capwin_payload::BOOTSTRAP_SCRIPT);
    assert!(errors.is_empty(), "syntax errors in bootstrap.ps1: {errors:?}");
    let ps7 = ps7_only_constructs(capwin_payload::BOOTSTRAP_SCRIPT);
    assert!(ps7.is_empty(), "PowerShell 7-only operators in bootstrap.ps1: {ps7:?}");
}

#[test]
fn the_lint_catches_broken_scripts() {
    assert!(!syntax_errors("function f {\n  if ($x) {\n}\n").is_empty(), "unclosed brace");
    assert!(!syntax_errors("$h = @{ a = 1\n").is_empty(), "unterminated hashtable");
    assert!(!syntax_errors("$s = \"never closed\n").is_empty(), "unterminated string");
    assert!(!ps7_only_constructs("Get-Thing && Do-Other\n").is_empty(), "pipeline chain");
    assert!(ps7_only_constructs("$a = 'x && y' # || z\n").is_empty(), "inside strings and comments is fine");
}

#[test]
fn hyper_v_drop_in_is_built_by_the_script_not_spliced_from_input() {
    // The only TOML the script writes itself is static; user drop-ins arrive as files.
    assert!(capwin_payload::BOOTSTRAP_SCRIPT.contains("runhcs-wcow-hypervisor"));
    assert!(!capwin_payload::BOOTSTRAP_SCRIPT.contains("Invoke-Expression"), "no string evaluation of inputs");
}

/// The script runs under `Set-StrictMode`, where reading a property the parameters file lacks is
/// a terminating error: every `$P.a.b` it reads must exist in every rendered parameters file.
#[test]
fn every_parameter_the_script_reads_is_rendered() {
    use capwin_api::bootstrap::{CniFlavour, WindowsKubeadmConfigSpec};
    let script = capwin_payload::BOOTSTRAP_SCRIPT;
    let mut refs: Vec<Vec<String>> = Vec::new();
    for (i, _) in script.match_indices("$P.") {
        let path: String =
            script[i + 3..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_').collect();
        let parts: Vec<String> = path.trim_end_matches('.').split('.').map(String::from).collect();
        if !refs.contains(&parts) {
            refs.push(parts);
        }
    }
    assert!(refs.len() > 20, "found only {} parameter reads; the scan is broken", refs.len());
    for cni in CniFlavour::ALL {
        let mut spec = WindowsKubeadmConfigSpec::default();
        spec.windows.cni.flavour = cni;
        let token = capwin_payload::BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let cluster = capwin_payload::ClusterInputs {
            api_server_endpoint: "a.example.com:6443".into(),
            ca_cert_hashes: vec![format!("sha256:{}", "0".repeat(64))],
            kubernetes_version: "v1.34.0".into(),
            pod_cidrs: vec![],
            service_cidrs: vec![],
        };
        let secrets = Default::default();
        let input = capwin_payload::RenderInput {
            spec: &spec,
            secret_file_contents: &secrets,
            cluster: &cluster,
            token: &token,
            cloud: capwin_payload::Cloud::Azure,
        };
        let payload = capwin_payload::render(&input).unwrap();
        let doc = String::from_utf8(payload.bytes).unwrap();
        let marker = "bootstrap.json\"\n  content: |2-\n";
        let start = doc.find(marker).expect("parameters block") + marker.len();
        let json_line = doc[start..].lines().next().unwrap().trim();
        let params: serde_json::Value = serde_json::from_str(json_line).unwrap();
        for r in &refs {
            let mut v = &params;
            for (depth, key) in r.iter().enumerate() {
                // Members of an object that may be null are only read after a null check.
                if v.is_null() && depth > 0 {
                    break;
                }
                v = v.get(key).unwrap_or_else(|| panic!("$P.{} is read by the script but not rendered", r.join(".")));
            }
        }
    }
}

/// Each step has its own exit code in 10-99, and every step the script enters has one.
#[test]
fn exit_codes_name_the_step_and_never_ask_for_a_reboot() {
    let script = capwin_payload::BOOTSTRAP_SCRIPT;
    let table_start = script.find("$Steps = @{").unwrap();
    let table_end = table_start + script[table_start..].find("\n}").unwrap();
    let mut codes = std::collections::BTreeMap::new();
    for line in script[table_start..table_end].lines().skip(1) {
        let (name, code) = line.split_once('=').unwrap();
        let code: u32 = code.trim().parse().unwrap();
        assert!((10..=99).contains(&code), "{line}");
        assert!(codes.insert(code, name.trim().trim_matches('\'').to_string()).is_none(), "duplicate code {code}");
    }
    let names: Vec<&String> = codes.values().collect();
    for (i, _) in script.match_indices("Enter-Step '") {
        let name: String = script[i + 12..].chars().take_while(|c| *c != '\'').collect();
        assert!(names.contains(&&name), "step {name} has no exit code");
    }
    assert!(!script.contains("exit 100") && !script.contains("exit 1001"), "no reboot exit codes");
}
