//! All user-facing output of the CLI: notices, errors, tables and build progress.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use faize_host::artifacts::{Kind, Progress};
use indicatif::{ProgressBar, ProgressStyle};

/// An error with its whole chain, after `faize: `.
pub fn error(e: &anyhow::Error) {
    eprintln!("faize: {e:#}");
}

/// A one-line notice on stderr (never mixed into the program's stdout).
pub fn notice(msg: &str) {
    eprintln!("faize: {msg}");
}

/// Plain output on stdout, for listings.
pub fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
}

/// Shows image builds: a spinner on a terminal, plain lines otherwise (CI logs).
pub struct BuildProgress {
    bar: std::sync::Mutex<Option<ProgressBar>>,
    fancy: bool,
}

impl BuildProgress {
    pub fn new() -> Self {
        Self { bar: std::sync::Mutex::new(None), fancy: std::io::stderr().is_terminal() }
    }
}

impl Progress for BuildProgress {
    fn start(&self, kind: Kind) {
        if self.fancy {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {wide_msg}").expect("valid template"),
            );
            bar.set_prefix(format!("building {kind}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            *self.bar.lock().unwrap() = Some(bar);
        } else {
            notice(&format!("building the {kind} image"));
        }
    }

    fn step(&self, kind: Kind, step: &str) {
        match &*self.bar.lock().unwrap() {
            Some(bar) => bar.set_message(step.to_string()),
            None => notice(&format!("{kind}: {step}")),
        }
    }

    fn detail(&self, _kind: Kind, detail: &str) {
        if let Some(bar) = &*self.bar.lock().unwrap() {
            bar.set_message(detail.to_string());
        }
    }

    fn finish(&self, kind: Kind, ok: bool) {
        let word = if ok { "built" } else { "failed" };
        match self.bar.lock().unwrap().take() {
            Some(bar) => bar.finish_with_message(word),
            None => notice(&format!("{kind}: {word}")),
        }
    }
}
