//! `~/.faize/config.yaml`: the file format (compatible with the original tool's) and its loading.
//! Unknown keys are errors, and so are values of the wrong kind: nothing is silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A scalar that YAML may give as a string (`4GB`, `2h`) or a number (`0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            U(u64),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a string or a number"))? {
            Raw::S(s) => Ok(Scalar(s)),
            Raw::U(n) => Ok(Scalar(n.to_string())),
        }
    }
}

/// The whole file. Every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `defaults:` (the original tool also reads it as `resources:`).
    #[serde(default, alias = "resources")]
    pub defaults: Defaults,
    /// Network allowlist rules; `None` when the key is absent.
    pub networks: Option<Vec<String>>,
    #[serde(default)]
    pub blocked_paths: Vec<String>,
    #[serde(default)]
    pub claude: ClaudeConfig,
    #[serde(default)]
    pub vm: VmConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub clipboard: ClipboardConfig,
    /// Hosts whose https URLs the guest may open in the user's browser (`*.example.com` for
    /// subdomains); `None`: the hosts Claude Code's login needs.
    pub open_urls: Option<Vec<String>>,
}

/// The clipboard bridge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipboardConfig {
    /// Let copies made in the guest (`xclip -i`, `wl-copy`) reach the host's clipboard.
    #[serde(default)]
    pub copy_to_host: bool,
}

/// How the network allowlist is served (the rules themselves are `networks:`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Names mapped to addresses explicitly, like /etc/hosts (local services, tests).
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, String>,
    /// Most connections of one session at once (default 4096).
    pub max_connections: Option<usize>,
    /// How long to wait for a server to accept a connection (default 10s).
    pub connect_timeout: Option<Scalar>,
    /// The DNS server the proxy asks (IP[:port]); default: the host's resolver.
    pub resolver: Option<String>,
}

/// Session defaults; flags override them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub cpus: Option<u32>,
    pub memory: Option<Scalar>,
    pub timeout: Option<Scalar>,
}

/// The agent-related section of the original tool.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaudeConfig {
    pub persist_credentials: Option<bool>,
    pub git_context: Option<bool>,
    #[serde(default)]
    pub extra_deps: Vec<String>,
    #[serde(default)]
    pub auto_mounts: Vec<String>,
    pub show_diff: Option<bool>,
}

/// How the VM is run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// `kvm`, `tcg` or `auto` (the default).
    pub accel: Option<String>,
    /// Size of the sparse scratch disk that holds the writable layer.
    pub scratch_size: Option<Scalar>,
}

impl Config {
    /// Loads `path`. A missing file is an empty config unless `required` (an explicit `--config`).
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    /// Parses the YAML text of a config file.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// `claude.extra_deps`, checked: Debian package names only (they are passed to the image
    /// build as arguments, never through a shell).
    pub fn extra_deps(&self) -> Result<Vec<String>, String> {
        let mut deps = Vec::new();
        for d in &self.claude.extra_deps {
            let ok = d.len() >= 2
                && d.len() <= 100
                && d.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && d.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                return Err(format!(
                    "claude.extra_deps: {d:?} is not a Debian package name (lowercase letters, digits, '+', '-', '.'; at least 2 characters)"
                ));
            }
            if !deps.contains(d) {
                deps.push(d.clone());
            }
        }
        deps.sort();
        Ok(deps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_deps_must_be_package_names() {
        let c = |deps: &str| Config::parse(&format!("claude:\n  extra_deps: {deps}\n")).unwrap().extra_deps();
        assert_eq!(c("[ripgrep, g++, python3.11, ripgrep]").unwrap(), ["g++", "python3.11", "ripgrep"]);
        for bad in ["'x; rm -rf /'", "'$(id)'", "'-o'", "'Foo'", "'a'", "'a b'", "'pkg=1.0'", "'../x'"] {
            let e = c(&format!("[{bad}]")).unwrap_err();
            assert!(e.contains("not a Debian package name"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_original_readme_example_loads() {
        let c = Config::parse(
            "defaults:\n  cpus: 2\n  memory: 4GB\n  timeout: 2h\nnetworks:\n  - npm\n  - pypi\nblocked_paths:\n  - ~/.ssh\n\
             claude:\n  persist_credentials: false\n  git_context: true\n  extra_deps:\n    - python3\n",
        )
        .unwrap();
        assert_eq!(c.defaults.cpus, Some(2));
        assert_eq!(c.defaults.memory, Some(Scalar("4GB".into())));
        assert_eq!(c.networks.as_deref(), Some(&["npm".to_string(), "pypi".to_string()][..]));
    }

    #[test]
    fn resources_is_an_alias_and_numbers_are_scalars() {
        let c = Config::parse("resources:\n  timeout: 0\n").unwrap();
        assert_eq!(c.defaults.timeout, Some(Scalar("0".into())));
        assert!(Config::parse("").unwrap().networks.is_none());
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let e = Config::parse("defaults:\n  cpu: 2\n").unwrap_err();
        assert!(e.contains("unknown field `cpu`"), "{e}");
        assert!(Config::parse("colour: blue\n").unwrap_err().contains("unknown field `colour`"));
        assert!(Config::parse("defaults:\n  cpus: many\n").is_err());
        assert!(Config::parse("vm:\n  accel: [kvm]\n").is_err());
    }

    #[test]
    fn missing_file_is_empty_unless_required() {
        let p = Path::new("/nonexistent/faize/config.yaml");
        assert!(Config::load(p, false).is_ok());
        assert!(Config::load(p, true).unwrap_err().to_string().contains("/nonexistent/faize/config.yaml"));
    }
}
