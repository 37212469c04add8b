//! The `#cloud-config` document, limited to what cloudbase-init supports on Windows:
//! `write_files` (always with `permissions`), `users`, `ntp` and one `runcmd` line. No
//! `set_hostname` (it reboots and re-runs everything) and no Jinja header (nothing to template,
//! so `{{` in user content stays literal).
//!
//! Written by hand rather than by a YAML library: cloudbase-init parses with PyYAML, a YAML 1.1
//! parser, which reads unquoted `yes`, `on`, `0644` or `1:20` as booleans and numbers (a
//! YAML 1.2 emitter leaves those unquoted; the property tests caught it). Every scalar here is
//! therefore double-quoted with ASCII escapes, except text carried in a literal block, where
//! nothing is interpreted.

use base64::Engine;

use crate::validate::Checked;
use crate::{JOIN_CONFIG_PATH, PARAMS_PATH, RUNCMD, RenderInput, SCRIPT_PATH};

/// How a file's content is carried in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// In a literal block: readable; only for [`is_block_safe`] text.
    Text,
    /// `encoding: b64`, for anything else.
    Base64,
    /// `encoding: gz+b64`, when the document must shrink.
    GzipBase64,
}

/// A file of the document with its bytes, before choosing how to carry it.
#[derive(Clone, Debug)]
pub struct FileEntry {
    /// Short name for size reports.
    pub label: String,
    pub path: String,
    pub bytes: Vec<u8>,
    pub permissions: String,
    pub append: bool,
}

/// Everything but the encoding choice.
#[derive(Clone, Debug)]
pub struct Document {
    pub files: Vec<FileEntry>,
    users: Vec<User>,
    ntp: Option<Ntp>,
}

#[derive(Clone, Debug)]
struct User {
    name: String,
    gecos: Option<String>,
    groups: Vec<String>,
    ssh_authorized_keys: Vec<String>,
}

#[derive(Clone, Debug)]
struct Ntp {
    enabled: bool,
    servers: Vec<String>,
}

impl Document {
    pub fn build(input: &RenderInput<'_>, c: &Checked, join: String, params: String) -> Self {
        let file = |label: &str, path: &str, bytes: Vec<u8>, permissions: &str| FileEntry {
            label: label.into(),
            path: path.into(),
            bytes,
            permissions: permissions.into(),
            append: false,
        };
        let mut files = vec![
            file("join configuration", JOIN_CONFIG_PATH, join.into_bytes(), "0600"),
            file("parameters", PARAMS_PATH, params.into_bytes(), "0644"),
            file(
                "bootstrap script",
                SCRIPT_PATH,
                crate::script::shipped(features(input, c)).as_bytes().to_vec(),
                "0644",
            ),
        ];
        if let Some(account) = &c.domain_join_file {
            // Private: the script narrows C:\run\capwin to SYSTEM and Administrators first, and
            // deletes this file once the domain membership is confirmed.
            files.push(file("domain join account", crate::node::DOMAIN_JOIN_PATH, account.0.clone(), "0600"));
        }
        for d in &input.spec.windows.containerd.config_drop_ins {
            let path = format!(r"C:\run\capwin\containerd-{}.toml", d.name);
            files.push(file(&format!("containerd drop-in {}", d.name), &path, d.content.as_bytes().to_vec(), "0644"));
        }
        for f in &c.files {
            files.push(FileEntry {
                append: f.append,
                ..file(&format!("file {}", f.path), &f.path, f.bytes.clone(), &f.permissions)
            });
        }
        let users = input
            .spec
            .users
            .iter()
            .map(|u| User {
                name: u.name.clone(),
                gecos: u.gecos.clone(),
                groups: u.groups.clone(),
                ssh_authorized_keys: u.ssh_authorized_keys.clone(),
            })
            .collect();
        let ntp =
            input.spec.ntp.as_ref().map(|n| Ntp { enabled: n.enabled.unwrap_or(true), servers: n.servers.clone() });
        Self { files, users, ntp }
    }

    /// The document text with each file carried as `carry` decides.
    pub fn to_text(&self, carry: impl Fn(&FileEntry) -> Carry) -> String {
        let mut y = String::from("#cloud-config\nwrite_files:\n");
        for f in &self.files {
            y += &format!("- path: {}\n", quoted(&f.path));
            match encode(&f.bytes, carry(f)) {
                (None, block) => y += &format!("  content: {block}"),
                (Some(encoding), text) => {
                    y += &format!("  encoding: {}\n  content: {}\n", quoted(encoding), quoted(&text))
                }
            }
            y += &format!("  permissions: {}\n", quoted(&f.permissions));
            if f.append {
                y += "  append: true\n";
            }
        }
        if !self.users.is_empty() {
            y += "users:\n";
            for u in &self.users {
                y += &format!("- name: {}\n", quoted(&u.name));
                if let Some(g) = &u.gecos {
                    y += &format!("  gecos: {}\n", quoted(g));
                }
                if !u.groups.is_empty() {
                    y += &format!("  groups: {}\n", flow_list(&u.groups));
                }
                if !u.ssh_authorized_keys.is_empty() {
                    y += "  ssh_authorized_keys:\n";
                    for k in &u.ssh_authorized_keys {
                        y += &format!("  - {}\n", quoted(k));
                    }
                }
            }
        }
        if let Some(n) = &self.ntp {
            y += &format!("ntp:\n  enabled: {}\n", n.enabled);
            if !n.servers.is_empty() {
                y += &format!("  servers: {}\n", flow_list(&n.servers));
            }
        }
        y += &format!("runcmd:\n- {}\n", quoted(RUNCMD));
        y
    }

    /// Bytes a part takes in a document, for size reports.
    pub fn part_sizes(&self, carry: impl Fn(&FileEntry) -> Carry) -> Vec<(String, usize)> {
        let mut parts: Vec<(String, usize)> =
            self.files.iter().map(|f| (f.label.clone(), encode(&f.bytes, carry(f)).1.len())).collect();
        let users: usize = self
            .users
            .iter()
            .map(|u| u.name.len() + u.ssh_authorized_keys.iter().map(String::len).sum::<usize>())
            .sum();
        if users > 0 {
            parts.push(("users".into(), users));
        }
        parts
    }
}

/// The optional parts of the script this node uses.
pub fn features(input: &RenderInput<'_>, c: &Checked) -> crate::script::Features {
    let w = &input.spec.windows;
    crate::script::Features {
        domain_join: w.domain_join.is_some(),
        ccg_plugin: w.gmsa.enabled && w.gmsa.ccg_plugin.is_some(),
        external_network: c.external_network.is_some(),
        hyper_v: w.hyper_v.enabled,
        containerd_download: w.containerd.source == capwin_api::bootstrap::ContainerdSource::Download,
    }
}

/// Whether bytes can travel in a literal block unchanged.
pub fn is_plain_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(is_block_safe)
}

/// Printable ASCII, tabs and `\n` line breaks (a `\r` would be normalised away), with at least
/// one character that is not a line break.
pub fn is_block_safe(text: &str) -> bool {
    text.chars().all(|c| c == '\n' || c == '\t' || (' '..='~').contains(&c)) && text.chars().any(|c| c != '\n')
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The encoding key (if any) and the YAML for the content: a literal block for text, the
/// encoded string otherwise.
fn encode(bytes: &[u8], carry: Carry) -> (Option<&'static str>, String) {
    match carry {
        Carry::Text => (None, literal_block(std::str::from_utf8(bytes).expect("only text is carried as text"), 4)),
        Carry::Base64 => (Some("b64"), b64(bytes)),
        Carry::GzipBase64 => (Some("gz+b64"), b64(&crate::budget::gzip(bytes))),
    }
}

/// A YAML double-quoted scalar in plain ASCII: `"` and `\` escaped, everything outside printable
/// ASCII as `\xXX`, `\uXXXX` or `\UXXXXXXXX` (all YAML 1.1 escapes).
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn flow_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|i| quoted(i)).collect::<Vec<_>>().join(", "))
}

/// A literal block scalar indented by `indent`, with an explicit indentation indicator (leading
/// spaces survive) and the chomping indicator that keeps the trailing newlines exactly.
fn literal_block(text: &str, indent: usize) -> String {
    let trailing = text.len() - text.trim_end_matches('\n').len();
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let mut out = format!("|{}{}\n", indent - 2, chomp);
    for line in text.trim_end_matches('\n').split('\n') {
        if !line.is_empty() {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_ascii_and_yaml_1_1_safe() {
        assert_eq!(quoted("yes"), "\"yes\"");
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quoted("é\u{7f}\n☃𝄞"), r#""\xe9\x7f\x0a\u2603\U0001d11e""#);
    }

    #[test]
    fn literal_blocks_keep_trailing_newlines() {
        assert_eq!(literal_block("a\n", 4), "|2\n    a\n");
        assert_eq!(literal_block("a", 4), "|2-\n    a\n");
        assert_eq!(literal_block("  a\n\n\n", 4), "|2+\n      a\n\n\n");
        assert_eq!(literal_block("a\n\nb\n", 4), "|2\n    a\n\n    b\n");
        assert!(!is_block_safe("\n\n") && !is_block_safe("a\r\n") && !is_block_safe("é") && is_block_safe("a\tb\n"));
    }
}
