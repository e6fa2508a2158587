//! What the user sees while a pipeline runs. Every text that reaches a
//! [`Reporter`] has already been through the run's [`crate::redact::Redactor`].

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

/// Severity of a log line, as in the WIT `level` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Trace => "trace: ",
            Level::Debug => "debug: ",
            Level::Info => "",
            Level::Warn => "warn: ",
            Level::Error => "error: ",
        }
    }
}

/// How a stage ended, as shown by its mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Succeeded,
    Failed,
    /// Skipped by its `if:` or because a stage it needs did not succeed.
    Skipped,
}

impl Mark {
    pub fn symbol(self) -> &'static str {
        match self {
            Mark::Succeeded => "✔",
            Mark::Failed => "✘",
            Mark::Skipped => "⊘",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Mark::Succeeded => "succeeded",
            Mark::Failed => "failed",
            Mark::Skipped => "skipped",
        }
    }
}

/// Receives run progress. Implementations must be cheap: they are called from
/// inside host functions.
pub trait Reporter: Send + Sync {
    fn stage_started(&self, stage: &str, plugin: &str);
    fn log(&self, stage: &str, level: Level, line: &str);
    fn progress(&self, stage: &str, done: u64, total: Option<u64>, message: &str);
    /// `detail` is the stage's summary, error or reason for skipping.
    fn stage_finished(&self, stage: &str, mark: Mark, elapsed: Duration, detail: &str);
    /// Something the host itself wants to say (cache use, denials, summary).
    fn note(&self, text: &str);
    /// Debug-level host messages, shown with `--verbose`.
    fn debug(&self, text: &str);
}

/// Plain line output, one line per event, prefixed by the stage name.
pub struct Console {
    verbose: bool,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Console {
    pub fn new(verbose: bool) -> Self {
        Self {
            verbose,
            out: Mutex::new(Box::new(std::io::stdout())),
        }
    }

    /// For when stdout carries machine-readable output (`--json`).
    pub fn on_stderr(verbose: bool) -> Self {
        Self {
            verbose,
            out: Mutex::new(Box::new(std::io::stderr())),
        }
    }

    fn line(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed stdout (e.g. `| head`) must not kill a running pipeline.
        let _ = writeln!(out, "{text}");
    }
}

impl Reporter for Console {
    fn stage_started(&self, stage: &str, plugin: &str) {
        self.line(&format!("▶ {stage} ({plugin})"));
    }

    fn log(&self, stage: &str, level: Level, line: &str) {
        if level < Level::Info && !self.verbose {
            return;
        }
        self.line(&format!("  {stage} │ {}{line}", level.tag()));
    }

    fn progress(&self, stage: &str, done: u64, total: Option<u64>, message: &str) {
        let count = match total {
            Some(t) => format!("[{done}/{t}]"),
            None => format!("[{done}]"),
        };
        self.line(&format!("  {stage} │ {count} {message}"));
    }

    fn stage_finished(&self, stage: &str, mark: Mark, elapsed: Duration, detail: &str) {
        let secs = elapsed.as_secs_f64();
        self.line(&format!("{} {stage} ({secs:.2}s): {detail}", mark.symbol()));
    }

    fn note(&self, text: &str) {
        self.line(text);
    }

    fn debug(&self, text: &str) {
        if self.verbose {
            self.line(&format!("debug: {text}"));
        }
    }
}

/// Discards everything; for benchmarks and embedding.
pub struct Silent;

impl Reporter for Silent {
    fn stage_started(&self, _: &str, _: &str) {}
    fn log(&self, _: &str, _: Level, _: &str) {}
    fn progress(&self, _: &str, _: u64, _: Option<u64>, _: &str) {}
    fn stage_finished(&self, _: &str, _: Mark, _: Duration, _: &str) {}
    fn note(&self, _: &str) {}
    fn debug(&self, _: &str) {}
}

/// Render a diagnostic with its source snippet. Colour only on a terminal, so
/// that logs and tests see plain text.
pub fn render_diagnostic(diag: &dyn miette::Diagnostic) -> String {
    let tty = std::io::stderr().is_terminal();
    let theme = if tty && std::env::var_os("NO_COLOR").is_none() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let mut out = String::new();
    // Wrap for people at a terminal; keep one message per line for logs and grep.
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_wrap_lines(tty);
    if handler.render_report(&mut out, diag).is_err() {
        out = diag.to_string();
    }
    out
}

/// Live progress on a terminal: one spinner per running stage showing its
/// latest line or progress, with finished stages and notes printed above.
pub struct Live {
    verbose: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl Live {
    /// Live output when stdout is a terminal and not in CI; plain lines otherwise.
    pub fn wanted() -> bool {
        std::io::stdout().is_terminal()
            && std::env::var_os("CI").is_none()
            && std::env::var_os("TF_BUILD").is_none()
    }

    pub fn new(verbose: bool) -> Self {
        Self {
            verbose,
            multi: indicatif::MultiProgress::new(),
            bars: Mutex::default(),
        }
    }

    fn bar(&self, stage: &str) -> Option<indicatif::ProgressBar> {
        self.bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stage)
            .cloned()
    }

    fn println(&self, text: &str) {
        let _ = self.multi.println(text);
    }
}

impl Reporter for Live {
    fn stage_started(&self, stage: &str, plugin: &str) {
        let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(stage.to_string());
        bar.set_message(format!("({plugin})"));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stage.to_string(), bar);
    }

    fn log(&self, stage: &str, level: Level, line: &str) {
        if level < Level::Info && !self.verbose {
            return;
        }
        self.println(&format!("  {stage} │ {}{line}", level.tag()));
        if let Some(bar) = self.bar(stage) {
            bar.set_message(line.to_string());
        }
    }

    fn progress(&self, stage: &str, done: u64, total: Option<u64>, message: &str) {
        if let Some(bar) = self.bar(stage) {
            let count = total.map_or(format!("[{done}]"), |t| format!("[{done}/{t}]"));
            bar.set_message(format!("{count} {message}"));
        }
    }

    fn stage_finished(&self, stage: &str, mark: Mark, elapsed: Duration, detail: &str) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stage)
        {
            bar.finish_and_clear();
        }
        self.println(&format!(
            "{} {stage} ({:.2}s): {detail}",
            mark.symbol(),
            elapsed.as_secs_f64()
        ));
    }

    fn note(&self, text: &str) {
        self.println(text);
    }

    fn debug(&self, text: &str) {
        if self.verbose {
            self.println(&format!("debug: {text}"));
        }
    }
}
