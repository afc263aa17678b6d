//! Everything faize does on the host. The path from a CLI command to a running VM:
//! [`spec::resolve`] turns flags and config into a [`spec::SessionSpec`]; [`artifacts`] makes sure
//! the images exist; [`supervisor::spawn`] starts the session's supervisor, in which
//! [`session::run`] starts the sidecars and QEMU (command lines from [`vmm`]) and talks to the
//! guest agent until the program exits; [`client::relay`] connects the user's terminal to it
//! ([`attach`]), and [`state`] is what `faize ps` reads.

pub mod accel;
pub mod agent_config;
pub mod artifacts;
pub mod attach;
pub mod callback;
pub mod changes;
pub mod client;
pub mod clipboard;
pub mod config;
pub mod control;
pub mod doctor;
pub mod fsutil;
pub mod git;
pub mod home;
pub mod initramfs;
pub mod mounts;
pub mod process;
pub mod session;
pub mod shares;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod sweep;
pub mod terminal;
pub mod units;
pub mod vmm;
