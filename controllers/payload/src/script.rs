//! The bootstrap script as shipped: the source (`ps/bootstrap.ps1`) with comment lines, blank
//! lines and indentation removed, and without the optional parts the node does not use.
//!
//! PowerShell gives indentation no meaning; here-strings are kept byte for byte (their closing
//! `'@` stays in column 0). Optional parts sit between `# capwin:if <feature>` and
//! `# capwin:end` lines (whole functions, and their calls in the main flow); they are left out
//! when the spec does not use the feature. Both keep EC2's 16 KiB user data (gzip-compressed)
//! within reach. Tests check that every variant parses, calls no function it lacks, and is the
//! source's token sequence without its comments and left-out parts.

use std::collections::HashMap;
use std::sync::LazyLock;

/// The readable source, with its comments and every optional part (what the tests analyse).
pub const SOURCE: &str = include_str!("../ps/bootstrap.ps1");

/// Optional parts of the script.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features {
    /// `windows.domainJoin` (and the reboot path).
    pub domain_join: bool,
    /// `windows.gmsa.ccgPlugin`.
    pub ccg_plugin: bool,
    /// flannel's External HNS network.
    pub external_network: bool,
    /// `windows.hyperV.enabled`.
    pub hyper_v: bool,
    /// `windows.containerd.source: Download`.
    pub containerd_download: bool,
}

impl Features {
    /// Every optional part.
    pub const ALL: Features = Features {
        domain_join: true,
        ccg_plugin: true,
        external_network: true,
        hyper_v: true,
        containerd_download: true,
    };

    /// The marker names, as `# capwin:if <name>` spells them.
    pub const NAMES: [&'static str; 5] = ["domainJoin", "ccgPlugin", "externalNetwork", "hyperV", "containerdDownload"];

    fn enabled(&self, name: &str) -> bool {
        match name {
            "domainJoin" => self.domain_join,
            "ccgPlugin" => self.ccg_plugin,
            "externalNetwork" => self.external_network,
            "hyperV" => self.hyper_v,
            "containerdDownload" => self.containerd_download,
            other => panic!("bootstrap.ps1 names an unknown feature {other}"),
        }
    }

    /// All 32 combinations.
    pub fn combinations() -> Vec<Features> {
        (0u8..32)
            .map(|m| Features {
                domain_join: m & 1 != 0,
                ccg_plugin: m & 2 != 0,
                external_network: m & 4 != 0,
                hyper_v: m & 8 != 0,
                containerd_download: m & 16 != 0,
            })
            .collect()
    }

    fn label(&self) -> String {
        let on: Vec<&str> = Self::NAMES.iter().copied().filter(|n| self.enabled(n)).collect();
        if on.is_empty() { "none".into() } else { on.join(",") }
    }
}

static SHIPPED: LazyLock<HashMap<Features, String>> =
    LazyLock::new(|| Features::combinations().into_iter().map(|f| (f, minify(SOURCE, f))).collect());

/// The script written to a node that uses `features`.
pub fn shipped(features: Features) -> &'static str {
    &SHIPPED[&features]
}

/// Drops comment-only and blank lines, leading/trailing blanks outside here-strings, and the
/// parts of features that are off.
pub fn minify(src: &str, features: Features) -> String {
    let mut out = format!(
        "# capwin bootstrap (optional parts: {}); comments stripped from capwin's controllers/payload/ps/bootstrap.ps1\n",
        features.label()
    );
    let mut in_here_string = false;
    let mut skipping: Option<&str> = None;
    for line in src.lines() {
        if in_here_string {
            if skipping.is_none() {
                out.push_str(line);
                out.push('\n');
            }
            in_here_string = !(line.starts_with("'@") || line.starts_with("\"@"));
            continue;
        }
        let t = line.trim();
        if let Some(name) = t.strip_prefix("# capwin:if ") {
            assert!(skipping.is_none(), "nested capwin:if");
            if !features.enabled(name) {
                skipping = Some(name);
            }
            continue;
        }
        if t == "# capwin:end" {
            skipping = None;
            continue;
        }
        in_here_string = t.ends_with("@'") || t.ends_with("@\"");
        if skipping.is_some() || t.is_empty() || t.starts_with('#') {
            continue;
        }
        out.push_str(t);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn here_strings_survive_and_comments_and_unused_parts_go() {
        let src = "param($a)\n  # note\n\n    $x = @'\n  keep  # this\n'@\n  Write-Host 'a # b'   \n# capwin:if hyperV\nfunction F {\n    $y = @'\n# capwin:end\n'@\n}\n# capwin:end\nF2\n";
        let off = minify(src, Features::default());
        assert!(off.ends_with("param($a)\n$x = @'\n  keep  # this\n'@\nWrite-Host 'a # b'\nF2\n"), "{off}");
        let on = minify(src, Features { hyper_v: true, ..Default::default() });
        assert!(on.ends_with("Write-Host 'a # b'\nfunction F {\n$y = @'\n# capwin:end\n'@\n}\nF2\n"), "{on}");
        assert!(on.starts_with("# capwin bootstrap (optional parts: hyperV)"));
        assert!(shipped(Features::default()).len() < shipped(Features::ALL).len());
        assert!(shipped(Features::ALL).len() < SOURCE.len());
    }
}
