//! `capwin release --version vX.Y.Z --out DIR`: a clusterctl repository layout, as a GitHub
//! release or a local repository (`clusterctl init --bootstrap capwin --infrastructure capwin`
//! with a `providers:` entry in clusterctl.yaml pointing at the folder):
//!
//! ```text
//! DIR/bootstrap-capwin/vX.Y.Z/{bootstrap-components.yaml, metadata.yaml}
//! DIR/infrastructure-capwin/vX.Y.Z/{infrastructure-components.yaml, metadata.yaml, cluster-template-*.yaml}
//! ```
//!
//! The components are the kustomize output of `config/bootstrap` and `config/infrastructure`
//! (rendered with `kubectl kustomize`, which must be installed) with the image's default tag set
//! to the version; `metadata.yaml` declares the release series and its contract, `v1beta2`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

/// The image the kustomize roots name; its tag becomes the release version.
const DEV_IMAGE: &str = "ghcr.io/capwin/capwin:dev";

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// Release version, vMAJOR.MINOR.PATCH.
    #[arg(long)]
    version: String,
    /// Output folder (the clusterctl repository root).
    #[arg(long, default_value = "out/release")]
    out: PathBuf,
    /// The capwin checkout to package.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// kubectl to render kustomize with.
    #[arg(long, default_value = "kubectl")]
    kubectl: String,
}

/// `vX.Y.Z` → (X, Y).
fn series(version: &str) -> anyhow::Result<(u32, u32)> {
    let core = version.strip_prefix('v').unwrap_or_default().split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        bail!("--version: {version:?} is not a version like v0.1.0");
    }
    Ok((parts[0].parse()?, parts[1].parse()?))
}

/// The clusterctl `Metadata` for one release series.
pub fn metadata(major: u32, minor: u32) -> String {
    format!(
        "apiVersion: clusterctl.cluster.x-k8s.io/v1alpha3\nkind: Metadata\nreleaseSeries:\n- major: {major}\n  minor: {minor}\n  contract: v1beta2\n"
    )
}

fn render(kubectl: &str, root: &Path) -> anyhow::Result<String> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(root)
        .output()
        .with_context(|| format!("running {kubectl} kustomize (kubectl must be installed)"))?;
    if !out.status.success() {
        bail!("{kubectl} kustomize {}: {}", root.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub fn run(args: ReleaseArgs) -> anyhow::Result<()> {
    let (major, minor) = series(&args.version)?;
    let image = format!("ghcr.io/capwin/capwin:{}", args.version);
    for (provider, root, file) in [
        ("bootstrap-capwin", "config/bootstrap", "bootstrap-components.yaml"),
        ("infrastructure-capwin", "config/infrastructure", "infrastructure-components.yaml"),
    ] {
        let rendered = render(&args.kubectl, &args.repo.join(root))?;
        if !rendered.contains(DEV_IMAGE) {
            bail!("{root} no longer names {DEV_IMAGE}; the release cannot set the image tag");
        }
        let dir = args.out.join(provider).join(&args.version);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(file), rendered.replace(DEV_IMAGE, &image))?;
        std::fs::write(dir.join("metadata.yaml"), metadata(major, minor))?;
        if provider.starts_with("infrastructure") {
            let mut templates: Vec<PathBuf> = std::fs::read_dir(args.repo.join("templates"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("cluster-template-") && n.ends_with(".yaml"))
                })
                .collect();
            templates.sort();
            for t in templates {
                std::fs::copy(&t, dir.join(t.file_name().expect("a file name")))?;
            }
        }
        println!("{}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_metadata() {
        assert_eq!(series("v0.1.0").unwrap(), (0, 1));
        assert_eq!(series("v1.12.3-rc.1").unwrap(), (1, 12));
        for bad in ["0.1.0", "v1.2", "vx.y.z", "v1..2"] {
            assert!(series(bad).is_err(), "{bad}");
        }
        let m: serde_yaml_ng::Value = serde_yaml_ng::from_str(&metadata(0, 1)).unwrap();
        assert_eq!(m["releaseSeries"][0]["contract"], "v1beta2");
        assert_eq!(m["releaseSeries"][0]["minor"], 1);
    }
}
