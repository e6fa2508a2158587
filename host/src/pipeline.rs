//! Runs a plan: loads every plugin first (a bad one stops the run before any
//! stage starts), then runs the stages in order, each in its own sandbox. A
//! stage whose `needs` failed is skipped; stages that do not depend on a failed
//! one still run. At the end, the run's events go to the telemetry sinks.

use crate::capabilities::Subject;
use crate::capabilities::secrets::SecretStore;
use crate::capabilities::telemetry::{Collector, EventBase, now_ms};
use crate::manifest::ManifestFile;
use crate::plan::{Plan, Unit};
use crate::plugins::PluginSource;
use crate::report::Reporter;
use crate::runtime::bindings::types::{Artifact, EventKind, StageContext, StageOutputs};
use crate::runtime::loader::WorldKind;
use crate::runtime::state::StageState;
use crate::runtime::{Failure, InstanceContext, Plugin, Runtime};
use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one stage ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageResult {
    pub name: String,
    /// `succeeded`, `skipped`, or the failure kind (`failed`, `denied`, `stopped`, ...).
    pub status: String,
    /// The summary on success, the error otherwise.
    pub detail: String,
    pub duration_ms: u64,
    pub outputs: Vec<(String, String)>,
    /// Calls the sandbox refused, with the grant that would allow each.
    pub denials: Vec<String>,
}

impl StageResult {
    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub pipeline: String,
    pub stages: Vec<StageResult>,
}

impl RunResult {
    pub fn succeeded(&self) -> bool {
        self.stages.iter().all(StageResult::succeeded)
    }
}

/// Load and check every plugin of the plan. All problems are reported together.
pub fn load_plugins(
    runtime: &Runtime,
    plan: &Plan,
) -> Result<HashMap<String, Arc<Plugin>>, Vec<String>> {
    let mut plugins = HashMap::new();
    let mut errors = vec![];
    let units = plan
        .stages
        .iter()
        .map(|u| (u, WorldKind::Stage))
        .chain(plan.sinks.iter().map(|u| (u, WorldKind::Sink)));
    // Several stages often use one plugin: read, hash and check it once.
    let mut by_source: HashMap<&PluginSource, Result<Arc<Plugin>, String>> = HashMap::new();
    for (unit, want) in units {
        let loaded = by_source.entry(&unit.source).or_insert_with(|| {
            unit.source
                .read()
                .and_then(|bytes| runtime.load(&bytes))
                .map_err(|e| e.to_string())
        });
        match loaded.clone() {
            Ok(p) if p.world == want => {
                plugins.insert(unit.field.clone(), p);
            }
            Ok(p) => errors.push(format!(
                "{}: `{}` is a {} plugin, but `{}` needs a {} plugin",
                unit.field,
                unit.uses,
                p.world.as_str(),
                unit.field,
                want.as_str()
            )),
            Err(e) => errors.push(format!("{}: {e}", unit.field)),
        }
    }
    if errors.is_empty() {
        Ok(plugins)
    } else {
        Err(errors)
    }
}

/// A run id: sortable by time, unique enough on one machine.
fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:04x}",
        nanos / 1_000_000,
        (nanos as u32 ^ std::process::id()) & 0xffff
    )
}

pub struct Pipeline<'a> {
    pub runtime: &'a Runtime,
    pub plan: &'a Plan,
    pub reporter: Arc<dyn Reporter>,
    pub environment: String,
}

impl Pipeline<'_> {
    /// Run the plan. Errors here are the host's (a plugin that does not load);
    /// stage failures are in the result.
    pub async fn run(&self, file: &ManifestFile) -> anyhow::Result<RunResult> {
        let plugins = load_plugins(self.runtime, self.plan).map_err(|errs| {
            anyhow::anyhow!(
                "refusing to run; these plugins cannot be used:\n  {}",
                errs.join("\n  ")
            )
        })?;
        let mut seen = std::collections::HashSet::new();
        for p in plugins.values().filter(|p| seen.insert(&p.digest)) {
            self.reporter.debug(&format!(
                "{} {} (compile cache: {:?})",
                p.label, p.digest, p.cache
            ));
        }
        let secrets = Arc::new(SecretStore::resolve(file));
        let run_id = new_run_id();
        let base = EventBase {
            run_id: run_id.clone(),
            pipeline: self.plan.pipeline.clone(),
            environment: self.environment.clone(),
        };
        let ctx = InstanceContext {
            workspace: self.plan.workspace.clone(),
            reporter: self.reporter.clone(),
            redactor: secrets.redactor(),
            secrets,
            collector: Collector::default(),
            base: base.clone(),
        };
        self.reporter.note(&format!(
            "run {run_id}: pipeline `{}`, environment `{}`, {} stage(s)",
            self.plan.pipeline,
            self.environment,
            self.plan.stages.len()
        ));
        ctx.collector
            .push(base.event(EventKind::RunStarted, None, &self.plan.pipeline));
        let started = Instant::now();

        let mut done: HashMap<String, (StageResult, Vec<Artifact>)> = HashMap::new();
        let mut results = vec![];
        for unit in &self.plan.stages {
            let blocked = unit
                .needs
                .iter()
                .find(|n| !done.get(*n).is_some_and(|(r, _)| r.succeeded()));
            let result = match blocked {
                Some(need) => {
                    let detail = format!("skipped: it needs `{need}`, which did not succeed");
                    self.reporter
                        .stage_finished(&unit.name, false, Duration::ZERO, &detail);
                    (
                        stage_result(unit, "skipped", detail, Duration::ZERO, vec![], vec![]),
                        vec![],
                    )
                }
                None => {
                    self.run_stage(unit, &plugins[&unit.field], &ctx, &done)
                        .await
                }
            };
            results.push(result.0.clone());
            done.insert(unit.name.clone(), result);
        }

        let result = RunResult {
            run_id,
            pipeline: self.plan.pipeline.clone(),
            stages: results,
        };
        let mut finished = base.event(EventKind::RunFinished, None, &self.plan.pipeline);
        finished.duration_ms = Some(started.elapsed().as_millis() as u64);
        finished.success = Some(result.succeeded());
        ctx.collector.push(finished);
        self.publish(&plugins, &ctx).await;
        Ok(result)
    }

    async fn run_stage(
        &self,
        unit: &Unit,
        plugin: &Plugin,
        ctx: &InstanceContext,
        done: &HashMap<String, (StageResult, Vec<Artifact>)>,
    ) -> (StageResult, Vec<Artifact>) {
        self.reporter.stage_started(&unit.name, &unit.uses);
        let mut event = ctx
            .base
            .event(EventKind::StageStarted, Some(&unit.name), &unit.name);
        ctx.collector.push(event.clone());
        let started = Instant::now();
        let subject = Subject::new(&unit.name, &unit.field);
        let context = StageContext {
            run_id: ctx.base.run_id.clone(),
            pipeline: ctx.base.pipeline.clone(),
            stage: unit.name.clone(),
            environment: ctx.base.environment.clone(),
            config: unit.config.clone(),
            inputs: unit.needs.iter().flat_map(|n| done[n].1.clone()).collect(),
            upstream: unit
                .needs
                .iter()
                .map(|n| StageOutputs {
                    stage: n.clone(),
                    outputs: done[n].0.outputs.clone(),
                })
                .collect(),
        };
        let outcome = match StageState::prepare(ctx, subject, &unit.grants, &unit.limits) {
            Ok(state) => {
                let denials = state.denials().clone();
                let outcome = self
                    .runtime
                    .run_stage(plugin, state, &context, &unit.limits)
                    .await;
                (outcome, denials.take())
            }
            Err(e) => (Err(Failure::Setup(format!("{e:#}"))), vec![]),
        };
        let (outcome, denials) = outcome;
        let outcome = outcome.and_then(|o| {
            check_artifacts(&o.artifacts)
                .map(|()| o)
                .map_err(Failure::Setup)
        });
        let elapsed = started.elapsed();
        for d in &denials {
            self.reporter
                .note(&format!("  denied: {}", ctx.redactor.redact(d)));
        }
        let (result, artifacts) = match outcome {
            Ok(o) => {
                let summary = ctx.redactor.redact(&o.summary);
                let outputs = o
                    .outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), ctx.redactor.redact(v)))
                    .collect();
                self.reporter
                    .stage_finished(&unit.name, true, elapsed, &summary);
                (
                    stage_result(unit, "succeeded", summary, elapsed, outputs, denials),
                    o.artifacts,
                )
            }
            Err(f) => {
                let detail =
                    ctx.redactor
                        .redact(&format!("{}: {}", f.kind(), f.message(&unit.name)));
                self.reporter
                    .stage_finished(&unit.name, false, elapsed, &detail);
                (
                    stage_result(unit, f.kind(), detail, elapsed, vec![], denials),
                    vec![],
                )
            }
        };
        event.kind = EventKind::StageFinished;
        event.timestamp_ms = now_ms();
        event.duration_ms = Some(elapsed.as_millis() as u64);
        event.success = Some(result.succeeded());
        event.properties = vec![
            ("plugin".into(), unit.uses.clone()),
            ("status".into(), result.status.clone()),
        ];
        ctx.collector.push(event);
        (result, artifacts)
    }

    /// Hand the run's events to every sink. A sink that fails is reported; it
    /// does not change the run's result.
    async fn publish(&self, plugins: &HashMap<String, Arc<Plugin>>, ctx: &InstanceContext) {
        if self.plan.sinks.is_empty() {
            return;
        }
        let (events, dropped) = ctx.collector.drain();
        if dropped > 0 {
            self.reporter.note(&format!(
                "telemetry: {dropped} event(s) dropped (buffer full)"
            ));
        }
        for sink in &self.plan.sinks {
            let subject = Subject::new(&sink.name, &sink.field);
            let result = match StageState::prepare(ctx, subject, &sink.grants, &sink.limits) {
                Ok(state) => {
                    let denials = state.denials().clone();
                    let r = self
                        .runtime
                        .publish(
                            &plugins[&sink.field],
                            state,
                            &sink.config,
                            &events,
                            &sink.limits,
                        )
                        .await;
                    for d in denials.take() {
                        self.reporter.note(&format!("  denied: {d}"));
                    }
                    r
                }
                Err(e) => Err(Failure::Setup(format!("{e:#}"))),
            };
            match result {
                Ok(()) => self.reporter.debug(&format!(
                    "{}: published {} event(s)",
                    sink.field,
                    events.len()
                )),
                Err(f) => self.reporter.note(&ctx.redactor.redact(&format!(
                    "warning: telemetry sink {} ({}) failed: {}: {}",
                    sink.field,
                    sink.uses,
                    f.kind(),
                    f.message(&sink.name)
                ))),
            }
        }
    }
}

fn stage_result(
    unit: &Unit,
    status: &str,
    detail: String,
    elapsed: Duration,
    outputs: Vec<(String, String)>,
    denials: Vec<String>,
) -> StageResult {
    StageResult {
        name: unit.name.clone(),
        status: status.to_string(),
        detail,
        duration_ms: elapsed.as_millis() as u64,
        outputs,
        denials,
    }
}

/// Artifact paths must stay inside the workspace: relative, without `..`.
fn check_artifacts(artifacts: &[Artifact]) -> Result<(), String> {
    for a in artifacts {
        if let Some(p) = &a.path
            && Path::new(p)
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "returned artifact `{}` with path `{p}` outside the workspace",
                a.name
            ));
        }
    }
    Ok(())
}
