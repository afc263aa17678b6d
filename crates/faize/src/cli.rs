//! The command-line interface, as clap definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "faize", version, about = "Run AI coding agents in throw-away microVMs")]
#[command(after_help = "Exit codes: the program's own status is passed through; 124 the session timed out; \
125 faize itself failed; 126 the command could not be run; 127 the command was not found.")]
pub struct Cli {
    /// Show debug logs on stderr
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an interactive session running the agent (claude), or CMD
    Start(SessionArgs),
    /// Run CMD in a new VM, non-interactively (stdin, stdout and stderr kept separate)
    Run(SessionArgs),
    /// List or build the kernel and root images
    Artifacts {
        #[command(subcommand)]
        action: Option<ArtifactsAction>,
    },
    /// Check the prerequisites and say how to fix what is missing
    Doctor,
    /// The network allowlist
    Network {
        #[command(subcommand)]
        action: NetworkAction,
    },
    /// Show a session's logs
    Logs {
        /// Session id (a unique prefix is enough)
        id: String,
        /// The network audit log: every DNS answer and connection decision
        #[arg(long)]
        net: bool,
    },
    /// List sessions: the running ones, or all with --all
    Ps {
        /// Ended sessions too
        #[arg(short, long)]
        all: bool,
        /// Print JSON (see the README for the fields)
        #[arg(long)]
        json: bool,
    },
    /// Reattach the terminal to a running session (~. detaches again)
    Attach {
        /// Session id, name, or a unique prefix of the id
        id: String,
    },
    /// Run another command in a running session, as its user, in the project
    Exec {
        /// Session id, name, or a unique prefix of the id
        id: String,
        /// Pass this terminal's input to the command
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Stop sessions: the program gets SIGTERM, then SIGKILL after the grace period
    #[command(alias = "stop")]
    Kill {
        /// Session ids, names, or unique prefixes of ids
        ids: Vec<String>,
        /// Every running session
        #[arg(long)]
        all: bool,
        /// Kill at once: the supervisor, QEMU and the sidecars get SIGKILL
        #[arg(long)]
        force: bool,
        /// Seconds the program gets after SIGTERM
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        grace: u64,
    },
    /// Remove the folders of ended sessions (logs, scratch disks, change summaries)
    Prune {
        /// Stop the running sessions first and remove them too
        #[arg(long)]
        all: bool,
        /// Also remove the built images
        #[arg(long)]
        artifacts: bool,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
    /// Claude Code's image
    Claude {
        #[command(subcommand)]
        action: ClaudeAction,
    },
    /// (internal) a session's supervisor
    #[command(name = "__supervise", hide = true)]
    Supervise,
    /// Show the changes a session made to the shared folders (the latest session by default)
    Diff {
        /// Session id (a unique prefix is enough)
        id: Option<String>,
        /// Print JSON: {"session": ID, "shares": [{"root": PATH, "changes": [{"kind": "created"|
        /// "modified"|"deleted", "path", "size", "files"?, "flag"?}]}]}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsAction {
    /// List the images, their state and inputs (the default)
    List,
    /// Build images: kernel, rootfs, claude, initramfs or all (default: all)
    Build {
        #[arg(default_value = "all")]
        which: String,
        /// Rebuild even when the image is up to date
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClaudeAction {
    /// Rebuild the claude image with claude.extra_deps (Debian packages) baked in
    Rebuild,
}

#[derive(Debug, Subcommand)]
pub enum NetworkAction {
    /// List the presets a `networks:` rule can name, with their hosts
    Presets,
    /// Allow RULE in a running session, without restarting it
    Allow { id: String, rule: String },
    /// Remove RULE (as it was written) from a running session
    Deny { id: String, rule: String },
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Start in the background and print the session's id (`faize attach ID` to use it)
    #[arg(short, long)]
    pub detach: bool,
    /// A name to refer to the session by (letters, digits, '-', '_', '.')
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Project directory shared read-write with the VM [default: current directory]
    #[arg(short = 'p', long = "project", value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Share a host folder or file: SRC[:DST][:ro|rw], read-only unless rw; write a ':' in a
    /// path as \: (repeatable) [config: claude.auto_mounts]
    #[arg(short = 'm', long = "mount", value_name = "SPEC")]
    pub mounts: Vec<String>,
    /// Do not share the repository's .git when the project is inside one [config: claude.git_context]
    #[arg(long)]
    pub no_git_context: bool,
    /// Keep the agent's credentials (a login, a token refresh) for the next session, in
    /// ~/.faize/credentials [config: claude.persist_credentials]
    #[arg(long)]
    pub persist_credentials: bool,
    /// Allow network access: a preset, all, none, example.com, *.example.com, an IP or CIDR, each
    /// with an optional :PORT (repeatable; replaces the config's networks:) [default: npm, pypi,
    /// github, anthropic]
    #[arg(short = 'n', long = "network", value_name = "RULE")]
    pub network: Vec<String>,
    /// Do not list the changes made to the shared folders at the end [config: claude.show_diff]
    #[arg(long)]
    pub no_diff: bool,
    /// Virtual CPUs [config: defaults.cpus, default: 2]
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Memory, e.g. 4GB, 4GiB, 512M [config: defaults.memory, default: 4GB]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Session timeout, e.g. 2h, 90m, 1h30m; 0 for none [config: defaults.timeout, default: 2h]
    #[arg(short = 't', long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Config file [default: ~/.faize/config.yaml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Root image: claude (with Claude Code, the default) or rootfs (without)
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The program and its arguments [start: default claude]
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}
