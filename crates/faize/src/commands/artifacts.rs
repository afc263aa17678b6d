//! `faize artifacts [list]` and `faize artifacts build [kernel|rootfs|claude|initramfs|all]`.

use anyhow::{bail, Result};
use faize_host::artifacts::{Artifacts, Kind, State};
use faize_host::config::Config;
use faize_host::home::FaizeHome;
use faize_host::units::format_size;

use crate::cli::ArtifactsAction;
use crate::printer::{self, BuildProgress};

pub fn run(action: Option<ArtifactsAction>) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let artifacts = Artifacts::new(&home).with_extra_deps(configured_extra_deps(&home)?);
    match action.unwrap_or(ArtifactsAction::List) {
        ArtifactsAction::List => {
            printer::out(&format!("{:<10} {:<8} {:>10}  {:<16} VERSIONS", "IMAGE", "STATE", "SIZE", "SHA256"));
            for (kind, state) in artifacts.states()? {
                let (word, e) = match &state {
                    State::Ready(e) => ("ready", Some(e)),
                    State::Stale(e) => ("stale", Some(e)),
                    State::Missing => ("missing", None),
                };
                let size = e.map(|e| format_size(e.size)).unwrap_or_else(|| "-".into());
                let sha = e.map(|e| e.sha256[..16].to_string()).unwrap_or_else(|| "-".into());
                let versions = e
                    .map(|e| e.versions.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                printer::out(&format!("{:<10} {:<8} {:>10}  {:<16} {versions}", kind.name(), word, size, sha));
            }
            printer::out(&format!(
                "\nin {}",
                artifacts.path(Kind::Kernel).parent().unwrap_or(std::path::Path::new("")).display()
            ));
            Ok(0)
        }
        ArtifactsAction::Build { which, force } => {
            let kinds: Vec<Kind> = match which.as_str() {
                "all" => Kind::ALL.to_vec(),
                other => match Kind::parse(other) {
                    Some(k) => vec![k],
                    None => bail!("unknown image {other:?}: use kernel, rootfs, claude, initramfs or all"),
                },
            };
            let progress = BuildProgress::new();
            if force {
                for k in kinds {
                    artifacts.rebuild(k, &progress)?;
                }
            } else {
                artifacts.ensure(&kinds, &progress)?;
                printer::notice("images are up to date");
            }
            Ok(0)
        }
    }
}

/// `claude.extra_deps` of the config file.
fn configured_extra_deps(home: &FaizeHome) -> Result<Vec<String>> {
    let config = Config::load(&home.config_file(), false)?;
    config.extra_deps().map_err(anyhow::Error::msg)
}

/// `faize claude rebuild`: the claude image again, with `claude.extra_deps`. The new image is
/// built beside the old one and moved into place only when complete, so a failed build leaves
/// the old image working, and running sessions keep the image file they opened.
pub fn claude_rebuild() -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let deps = configured_extra_deps(&home)?;
    let artifacts = Artifacts::new(&home).with_extra_deps(deps.clone());
    let what = if deps.is_empty() { "no extra packages".to_string() } else { deps.join(", ") };
    printer::notice(&format!("rebuilding the claude image with {what} (claude.extra_deps)"));
    artifacts.rebuild(Kind::Claude, &BuildProgress::new())?;
    printer::notice("the claude image is rebuilt; new sessions use it");
    Ok(0)
}
