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
    let mut here_string = false;
    for (i, line) in src.lines().enumerate() {
        // Here-string bodies are data (the script embeds C# for Add-Type there).
        if here_string {
            here_string = !(line.starts_with("'@") || line.starts_with("\"@"));
            continue;
        }
        here_string = line.trim_end().ends_with("@'") || line.trim_end().ends_with("@\"");
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
    let variants = capwin_payload::script::Features::combinations();
    for (what, script) in std::iter::once(("source".to_string(), capwin_payload::BOOTSTRAP_SOURCE))
        .chain(variants.into_iter().map(|f| (format!("shipped {f:?}"), capwin_payload::script::shipped(f))))
    {
        let errors = syntax_errors(script);
        assert!(errors.is_empty(), "syntax errors in bootstrap.ps1 ({what}): {errors:?}");
        let ps7 = ps7_only_constructs(script);
        assert!(ps7.is_empty(), "PowerShell 7-only operators in bootstrap.ps1 ({what}): {ps7:?}");
    }
}

#[test]
fn the_lint_catches_broken_scripts() {
    assert!(!syntax_errors("function f {\n  if ($x) {\n}\n").is_empty(), "unclosed brace");
    assert!(!syntax_errors("$h = @{ a = 1\n").is_empty(), "unterminated hashtable");
    assert!(!syntax_errors("$s = \"never closed\n").is_empty(), "unterminated string");
    assert!(!ps7_only_constructs("Get-Thing && Do-Other\n").is_empty(), "pipeline chain");
    assert!(ps7_only_constructs("$a = 'x && y' # || z\n").is_empty(), "inside strings and comments is fine");
    assert!(ps7_only_constructs("$t = @'\nif (a && b) {}\n'@\n").is_empty(), "inside here-strings is fine");
    assert!(!ps7_only_constructs("$t = @'\nx\n'@\na && b\n").is_empty(), "after a here-string is code again");
}

#[test]
fn the_script_decides_nothing_the_renderer_can() {
    let script = capwin_payload::BOOTSTRAP_SOURCE;
    // The Hyper-V handler, the External network, the routes and the builds come from bootstrap.json.
    for decided in
        ["runhcs-wcow-hypervisor", "SandboxImage", "192.168.255", "VSID = 9999", "168.63.129.16", "20348", "COM1"]
    {
        assert!(!script.contains(decided), "bootstrap.ps1 hard-codes {decided:?}; the renderer decides it");
    }
    assert!(!script.contains("Invoke-Expression"), "no string evaluation of inputs");
}

/// The script runs under `Set-StrictMode`, where reading a property the parameters file lacks is
/// a terminating error: every `$P.a.b` it reads (directly, or through a variable assigned from
/// `$P.a`) must exist in every rendered parameters file.
#[test]
fn every_parameter_the_script_reads_is_rendered() {
    use capwin_api::bootstrap::*;
    let script = capwin_payload::BOOTSTRAP_SOURCE;
    let path_after = |at: usize| -> Vec<String> {
        let path: String =
            script[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_').collect();
        path.trim_end_matches('.').split('.').filter(|p| !p.is_empty()).map(String::from).collect()
    };
    let mut refs: Vec<Vec<String>> = Vec::new();
    let mut aliases: Vec<(String, Vec<String>)> = Vec::new();
    for (i, _) in script.match_indices("$P.") {
        let parts = path_after(i + 3);
        // `$x = $P.a.b` makes `$x.c` a read of `a.b.c`.
        let line_start = script[..i].rfind('\n').map_or(0, |l| l + 1);
        let before = script[line_start..i].trim();
        if let Some(var) = before.strip_suffix('=').map(str::trim).and_then(|v| v.strip_prefix('$'))
            && var.chars().all(|c| c.is_ascii_alphanumeric())
        {
            let var = var.to_ascii_lowercase();
            if let Some((_, other)) = aliases.iter().find(|(v, _)| *v == var) {
                assert_eq!(other, &parts, "${var} aliases two parameter objects; rename one so this scan stays sound");
            }
            aliases.push((var, parts.clone()));
        }
        if !refs.contains(&parts) {
            refs.push(parts);
        }
    }
    for (var, base) in &aliases {
        for (i, _) in script.match_indices(&format!("${var}.")) {
            let mut parts = base.clone();
            parts.extend(path_after(i + var.len() + 2));
            if !refs.contains(&parts) {
                refs.push(parts);
            }
        }
    }
    assert!(refs.len() > 40, "found only {} parameter reads; the scan is broken", refs.len());
    assert!(aliases.len() > 5, "found only {} aliases; the scan is broken", aliases.len());
    let mut specs = Vec::new();
    for cni in CniFlavour::ALL {
        let mut spec = WindowsKubeadmConfigSpec::default();
        spec.windows.cni.flavour = cni;
        specs.push(spec);
    }
    let mut full = WindowsKubeadmConfigSpec::default();
    full.windows.cni.flavour = CniFlavour::FlannelVxlan;
    full.windows.hyper_v.enabled = true;
    full.windows.gmsa = Gmsa {
        enabled: true,
        ccg_plugin: Some(CcgPlugin {
            url: "https://example.com/ccg.dll".into(),
            sha256: "a".repeat(64),
            clsid: "{CCC2A336-D7F3-4818-A213-272B7924213E}".into(),
            app_id: None,
        }),
    };
    full.windows.domain_join = Some(DomainJoin {
        domain: "corp.example.com".into(),
        organizational_unit: Some("OU=k8s,DC=corp,DC=example,DC=com".into()),
        credentials_secret: DomainJoinSecretRef { name: "ad".into(), ..Default::default() },
    });
    full.windows.containerd.source = ContainerdSource::Download;
    full.windows.containerd.download = Some(ContainerdDownload {
        version: "2.1.4".into(),
        url: "https://example.com/c.tgz".into(),
        sha256: "b".repeat(64),
    });
    full.join_configuration.node_registration.name = Some("win-0".into());
    specs.push(full);
    let account = capwin_payload::DomainJoinSecret { username: b"CORP\\join".to_vec(), password: b"pw".to_vec() };
    for (spec, cloud) in specs.iter().flat_map(|s| [(s, capwin_payload::Cloud::Azure), (s, capwin_payload::Cloud::Aws)])
    {
        let token = capwin_payload::BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let cluster = capwin_payload::ClusterInputs {
            api_server_endpoint: "a.example.com:6443".into(),
            ca_cert_hashes: vec![format!("sha256:{}", "0".repeat(64))],
            kubernetes_version: "v1.34.0".into(),
            pod_cidrs: vec!["192.168.0.0/16".into()],
            service_cidrs: vec![],
        };
        let secrets = Default::default();
        let input = capwin_payload::RenderInput {
            spec,
            secret_file_contents: &secrets,
            domain_join_secret: spec.windows.domain_join.as_ref().map(|_| &account),
            cluster: &cluster,
            token: &token,
            cloud,
        };
        let payload = capwin_payload::render(&input).unwrap();
        let doc = if payload.gzipped {
            use std::io::Read;
            let mut out = String::new();
            flate2::read::GzDecoder::new(&payload.bytes[..]).read_to_string(&mut out).unwrap();
            out
        } else {
            String::from_utf8(payload.bytes).unwrap()
        };
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
    let script = capwin_payload::BOOTSTRAP_SOURCE;
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
    assert!(!script.contains("exit 1001") && !script.contains("exit 1002"), "no other reboot exit codes");
}
