//! The network allowlist, decided on the host: rules (`policy`) and the presets they can name
//! (`presets`). The policy is pure: it answers "may this name / address and port be reached?"
//! with the rule that decided, so every decision can be logged and explained.

pub mod policy;
pub mod presets;
pub mod proxy;
pub mod resolve;
pub mod splice;

pub use policy::{Decision, Policy, Rule, RuleError};
