//! `faize artifacts [list]` and `faize artifacts build [kernel|rootfs|claude|initramfs|all]`.

use anyhow::{bail, Result};
use faize_host::artifacts::{Artifacts, Kind, State};
use faize_host::home::FaizeHome;
use faize_host::units::format_size;

use crate::cli::ArtifactsAction;
use crate::printer::{self, BuildProgress};

pub fn run(action: Option<ArtifactsAction>) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let artifacts = Artifacts::new(&home);
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

/// `faize claude rebuild`.
pub fn claude_rebuild() -> Result<i32> {
    bail!("not built yet")
}
