//! The `#cloud-config` document, limited to what cloudbase-init supports on Windows:
//! `write_files` (always with `permissions`), `users`, `ntp` and one `runcmd` line. No
//! `set_hostname` (it reboots and re-runs everything) and no Jinja header (nothing to template,
//! so `{{` in user content stays literal).

use base64::Engine;
use serde::Serialize;

use crate::validate::Checked;
use crate::{JOIN_CONFIG_PATH, PARAMS_PATH, RUNCMD, RenderInput, SCRIPT_PATH};

/// How a file's content is carried in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// As YAML text: readable, used for UTF-8 text without control characters but `\n`/`\t`.
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

#[derive(Clone, Debug, Serialize)]
struct User {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gecos: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh_authorized_keys: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Ntp {
    enabled: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    servers: Vec<String>,
}

#[derive(Serialize)]
struct CloudConfig<'a> {
    write_files: Vec<WriteFile<'a>>,
    #[serde(skip_serializing_if = "<[User]>::is_empty")]
    users: &'a [User],
    #[serde(skip_serializing_if = "Option::is_none")]
    ntp: Option<&'a Ntp>,
    runcmd: [&'static str; 1],
}

#[derive(Serialize)]
struct WriteFile<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    content: String,
    permissions: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    append: bool,
}

impl Document {
    pub fn build(input: &RenderInput<'_>, c: &Checked, join: String, params: String) -> Self {
        let mut files = vec![
            FileEntry { label: "join configuration".into(), path: JOIN_CONFIG_PATH.into(), bytes: join.into_bytes(), permissions: "0600".into(), append: false },
            FileEntry { label: "parameters".into(), path: PARAMS_PATH.into(), bytes: params.into_bytes(), permissions: "0644".into(), append: false },
            FileEntry { label: "bootstrap script".into(), path: SCRIPT_PATH.into(), bytes: crate::BOOTSTRAP_SCRIPT.as_bytes().to_vec(), permissions: "0644".into(), append: false },
        ];
        for d in &input.spec.windows.containerd.config_drop_ins {
            files.push(FileEntry {
                label: format!("containerd drop-in {}", d.name),
                path: format!(r"C:\run\capwin\containerd-{}.toml", d.name),
                bytes: d.content.as_bytes().to_vec(),
                permissions: "0644".into(),
                append: false,
            });
        }
        for f in &c.files {
            files.push(FileEntry { label: format!("file {}", f.path), path: f.path.clone(), bytes: f.bytes.clone(), permissions: f.permissions.clone(), append: f.append });
        }
        let users = input
            .spec
            .users
            .iter()
            .map(|u| User { name: u.name.clone(), gecos: u.gecos.clone(), groups: u.groups.clone(), ssh_authorized_keys: u.ssh_authorized_keys.clone() })
            .collect();
        let ntp = input.spec.ntp.as_ref().map(|n| Ntp { enabled: n.enabled.unwrap_or(true), servers: n.servers.clone() });
        Self { files, users, ntp }
    }

    /// The document text with each file carried as `carry` decides.
    pub fn to_text(&self, carry: impl Fn(&FileEntry) -> Carry) -> String {
        let write_files = self
            .files
            .iter()
            .map(|f| {
                let (encoding, content) = encode(&f.bytes, carry(f));
                WriteFile { path: &f.path, encoding, content, permissions: &f.permissions, append: f.append }
            })
            .collect();
        let doc = CloudConfig { write_files, users: &self.users, ntp: self.ntp.as_ref(), runcmd: [RUNCMD] };
        let yaml = serde_yaml_ng::to_string(&doc).expect("the cloud-config always serialises");
        format!("#cloud-config\n{yaml}")
    }

    /// Bytes a part takes in a document, for size reports.
    pub fn part_sizes(&self, carry: impl Fn(&FileEntry) -> Carry) -> Vec<(String, usize)> {
        let mut parts: Vec<(String, usize)> = self.files.iter().map(|f| (f.label.clone(), encode(&f.bytes, carry(f)).1.len())).collect();
        let users: usize = self.users.iter().map(|u| u.name.len() + u.ssh_authorized_keys.iter().map(String::len).sum::<usize>()).sum();
        if users > 0 {
            parts.push(("users".into(), users));
        }
        parts
    }
}

/// Whether bytes can travel as YAML text unchanged.
pub fn is_plain_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control()) && !s.contains('\u{feff}'))
}

fn encode(bytes: &[u8], carry: Carry) -> (Option<&'static str>, String) {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match carry {
        Carry::Text => (None, String::from_utf8(bytes.to_vec()).expect("only text is carried as text")),
        Carry::Base64 => (Some("b64"), b64(bytes)),
        Carry::GzipBase64 => (Some("gz+b64"), b64(&crate::budget::gzip(bytes))),
    }
}
