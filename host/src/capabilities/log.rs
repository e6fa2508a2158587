//! The stage log: `log` and `progress` calls, the guest's stdout and stderr, and
//! the output of programs it runs all go through one [`StageLog`], which redacts
//! secrets and enforces the stage's log cap (`limits.log`).

use super::Subject;
use crate::redact::Redactor;
use crate::report::{Level, Reporter};
use crate::runtime::bindings::log as wit;
use crate::runtime::bindings::types;
use crate::runtime::state::StageState;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

pub struct StageLog {
    subject: Subject,
    /// The stage's log file in the run directory, when there is one.
    file: Option<std::sync::Mutex<std::fs::File>>,
    reporter: Arc<dyn Reporter>,
    redactor: Redactor,
    cap: u64,
    written: AtomicU64,
    flooded: AtomicBool,
}

impl StageLog {
    pub fn new(
        subject: Subject,
        reporter: Arc<dyn Reporter>,
        redactor: Redactor,
        cap: u64,
        file: Option<std::fs::File>,
    ) -> Self {
        Self {
            file: file.map(std::sync::Mutex::new),
            subject,
            reporter,
            redactor,
            cap,
            written: AtomicU64::new(0),
            flooded: AtomicBool::new(false),
        }
    }

    /// Write one line (redacted); returns the redacted text. Past the cap the
    /// line is dropped and the log is marked flooded.
    pub fn write(&self, level: Level, text: &str) -> String {
        let line = self.redactor.redact(text);
        let total = self
            .written
            .fetch_add(line.len() as u64 + 1, Ordering::Relaxed)
            + line.len() as u64
            + 1;
        if total > self.cap {
            if !self.flooded.swap(true, Ordering::Relaxed) {
                self.reporter.log(
                    &self.subject.name,
                    Level::Error,
                    &format!(
                        "log cap of {} reached; further output dropped",
                        crate::units::format_size(self.cap)
                    ),
                );
            }
        } else {
            self.reporter.log(&self.subject.name, level, &line);
            if let Some(f) = &self.file {
                use std::io::Write;
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                // Losing a log line must not fail the stage; the terminal has it.
                let _ = writeln!(f, "{} {}", crate::capabilities::telemetry::now_ms(), line);
            }
        }
        line
    }

    pub fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        let message = self.redactor.redact(message);
        if self
            .written
            .fetch_add(message.len() as u64 + 1, Ordering::Relaxed)
            > self.cap
        {
            self.flooded.store(true, Ordering::Relaxed);
            return;
        }
        self.reporter
            .progress(&self.subject.name, done, total, &message);
    }

    /// True once the stage went past its log cap.
    pub fn flooded(&self) -> bool {
        self.flooded.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }
}

fn level(l: types::Level) -> Level {
    match l {
        types::Level::Trace => Level::Trace,
        types::Level::Debug => Level::Debug,
        types::Level::Info => Level::Info,
        types::Level::Warn => Level::Warn,
        types::Level::Error => Level::Error,
    }
}

impl wit::Host for StageState {
    async fn log(&mut self, lvl: types::Level, message: String) -> wasmtime::Result<()> {
        for line in message.lines() {
            self.log.write(level(lvl), line);
        }
        if self.log.flooded() {
            // Stop the guest: it is writing faster than anyone can read.
            wasmtime::bail!(
                "log cap of {} exceeded",
                crate::units::format_size(self.log.cap())
            );
        }
        Ok(())
    }

    async fn progress(
        &mut self,
        done: u64,
        total: Option<u64>,
        message: String,
    ) -> wasmtime::Result<()> {
        self.log.progress(done, total, &message);
        if self.log.flooded() {
            wasmtime::bail!(
                "log cap of {} exceeded",
                crate::units::format_size(self.log.cap())
            );
        }
        Ok(())
    }
}

/// The guest's stdout or stderr: lines go to the stage log. Past the log cap,
/// writes fail, which stops a guest that floods its output.
#[derive(Clone)]
pub struct LogPipe {
    pub log: Arc<StageLog>,
    pub level: Level,
}

impl wasmtime_wasi::cli::IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            pipe: self.clone(),
            pending: Vec::new(),
        })
    }
}

struct LineWriter {
    pipe: LogPipe,
    pending: Vec<u8>,
}

impl LineWriter {
    fn flush_lines(&mut self, all: bool) {
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.pending[..i]).into_owned();
            self.pipe
                .log
                .write(self.pipe.level, line.trim_end_matches('\r'));
            self.pending.drain(..=i);
        }
        if (all || self.pending.len() > 16 * 1024) && !self.pending.is_empty() {
            let line = String::from_utf8_lossy(&self.pending).into_owned();
            self.pipe.log.write(self.pipe.level, &line);
            self.pending.clear();
        }
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pipe.log.flooded() {
            return Poll::Ready(Err(std::io::Error::other("stage log cap exceeded")));
        }
        self.pending.extend_from_slice(buf);
        self.flush_lines(false);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_lines(false);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_lines(true);
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_lines(true);
    }
}
