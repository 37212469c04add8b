//! What `bootstrap.ps1` may do, checked on its syntax tree (tree-sitter-powershell): no PowerShell
//! runs on this machine, so the script's safety comes from its shape.
//!
//! 1. **Commands**: every cmdlet, function and program it calls is a function of the script or in
//!    [`ALLOWED`] / [`external`], each documented as present on Windows Server 2022 and 2025 Server
//!    Core with an image-builder (`images/capi/ansible/windows`) image, and classified as reading,
//!    changing the node, or diagnostics only.
//! 2. **Re-runs**: every `Step-*` function starts with its guard, `if (<a Test-* call>) { … return }`;
//!    every `Test-*`, `Assert-*` and `Get-*` function only reads (transitively, through the
//!    functions it calls); the main flows change the node only through `Step-*` functions; every
//!    step is used.
//! 3. **Secrets**: the secret sources are the join configuration (bootstrap token, `$JoinConfig`,
//!    `$JoinTemplate`) and the domain join account (`$P.domainJoin.credentialsPath`); the
//!    parameters file holds none (checked in `tests/golden.rs`). They are read only by the reader
//!    functions in [`SECRET_READERS`]; anything derived from them (followed through assignments,
//!    return values and [`SECRET_PASSTHROUGH`]) never appears in the arguments of a logging sink
//!    ([`SINKS`]), a `throw`, or a call to any other script function.
//! 4. **Exit codes**: `exit` takes a literal 0, 10-99, 1003 (only in `Exit-ForReboot`, the
//!    reboot-and-resume path cloudbase-init knows), or `$script:ExitCode`, which is only ever
//!    assigned 0, a `$Steps` code or `Complete-Failure`'s result (a `$Steps` code or 99).
//! 5. **Names**: PowerShell names are case-insensitive and functions see their callers' locals:
//!    no function assigns a variable named like a script-scope variable or an automatic one.

use std::collections::{BTreeMap, BTreeSet};

use tree_sitter::{Node, Parser, Tree};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Reads state (or builds in-memory objects).
    Read,
    /// Changes the node.
    Change,
    /// Logging, transcripts, session settings: no node state.
    Diagnostic,
}
use Class::*;

/// Cmdlets the script may call, with the module that ships them. All are in-box in Windows
/// PowerShell 5.1 on Windows Server 2022 and 2025 (Server Core included): the core modules
/// (Microsoft.PowerShell.Management, .Utility, .Security), CimCmdlets, NetTCPIP, NetAdapter,
/// NetSecurity, ScheduledTasks and Dism; ConfigDefender comes with Microsoft Defender, installed
/// on Server by default (the script checks `Get-Command Add-MpPreference` first).
const ALLOWED: &[(&str, Class, &str)] = &[
    ("Add-Computer", Change, "Microsoft.PowerShell.Management"),
    ("Add-MpPreference", Change, "ConfigDefender"),
    ("Add-Type", Read, "Microsoft.PowerShell.Utility (compiles P/Invoke types into the session)"),
    ("ConvertFrom-Json", Read, "Microsoft.PowerShell.Utility"),
    ("ConvertTo-Json", Read, "Microsoft.PowerShell.Utility"),
    ("ConvertTo-SecureString", Read, "Microsoft.PowerShell.Security"),
    ("Copy-Item", Change, "Microsoft.PowerShell.Management"),
    ("ForEach-Object", Read, "Microsoft.PowerShell.Core"),
    ("Get-Acl", Read, "Microsoft.PowerShell.Security"),
    ("Get-ChildItem", Read, "Microsoft.PowerShell.Management"),
    ("Get-CimInstance", Read, "CimCmdlets"),
    ("Get-Command", Read, "Microsoft.PowerShell.Core"),
    ("Get-Date", Read, "Microsoft.PowerShell.Utility"),
    ("Get-FileHash", Read, "Microsoft.PowerShell.Utility"),
    ("Get-Item", Read, "Microsoft.PowerShell.Management"),
    ("Get-ItemProperty", Read, "Microsoft.PowerShell.Management"),
    ("Get-MpPreference", Read, "ConfigDefender"),
    ("Get-NetAdapter", Read, "NetAdapter"),
    ("Get-NetFirewallRule", Read, "NetSecurity"),
    ("Get-NetIPAddress", Read, "NetTCPIP"),
    ("Get-NetRoute", Read, "NetTCPIP"),
    ("Get-ScheduledTask", Read, "ScheduledTasks"),
    ("Get-Service", Read, "Microsoft.PowerShell.Management"),
    ("Get-WindowsOptionalFeature", Read, "Dism"),
    ("Invoke-CimMethod", Change, "CimCmdlets"),
    ("Invoke-RestMethod", Read, "Microsoft.PowerShell.Utility (instance metadata only)"),
    ("Join-Path", Read, "Microsoft.PowerShell.Management"),
    ("Move-Item", Change, "Microsoft.PowerShell.Management"),
    ("New-Item", Change, "Microsoft.PowerShell.Management"),
    ("New-ItemProperty", Change, "Microsoft.PowerShell.Management"),
    ("New-NetFirewallRule", Change, "NetSecurity"),
    ("New-NetRoute", Change, "NetTCPIP"),
    ("New-Object", Read, "Microsoft.PowerShell.Utility"),
    ("New-ScheduledTaskAction", Read, "ScheduledTasks"),
    ("New-ScheduledTaskPrincipal", Read, "ScheduledTasks"),
    ("New-ScheduledTaskSettingsSet", Read, "ScheduledTasks"),
    ("New-ScheduledTaskTrigger", Read, "ScheduledTasks"),
    ("New-TimeSpan", Read, "Microsoft.PowerShell.Utility"),
    ("Out-Null", Read, "Microsoft.PowerShell.Core"),
    ("Register-ScheduledTask", Change, "ScheduledTasks"),
    ("Remove-Item", Change, "Microsoft.PowerShell.Management"),
    ("Remove-NetRoute", Change, "NetTCPIP"),
    ("Restart-Service", Change, "Microsoft.PowerShell.Management"),
    ("Select-Object", Read, "Microsoft.PowerShell.Utility"),
    ("Set-Item", Change, "Microsoft.PowerShell.Management"),
    ("Set-ItemProperty", Change, "Microsoft.PowerShell.Management"),
    ("Set-Service", Change, "Microsoft.PowerShell.Management"),
    ("Set-StrictMode", Diagnostic, "Microsoft.PowerShell.Core"),
    ("Sort-Object", Read, "Microsoft.PowerShell.Utility"),
    ("Start-Service", Change, "Microsoft.PowerShell.Management"),
    ("Start-Sleep", Read, "Microsoft.PowerShell.Utility"),
    ("Start-Transcript", Diagnostic, "Microsoft.PowerShell.Host"),
    ("Stop-Service", Change, "Microsoft.PowerShell.Management"),
    ("Stop-Transcript", Diagnostic, "Microsoft.PowerShell.Host"),
    ("Test-Path", Read, "Microsoft.PowerShell.Management"),
    ("Where-Object", Read, "Microsoft.PowerShell.Core"),
    ("Write-Host", Diagnostic, "Microsoft.PowerShell.Utility"),
];

/// Programs run through `Invoke-Native`, classified by their arguments. `None`: not allowed.
/// `icacls`, `sc`, `netsh`, `curl` and `tar` are in `C:\Windows\System32` on every Windows Server
/// since 2019; `kubeadm.exe` and `containerd.exe` are installed by image-builder's `kubernetes` and
/// `runtimes` roles at these paths.
fn external(program: &str, args: Option<&[String]>) -> Option<Class> {
    let has = |a: &str| args.is_some_and(|x| x.iter().any(|y| y == a));
    Some(match program {
        "icacls.exe" | "curl.exe" | "tar.exe" => Change,
        "sc.exe" if has("qc") || has("query") || has("qfailure") => Read,
        "sc.exe" => Change,
        "netsh.exe" if has("show") => Read,
        "netsh.exe" => Change,
        r"C:\k\kubeadm.exe" if has("version") => Read,
        r"C:\k\kubeadm.exe" => Change,
        r"C:\Program Files\containerd\containerd.exe" if has("--version") => Read,
        _ => return None,
    })
}

/// .NET members that change the node when the script calls them.
const CHANGING_MEMBERS: &[&str] =
    &["WriteAllText", "AppendAllText", "WriteAllBytes", "CreateSubKey", "DeleteSubKey", "SetAccessControl", "SetValue"];

/// Functions that run other code handed to them (`&`), and nothing else may.
const DYNAMIC_INVOKERS: &[&str] = &["invoke-native", "invoke-withretry", "wait-until", "invoke-usercommands"];

/// Functions whose call sites are classified by their arguments instead of their bodies.
const PRIMITIVES: &[&str] = &["invoke-native", "invoke-hns"];

/// The only functions that read a secret source.
const SECRET_READERS: &[&str] =
    &["register-tokenredaction", "read-joinconfiguration", "read-jointemplate", "read-domainjoincredential"];
/// Script functions that may take a secret argument; their result is secret too.
const SECRET_PASSTHROUGH: &[&str] = &["resolve-placeholders"];
/// Where a secret must never appear.
const SINKS: &[&str] = &[
    "write-log",
    "write-host",
    "write-serial",
    "send-progress",
    "write-output",
    "write-warning",
    "write-error",
    "write-verbose",
    "write-information",
    "out-file",
    "set-content",
    "add-content",
];
/// Variables whose value is a secret however they are reached.
const SECRET_VARIABLES: &[&str] = &["redact"];

/// PowerShell's automatic variables a function must not assign.
const AUTOMATIC: &[&str] = &[
    "_",
    "args",
    "error",
    "event",
    "foreach",
    "home",
    "host",
    "input",
    "lastexitcode",
    "matches",
    "myinvocation",
    "null",
    "pid",
    "profile",
    "psboundparameters",
    "pscmdlet",
    "pscommandpath",
    "psitem",
    "psscriptroot",
    "pwd",
    "this",
    "true",
    "false",
    "switch",
    "sender",
    "stacktrace",
];

struct Script<'a> {
    src: &'a str,
    tree: Tree,
    /// Node id -> name (lower-case) of the function the node is in.
    owner: std::collections::HashMap<usize, String>,
}

impl<'a> Script<'a> {
    fn parse(src: &'a str) -> Self {
        let mut parser = Parser::new();
        parser.set_language(&tree_sitter_powershell::LANGUAGE.into()).unwrap();
        let tree = parser.parse(src, None).unwrap();
        assert!(!tree.root_node().has_error(), "the script does not parse");
        let mut owner = std::collections::HashMap::new();
        let mut stack = vec![(tree.root_node(), String::new())];
        while let Some((n, f)) = stack.pop() {
            let mut c = n.walk();
            for ch in n.children(&mut c) {
                owner.insert(ch.id(), f.clone());
                let inner = if ch.kind() == "function_statement" {
                    let name = ch.children(&mut ch.walk()).find(|x| x.kind() == "function_name").unwrap();
                    src[name.byte_range()].to_ascii_lowercase()
                } else {
                    f.clone()
                };
                stack.push((ch, inner));
            }
        }
        Self { src, tree, owner }
    }
    fn text(&self, n: Node<'_>) -> &'a str {
        &self.src[n.byte_range()]
    }
    fn line(&self, n: Node<'_>) -> usize {
        n.start_position().row + 1
    }
    fn all(&self) -> Vec<Node<'_>> {
        let mut out = Vec::new();
        let mut stack = vec![self.tree.root_node()];
        while let Some(n) = stack.pop() {
            out.push(n);
            let mut c = n.walk();
            for ch in n.children(&mut c) {
                stack.push(ch);
            }
        }
        out.sort_by_key(|n| n.start_byte());
        out
    }
    /// Name (lower-case) of the function a node is in, `""` at the top level.
    fn function_of(&self, n: Node<'_>) -> String {
        self.owner.get(&n.id()).cloned().unwrap_or_default()
    }
    fn function_name(&self, f: Node<'_>) -> String {
        let name = f.children(&mut f.walk()).find(|c| c.kind() == "function_name").unwrap();
        self.text(name).to_ascii_lowercase()
    }
    fn functions(&self) -> BTreeMap<String, Node<'_>> {
        self.all()
            .into_iter()
            .filter(|n| n.kind() == "function_statement")
            .map(|f| (self.function_name(f), f))
            .collect()
    }
    /// Commands as (name, node); `&`/`.` invocations are named by their operator.
    fn commands(&self) -> Vec<(String, Node<'_>)> {
        self.all()
            .into_iter()
            .filter(|n| n.kind() == "command")
            .map(|c| {
                let name = match c.child_by_field_name("command_name") {
                    Some(n) if n.kind() == "command_name" => self.text(n).to_string(),
                    _ => c.child(0).map(|o| self.text(o).to_string()).unwrap_or_default(),
                };
                (name, c)
            })
            .collect()
    }
    /// Positional arguments of a command (parameters and their values skipped).
    fn positional<'b>(&self, cmd: Node<'b>) -> Vec<Node<'b>> {
        let Some(elements) = cmd.child_by_field_name("command_elements") else { return Vec::new() };
        let mut out = Vec::new();
        let mut skip_value = false;
        let mut c = elements.walk();
        for e in elements.children(&mut c) {
            match e.kind() {
                "command_argument_sep" | "comment" | "redirection" => {}
                "command_parameter" => skip_value = !self.text(e).ends_with(':'),
                _ if skip_value => skip_value = false,
                _ => out.push(e),
            }
        }
        out
    }
    fn string_literals(&self, n: Node<'_>) -> Vec<String> {
        descendants(n)
            .into_iter()
            .filter(|d| d.kind() == "string_literal")
            .map(|d| self.text(d).trim_matches(['\'', '"']).to_string())
            .collect()
    }
}

fn descendants(n: Node<'_>) -> Vec<Node<'_>> {
    let mut out = Vec::new();
    let mut stack = vec![n];
    while let Some(x) = stack.pop() {
        out.push(x);
        let mut c = x.walk();
        for ch in x.children(&mut c) {
            stack.push(ch);
        }
    }
    out
}

/// `$script:Foo` → ("foo", true); `$foo` → ("foo", false); `@foo` (splatting) likewise.
fn variable(text: &str) -> (String, bool) {
    let t = text.trim_start_matches(['$', '@']).trim_matches(['{', '}']).to_ascii_lowercase();
    for scope in ["script:", "global:"] {
        if let Some(rest) = t.strip_prefix(scope) {
            return (rest.to_string(), true);
        }
    }
    (t.strip_prefix("local:").unwrap_or(&t).to_string(), false)
}

/// Taint: (function, or `""` for the script scope; variable name).
type Taint = BTreeSet<(String, String)>;
type IsTainted = dyn Fn(&Taint, &str, &str) -> bool;

/// Everything the checks need, computed once.
struct Analysis<'a> {
    functions: BTreeMap<String, Node<'a>>,
    /// Class of each call: (function it is in, callee, class), for commands and programs.
    calls: Vec<(String, String, Class, usize)>,
    problems: Vec<String>,
}

fn analyse<'a>(s: &'a Script<'a>) -> Analysis<'a> {
    let functions = s.functions();
    let allowed: BTreeMap<String, Class> = ALLOWED.iter().map(|(n, c, _)| (n.to_ascii_lowercase(), *c)).collect();
    let mut calls = Vec::new();
    let mut problems = Vec::new();
    for (name, cmd) in s.commands() {
        let lower = name.to_ascii_lowercase();
        let caller = s.function_of(cmd);
        let line = s.line(cmd);
        if name == "&" || name == "." {
            if !DYNAMIC_INVOKERS.contains(&caller.as_str()) {
                problems.push(format!("line {line}: `{name}` invocation outside {DYNAMIC_INVOKERS:?}"));
            }
            continue;
        }
        if lower == "invoke-native" {
            let args = s.positional(cmd);
            let program =
                args.first().filter(|a| a.kind() == "array_literal_expression").map(|a| s.string_literals(*a));
            let Some(program) = program.and_then(|p| (p.len() == 1).then(|| p[0].clone())) else {
                problems.push(format!("line {line}: Invoke-Native needs a literal program"));
                continue;
            };
            let literal_args = args.get(1).map(|a| s.string_literals(*a));
            let has_array = args.get(1).is_some_and(|a| descendants(*a).iter().any(|d| d.kind() == "array_expression"));
            let class = external(&program, if has_array { literal_args.as_deref() } else { None });
            match class {
                Some(c) => calls.push((caller.clone(), program.clone(), c, line)),
                None => problems.push(format!("line {line}: program {program} is not allowed")),
            }
        }
        if lower == "invoke-hns" {
            let method = s.positional(cmd).first().map(|a| s.string_literals(*a)).unwrap_or_default();
            let class = if method == ["GET"] { Read } else { Change };
            calls.push((caller.clone(), "HNS".into(), class, line));
        }
        if functions.contains_key(&lower) {
            if !PRIMITIVES.contains(&lower.as_str()) {
                calls.push((caller, lower, Read, line)); // resolved transitively below
            }
            continue;
        }
        match allowed.get(&lower) {
            Some(c) => calls.push((caller, lower, *c, line)),
            None => problems.push(format!("line {line}: {name} is not in the allow-list")),
        }
    }
    // .NET members that change the node count as calls in their function.
    for n in s.all() {
        if n.kind() == "invokation_expression" {
            let member = n.children(&mut n.walk()).find(|c| c.kind() == "member_name").map(|m| s.text(m));
            if let Some(m) = member.filter(|m| CHANGING_MEMBERS.contains(m)) {
                calls.push((s.function_of(n), format!(".{m}"), Change, s.line(n)));
            }
        }
    }
    Analysis { functions, calls, problems }
}

impl Analysis<'_> {
    /// Functions that change the node, directly or through the functions they call.
    fn changing(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        loop {
            let before = out.len();
            for (caller, callee, class, _) in &self.calls {
                if PRIMITIVES.contains(&caller.as_str()) {
                    continue;
                }
                if *class == Change || out.contains(callee) {
                    out.insert(caller.clone());
                }
            }
            if out.len() == before {
                return out;
            }
        }
    }
    /// First statement of a function body (comments skipped).
    fn first_statement<'b>(&self, f: Node<'b>) -> Option<Node<'b>> {
        let block = f.children(&mut f.walk()).find(|c| c.kind() == "script_block")?;
        let body = block.children(&mut block.walk()).find(|c| c.kind() == "script_block_body")?;
        let list = body.children(&mut body.walk()).find(|c| c.kind() == "statement_list")?;
        list.children(&mut list.walk()).find(|c| c.is_named() && c.kind() != "comment")
    }
}

fn source() -> &'static str {
    capwin_payload::BOOTSTRAP_SOURCE
}

#[test]
fn every_command_is_allowed_and_classified() {
    let s = Script::parse(source());
    let a = analyse(&s);
    assert!(a.problems.is_empty(), "{:#?}", a.problems);
    let used: BTreeSet<&str> = a.calls.iter().map(|(_, c, _, _)| c.as_str()).collect();
    for (name, _, _) in ALLOWED {
        assert!(used.contains(name.to_ascii_lowercase().as_str()), "{name} is allowed but unused: trim the list");
    }
    assert!(a.calls.len() > 150, "only {} calls found; the walk is broken", a.calls.len());
}

#[test]
fn steps_are_guarded_and_checks_only_read() {
    let s = Script::parse(source());
    let a = analyse(&s);
    let changing = a.changing();
    let mut problems = Vec::new();
    for (name, f) in &a.functions {
        if name.starts_with("step-") {
            let Some(first) = a.first_statement(*f).filter(|n| n.kind() == "if_statement") else {
                problems
                    .push(format!("{name}: the first statement is not its re-run guard `if (Test-…) {{ … return }}`"));
                continue;
            };
            let condition = first.child_by_field_name("condition").unwrap();
            let tests_state = descendants(condition)
                .iter()
                .any(|d| d.kind() == "command_name" && s.text(*d).to_ascii_lowercase().starts_with("test-"));
            let block = first.children(&mut first.walk()).find(|c| c.kind() == "statement_block").unwrap();
            let returns = block
                .child_by_field_name("statement_list")
                .and_then(|l| l.children(&mut l.walk()).filter(|c| c.is_named() && c.kind() != "comment").last())
                .is_some_and(|last| last.kind() == "flow_control_statement" && s.text(last).starts_with("return"));
            if !tests_state || !returns {
                problems.push(format!("{name}: the guard must call a Test-* check and end with return"));
            }
        }
        let read_only = ["test-", "assert-", "get-", "read-", "resolve-", "convertto-"];
        if read_only.iter().any(|p| name.starts_with(p)) && changing.contains(name) {
            let why: Vec<String> = a
                .calls
                .iter()
                .filter(|(c, callee, class, _)| c == name && (*class == Change || changing.contains(callee)))
                .map(|(_, callee, _, line)| format!("{callee} (line {line})"))
                .collect();
            problems.push(format!("{name} must only read, but changes the node through {why:?}"));
        }
    }
    // The main flows change the node only through steps, and every step is used by one.
    let mut used_steps = BTreeSet::new();
    for flow in ["invoke-join", "invoke-metadataroutes"] {
        for (caller, callee, class, line) in &a.calls {
            if caller == flow {
                if callee.starts_with("step-") {
                    used_steps.insert(callee.clone());
                } else if *class == Change || changing.contains(callee) {
                    problems.push(format!("{flow} changes the node outside a step: {callee} (line {line})"));
                }
            }
        }
    }
    for name in a.functions.keys().filter(|n| n.starts_with("step-")) {
        if !used_steps.contains(name) {
            problems.push(format!("{name} is never run"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(a.functions.keys().filter(|n| n.starts_with("step-")).count() > 25, "too few steps found");
}

#[test]
fn secrets_never_reach_logs_or_errors() {
    let problems = secret_flows(source());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Secret flows in a script, as problems.
fn secret_flows(src: &str) -> Vec<String> {
    let s = Script::parse(src);
    let a = analyse(&s);
    let mut problems = Vec::new();
    let nodes = s.all();
    let is_secret_path = |n: Node<'_>| {
        descendants(n).iter().any(|d| {
            let t = s.text(*d).to_ascii_lowercase();
            (d.kind() == "variable" && matches!(variable(&t).0.as_str(), "joinconfig" | "jointemplate"))
                || (d.kind() == "member_access" && t.ends_with("credentialspath"))
        })
    };
    // R1: secret files are read only by the readers.
    for n in &nodes {
        let reads = match n.kind() {
            "invokation_expression" => {
                let m = n.children(&mut n.walk()).find(|c| c.kind() == "member_name").map(|m| s.text(m)).unwrap_or("");
                m.starts_with("ReadAll")
            }
            "command" => {
                n.child_by_field_name("command_name").is_some_and(|c| s.text(c).eq_ignore_ascii_case("Get-Content"))
            }
            _ => false,
        };
        let f = s.function_of(*n);
        if reads && is_secret_path(*n) && !SECRET_READERS.contains(&f.as_str()) {
            problems.push(format!("line {}: a secret file is read outside the readers (in {f:?})", s.line(*n)));
        }
    }
    // Taint: variables assigned from secrets, functions returning them; to a fixpoint.
    let mut secret_fns: BTreeSet<String> = SECRET_READERS.iter().map(|x| x.to_string()).collect();
    let mut tainted: BTreeSet<(String, String)> =
        SECRET_VARIABLES.iter().map(|v| (String::new(), v.to_string())).collect();
    let is_tainted_var = |t: &BTreeSet<(String, String)>, f: &str, text: &str| {
        let (name, script_scope) = variable(text);
        t.contains(&(String::new(), name.clone())) || (!script_scope && t.contains(&(f.to_string(), name)))
    };
    // A passthrough call is secret only when its arguments are.
    fn walk(
        s: &Script<'_>,
        f: &str,
        t: &BTreeSet<(String, String)>,
        fns: &BTreeSet<String>,
        n: Node<'_>,
        is_var: &IsTainted,
    ) -> bool {
        match n.kind() {
            "variable" => is_var(t, f, s.text(n)),
            "command" => {
                let name = n.child_by_field_name("command_name").map(|c| s.text(c).to_ascii_lowercase());
                if name.as_deref().is_some_and(|x| fns.contains(x)) {
                    return true;
                }
                let elements = n.child_by_field_name("command_elements");
                if name.as_deref().is_some_and(|x| SECRET_PASSTHROUGH.contains(&x)) {
                    return elements.is_some_and(|e| walk(s, f, t, fns, e, is_var));
                }
                n.children(&mut n.walk()).any(|c| walk(s, f, t, fns, c, is_var))
            }
            _ => n.children(&mut n.walk()).any(|c| walk(s, f, t, fns, c, is_var)),
        }
    }
    let expr_tainted = |t: &BTreeSet<(String, String)>, fns: &BTreeSet<String>, n: Node<'_>| {
        walk(&s, &s.function_of(n), t, fns, n, &is_tainted_var)
    };
    loop {
        let before = (tainted.len(), secret_fns.len());
        for n in &nodes {
            let f = s.function_of(*n);
            match n.kind() {
                "assignment_expression" => {
                    let left = n.child(0).unwrap();
                    let right = n.child_by_field_name("value").unwrap();
                    let inside_reader = SECRET_READERS.contains(&f.as_str());
                    if inside_reader || expr_tainted(&tainted, &secret_fns, right) {
                        for v in descendants(left).into_iter().filter(|d| d.kind() == "variable") {
                            let (name, script_scope) = variable(s.text(v));
                            tainted.insert((if script_scope { String::new() } else { f.clone() }, name));
                        }
                    }
                }
                "flow_control_statement"
                    if s.text(*n).starts_with("return") && !f.is_empty() && expr_tainted(&tainted, &secret_fns, *n) =>
                {
                    secret_fns.insert(f.clone());
                }
                _ => {}
            }
        }
        if (tainted.len(), secret_fns.len()) == before {
            break;
        }
    }
    // Sinks, throws and other script functions never receive a secret.
    for (name, cmd) in s.commands() {
        let lower = name.to_ascii_lowercase();
        let f = s.function_of(cmd);
        let sink = SINKS.contains(&lower.as_str());
        let other_fn = a.functions.contains_key(&lower) && !SECRET_PASSTHROUGH.contains(&lower.as_str());
        if sink && SECRET_READERS.contains(&f.as_str()) {
            problems.push(format!("line {}: {name} inside the secret reader {f}", s.line(cmd)));
        }
        if !(sink || other_fn) {
            continue;
        }
        if let Some(elements) = cmd.child_by_field_name("command_elements")
            && expr_tainted(&tainted, &secret_fns, elements)
        {
            problems.push(format!("line {}: a secret reaches {name}: {}", s.line(cmd), s.text(cmd)));
        }
    }
    for n in &nodes {
        if n.kind() == "flow_control_statement"
            && s.text(*n).starts_with("throw")
            && expr_tainted(&tainted, &secret_fns, *n)
        {
            problems.push(format!("line {}: a secret reaches throw: {}", s.line(*n), s.text(*n)));
        }
    }
    problems
}

#[test]
fn the_secret_check_catches_leaks() {
    // Seeded mutations of the real script: each must be caught.
    let base = source();
    let leaks = [
        // Logging the domain join credential.
        (
            "    Add-Computer @join\n",
            "    Add-Computer @join\n    Write-Log ('joined as {0}' -f $credential.UserName)\n",
        ),
        // A throw carrying the rendered join configuration (the bootstrap token).
        (
            "    [IO.File]::WriteAllText($JoinConfig, (Resolve-Placeholders (Read-JoinTemplate)), $Utf8)\n",
            "    $rendered = Resolve-Placeholders (Read-JoinTemplate)\n    throw (\"bad config $rendered\")\n",
        ),
        // Reading the join configuration outside a reader.
        ("function Step-Finish {\n", "function Step-Finish {\n    $t = [IO.File]::ReadAllText($JoinConfig, $Utf8)\n"),
        // The redaction list itself on the serial console.
        ("    Send-Progress 'failed' $message\n", "    Send-Progress 'failed' ($script:Redact -join ',')\n"),
        // A secret handed to another function that logs its argument.
        (
            "    $credential = Read-DomainJoinCredential\n",
            "    $credential = Read-DomainJoinCredential\n    Exit-ForReboot $credential\n",
        ),
    ];
    for (anchor, replacement) in leaks {
        assert!(base.contains(anchor), "anchor missing: {anchor}");
        let mutated = base.replacen(anchor, replacement, 1);
        assert!(!secret_flows(&mutated).is_empty(), "leak not caught: {replacement}");
    }
}

#[test]
fn exit_codes_are_the_ones_cloudbase_init_expects() {
    let s = Script::parse(source());
    let a = analyse(&s);
    let mut problems = Vec::new();
    let mut exits = 0;
    for n in s.all() {
        let t = s.text(n);
        let f = s.function_of(n);
        if n.kind() == "flow_control_statement" && t.starts_with("exit") {
            exits += 1;
            let arg = t["exit".len()..].trim();
            let ok = match arg.parse::<u32>() {
                Ok(0) => true,
                Ok(c) if (10..=99).contains(&c) => true,
                Ok(1003) => f == "exit-forreboot",
                Ok(_) => false,
                Err(_) => arg.eq_ignore_ascii_case("$script:ExitCode"),
            };
            if !ok {
                problems.push(format!("line {}: `{t}` in {f:?}", s.line(n)));
            }
        }
        if n.kind() == "assignment_expression" {
            let left = s.text(n.child(0).unwrap());
            let right = s.text(n.child_by_field_name("value").unwrap()).trim();
            if left.eq_ignore_ascii_case("$script:ExitCode") {
                let ok = right == "0" || right.starts_with("Complete-Failure ") || right.starts_with("$Steps['");
                if !ok {
                    problems.push(format!("line {}: $script:ExitCode = {right}", s.line(n)));
                }
            }
            // Complete-Failure's result: a $Steps code or 99.
            if f == "complete-failure" && left == "$code" && !(right.starts_with("$Steps[") || right == "99") {
                problems.push(format!("line {}: Complete-Failure returns {right}", s.line(n)));
            }
        }
    }
    let cf = a.functions["complete-failure"];
    for r in descendants(cf).into_iter().filter(|d| d.kind() == "flow_control_statement") {
        if s.text(r).starts_with("return") && s.text(r) != "return $code" {
            problems.push(format!("Complete-Failure: {}", s.text(r)));
        }
    }
    // 1001 and 1002 are never used; 1003 only on the reboot path, and that path exists.
    assert!(!source().contains("1001") && !source().contains("1002"));
    assert!(exits >= 3, "found {exits} exits");
    assert!(problems.is_empty(), "{problems:#?}");
    let reboot = s.text(a.functions["exit-forreboot"]);
    assert!(reboot.contains("exit 1003"));
    assert_eq!(
        a.calls
            .iter()
            .filter(|(_, callee, _, _)| callee == "exit-forreboot")
            .map(|(c, _, _, _)| c.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["step-domainjoin"]),
        "only the domain join reboots"
    );
}

#[test]
fn no_variable_shadows_the_scripts_own() {
    let s = Script::parse(source());
    let mut script_vars = BTreeSet::new();
    let mut problems = Vec::new();
    for n in s.all().into_iter().filter(|n| n.kind() == "assignment_expression" || n.kind() == "script_parameter") {
        let f = s.function_of(n);
        let target = if n.kind() == "assignment_expression" { n.child(0).unwrap() } else { n };
        for v in descendants(target).into_iter().filter(|d| d.kind() == "variable") {
            let (name, script_scope) = variable(s.text(v));
            if f.is_empty() || script_scope {
                script_vars.insert(name);
            }
        }
    }
    script_vars.insert("p".into());
    for n in s.all().into_iter().filter(|n| n.kind() == "assignment_expression" || n.kind() == "script_parameter") {
        let f = s.function_of(n);
        if f.is_empty() {
            continue;
        }
        let target = if n.kind() == "assignment_expression" { n.child(0).unwrap() } else { n };
        for v in descendants(target).into_iter().filter(|d| d.kind() == "variable") {
            let (name, script_scope) = variable(s.text(v));
            // A function may lower its own error preference (Invoke-Native does, for native stderr).
            if script_scope || name == "erroractionpreference" {
                continue;
            }
            if script_vars.contains(&name) || AUTOMATIC.contains(&name.as_str()) {
                problems.push(format!("line {}: {f} assigns ${name}", s.line(v)));
            }
        }
    }
    assert!(script_vars.len() > 20, "{script_vars:?}");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_shipped_scripts_are_the_source_without_comments_and_unused_parts() {
    use capwin_payload::script::{Features, shipped};
    fn tokens(src: &str) -> Vec<String> {
        let s = Script::parse(src);
        s.all()
            .into_iter()
            .filter(|n| n.child_count() == 0 && n.kind() != "comment")
            .map(|n| s.text(n).to_string())
            .collect()
    }
    // With every part, exactly the source's tokens.
    assert_eq!(tokens(shipped(Features::ALL)), tokens(source()));
    // Every variant parses, keeps no comment line, and calls no function it left out.
    let full = Script::parse(source());
    let all_functions: BTreeSet<String> = full.functions().into_keys().collect();
    for f in Features::combinations() {
        let text = shipped(f);
        assert!(!text.lines().skip(1).any(|l| l.trim_start().starts_with('#')), "{f:?}: comment lines left");
        let s = Script::parse(text);
        let defined: BTreeSet<String> = s.functions().into_keys().collect();
        for (name, cmd) in s.commands() {
            let lower = name.to_ascii_lowercase();
            assert!(
                !all_functions.contains(&lower) || defined.contains(&lower),
                "{f:?}: line {} calls {name}, which this variant leaves out",
                s.line(cmd)
            );
        }
        let steps = defined.iter().filter(|d| d.starts_with("step-")).count();
        assert!(steps >= 20, "{f:?}: only {steps} steps");
    }
    // Leaving a part out saves what the EC2 budget needs.
    assert!(shipped(Features::default()).len() + 8000 < shipped(Features::ALL).len());
}
