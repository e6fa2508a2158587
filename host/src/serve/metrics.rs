//! Prometheus `/metrics` (OpenMetrics text, by `prometheus-client`): runs by
//! status and the queue's depth (read from the store at scrape time, so they
//! are right after a restart), runs executing in this process, and stage
//! durations (a histogram per pipeline and stage, since this process started).

use crate::report::Mark;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    pipeline: String,
    stage: String,
    result: String,
}

pub(super) struct Metrics {
    registry: Registry,
    runs: Family<StatusLabels, Gauge>,
    queue_depth: Gauge,
    executing: Gauge,
    stages: Family<StageLabels, Histogram>,
}

/// The content type of what [`Metrics::render`] returns.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gantry");
        let runs = Family::<StatusLabels, Gauge>::default();
        registry.register("runs", "Runs in the store, by status", runs.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Runs queued and not yet started (including those waiting for an approval)",
            queue_depth.clone(),
        );
        let executing = Gauge::default();
        registry.register(
            "runs_executing",
            "Runs executing in this process",
            executing.clone(),
        );
        // 10 ms to ~45 min.
        let stages = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 19))
        });
        registry.register(
            "stage_duration_seconds",
            "How long stages took, by pipeline, stage and result",
            stages.clone(),
        );
        Metrics {
            registry,
            runs,
            queue_depth,
            executing,
            stages,
        }
    }

    pub fn run_started(&self) {
        self.executing.inc();
    }

    pub fn run_ended(&self) {
        self.executing.dec();
    }

    pub fn stage_finished(&self, pipeline: &str, stage: &str, mark: Mark, elapsed: Duration) {
        self.stages
            .get_or_create(&StageLabels {
                pipeline: pipeline.to_string(),
                stage: stage.to_string(),
                result: mark.word().to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition, with the store's counts (`by_status`, `queued`) as of now.
    pub fn render(&self, by_status: &[(String, i64)], queued: i64) -> String {
        self.runs.clear();
        for (status, n) in by_status {
            self.runs
                .get_or_create(&StatusLabels {
                    status: status.clone(),
                })
                .set(*n);
        }
        self.queue_depth.set(queued);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}
