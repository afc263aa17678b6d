//! Named groups of hosts a rule can refer to (`networks: [npm, github]`).

/// A preset: its name, what it is for, and its rules.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub hosts: &'static [&'static str],
}

/// All presets. The first six are the original tool's, completed with what real use needs.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "npm",
        about: "npm registry",
        hosts: &["registry.npmjs.org", "npmjs.com", "www.npmjs.com", "registry.yarnpkg.com"],
    },
    Preset { name: "pypi", about: "Python packages", hosts: &["pypi.org", "files.pythonhosted.org"] },
    Preset {
        name: "github",
        about: "GitHub: git over HTTPS, API, archives, raw files and release downloads",
        hosts: &[
            "github.com",
            "api.github.com",
            "codeload.github.com",
            "uploads.github.com",
            "raw.githubusercontent.com",
            "objects.githubusercontent.com",
            "release-assets.githubusercontent.com",
        ],
    },
    Preset {
        name: "anthropic",
        about: "Claude Code: the API, login and feature flags",
        hosts: &[
            "api.anthropic.com",
            "anthropic.com",
            "console.anthropic.com",
            "statsig.anthropic.com",
            "claude.ai",
            "platform.claude.com",
        ],
    },
    Preset {
        name: "openai",
        about: "OpenAI API and login",
        hosts: &["api.openai.com", "openai.com", "auth.openai.com", "chatgpt.com"],
    },
    Preset { name: "bun", about: "Bun and its package registry", hosts: &["bun.sh", "registry.npmjs.org"] },
    Preset { name: "debian", about: "apt inside the VM", hosts: &["deb.debian.org", "security.debian.org"] },
    Preset {
        name: "crates",
        about: "Rust crates and toolchains",
        hosts: &["crates.io", "index.crates.io", "static.crates.io", "static.rust-lang.org"],
    },
    Preset {
        name: "go",
        about: "Go modules and toolchains",
        hosts: &["proxy.golang.org", "sum.golang.org", "index.golang.org", "go.dev", "dl.google.com"],
    },
];

/// What `networks:` means when the key is absent.
pub const DEFAULT_RULES: &[&str] = &["npm", "pypi", "github", "anthropic"];

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}
