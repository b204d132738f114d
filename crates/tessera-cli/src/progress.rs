//! Progress for long operations, on stderr and only when stderr is a
//! terminal: scripts and `--output json` consumers see nothing of it.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar (when the total is known) or a counting spinner.
#[derive(Debug)]
pub(crate) struct Progress(ProgressBar);

impl Progress {
    /// Progress towards `total` units (`bytes` renders them as sizes).
    pub(crate) fn bar(message: &'static str, total: u64, bytes: bool) -> Self {
        let template = if bytes {
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})"
        } else {
            "{msg} [{bar:30}] {pos}/{len} ({eta})"
        };
        let bar = ProgressBar::with_draw_target(Some(total), target());
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(message);
        Self(bar)
    }

    /// A spinner counting `unit`s, for work of unknown size.
    pub(crate) fn counter(message: &'static str, unit: &'static str) -> Self {
        let bar = ProgressBar::with_draw_target(None, target());
        bar.set_style(
            ProgressStyle::with_template(&format!("{{spinner}} {{msg}}: {{pos}} {unit} ({{elapsed}})"))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }

    /// `n` more units done.
    pub(crate) fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    /// Removes the bar (before the result is printed).
    pub(crate) fn finish(self) {
        self.0.finish_and_clear();
    }
}

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
