//! Resource limits of one instance: memory (a ResourceLimiter that remembers it
//! refused), CPU time in WebAssembly (epoch ticks), and the epoch ticker itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Engine, ResourceLimiter};

/// One epoch tick. CPU budgets are counted in ticks spent running WebAssembly.
pub const TICK: Duration = Duration::from_millis(10);

/// Resolved limits of a stage. Everything a guest hands the host is bounded,
/// so that a stage cannot make the host hold or write more than these.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory: u64,
    pub cpu: Duration,
    pub log: u64,
    pub timeout: Duration,
    /// Bytes of metric and event names and properties.
    pub telemetry: u64,
    /// Number of metrics and events.
    pub events: u64,
    /// Bytes of output keys and values.
    pub outputs: u64,
    /// Bytes of the summary.
    pub summary: u64,
    /// Bytes of all artifact fields.
    pub artifacts: u64,
    /// Processes (and threads) of the stage's exec'd programs at once.
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 512 << 20,
            cpu: Duration::from_secs(300),
            log: 16 << 20,
            timeout: Duration::from_secs(3600),
            telemetry: 4 << 20,
            events: 10_000,
            outputs: 1 << 20,
            summary: 64 << 10,
            artifacts: 1 << 20,
            processes: 1024,
        }
    }
}

impl Limits {
    /// Check what a stage returned against the limits; the error names the
    /// limit to raise.
    pub fn check_outcome(
        &self,
        outcome: &crate::runtime::bindings::types::Outcome,
    ) -> Result<(), String> {
        use crate::units::format_size;
        let pairs =
            |v: &[(String, String)]| v.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let opt = |v: &Option<String>| v.as_ref().map_or(0, String::len);
        let outputs = pairs(&outcome.outputs) as u64;
        let artifacts = outcome
            .artifacts
            .iter()
            .map(|a| {
                a.name.len()
                    + a.media_type.len()
                    + opt(&a.path)
                    + opt(&a.reference)
                    + opt(&a.digest)
                    + pairs(&a.annotations)
            })
            .sum::<usize>() as u64;
        for (what, size, cap, name) in [
            (
                "a summary",
                outcome.summary.len() as u64,
                self.summary,
                "summary",
            ),
            ("outputs", outputs, self.outputs, "outputs"),
            ("artifacts", artifacts, self.artifacts, "artifacts"),
        ] {
            if size > cap {
                return Err(format!(
                    "returned {what} of {}, more than its limit of {} (raise `limits.{name}`)",
                    format_size(size),
                    format_size(cap)
                ));
            }
        }
        Ok(())
    }
}

/// Caps linear memory and table growth; remembers that it refused so that the
/// resulting trap can be explained.
pub struct MemoryLimiter {
    pub cap: u64,
    pub exceeded: Arc<AtomicBool>,
}

impl MemoryLimiter {
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            exceeded: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.exceeded.store(true, Ordering::Relaxed);
            // An error (not `Ok(false)`) traps at once, instead of letting the
            // guest's allocator abort with an unexplained `unreachable`.
            wasmtime::bail!(
                "memory limit of {} exceeded",
                crate::units::format_size(self.cap)
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Advances the engine's epoch every [`TICK`] on a background thread, for as
/// long as it lives.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("gantry-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .expect("spawn epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
