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
