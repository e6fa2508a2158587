//! The dashboard of `gantry serve` and the self-contained run report of
//! `gantry report` / `gantry run --report`.
//!
//! - [`model`]: a run as its journal and logs have it (the records and
//!   readers of [`crate::journal`] and [`crate::show`]).
//! - [`svg`]: every chart (timeline, DAG, pipeline history), in one place.
//! - [`pages`]: the HTML (maud templates: every value escaped), the embedded
//!   CSS and the small script for live updates.

pub mod model;
pub mod pages;
pub mod svg;

use anyhow::Context;
use std::path::Path;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The report of the run whose directory (journal, logs) is `dir`.
pub fn report_html(dir: &crate::state_dir::PrivateDir) -> anyhow::Result<String> {
    let run = model::RunView::load(dir)?;
    let logs = model::log_tails(dir, &run.stages)?;
    Ok(pages::report(&run, &logs, now_ms()))
}

/// Write the report of the run in `dir` to `file`.
pub fn write_report(dir: &crate::state_dir::PrivateDir, file: &Path) -> anyhow::Result<()> {
    let html = report_html(dir)?;
    std::fs::write(file, html)
        .with_context(|| format!("cannot write the report {}", file.display()))
}
