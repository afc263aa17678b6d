//! Choosing between KVM and QEMU's TCG emulator. KVM is used only where it really works: the
//! CPU advertises hardware virtualisation (`vmx`/`svm`) and `/dev/kvm` opens read-write. Some
//! hosts (ours) have a `/dev/kvm` that cannot boot a normal kernel; there, TCG is chosen.

use std::fmt;

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What was chosen and why (the reason is shown once to the user when it is TCG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// The facts the choice rests on, read from the host by [`probe`].
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub cpu_flags_virt: bool,
    pub kvm_usable: bool,
    /// TSC frequency in kHz, from `/proc/cpuinfo`.
    pub tsc_khz: Option<u64>,
}

/// Reads the host facts.
pub fn probe() -> HostFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_flags_virt = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let kvm_usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    HostFacts { cpu_flags_virt, kvm_usable, tsc_khz: tsc_khz(&cpuinfo) }
}

fn tsc_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// Decides, honouring a forced value (`FAIZE_ACCEL`, then the config key).
pub fn choose(forced: Option<&str>, facts: &HostFacts) -> Result<AccelChoice, String> {
    match forced.map(str::trim) {
        Some("kvm") => {
            if !facts.kvm_usable {
                return Err("kvm was requested but /dev/kvm cannot be opened read-write: fix its permissions \
                            or use `tcg`"
                    .into());
            }
            Ok(AccelChoice { accel: Accel::Kvm, reason: "kvm was requested".into() })
        }
        Some("tcg") => Ok(AccelChoice { accel: Accel::Tcg, reason: "tcg was requested".into() }),
        None | Some("auto") | Some("") => Ok(if facts.cpu_flags_virt && facts.kvm_usable {
            AccelChoice { accel: Accel::Kvm, reason: "hardware virtualisation is available".into() }
        } else if !facts.kvm_usable {
            AccelChoice { accel: Accel::Tcg, reason: "/dev/kvm is missing or not accessible".into() }
        } else {
            AccelChoice {
                accel: Accel::Tcg,
                reason: "the CPU does not advertise vmx/svm, so this /dev/kvm cannot boot a normal kernel".into(),
            }
        }),
        Some(other) => Err(format!("unknown accelerator {other:?}: use kvm, tcg or auto")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_where_it_really_works() {
        let good = HostFacts { cpu_flags_virt: true, kvm_usable: true, tsc_khz: None };
        let pvm = HostFacts { cpu_flags_virt: false, kvm_usable: true, tsc_khz: None };
        let none = HostFacts::default();
        assert_eq!(choose(None, &good).unwrap().accel, Accel::Kvm);
        assert_eq!(choose(None, &pvm).unwrap().accel, Accel::Tcg);
        assert!(choose(None, &pvm).unwrap().reason.contains("vmx/svm"));
        assert_eq!(choose(Some("auto"), &none).unwrap().accel, Accel::Tcg);
        assert_eq!(choose(Some("tcg"), &good).unwrap().accel, Accel::Tcg);
        assert_eq!(choose(Some("kvm"), &pvm).unwrap().accel, Accel::Kvm);
        assert!(choose(Some("kvm"), &none).is_err());
        assert!(choose(Some("hvf"), &good).unwrap_err().contains("kvm, tcg or auto"));
    }

    #[test]
    fn tsc_from_cpuinfo() {
        assert_eq!(tsc_khz("processor : 0\ncpu MHz\t\t: 2596.142\n"), Some(2596142));
        assert_eq!(tsc_khz("nothing"), None);
    }
}
