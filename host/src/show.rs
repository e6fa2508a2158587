//! Text and JSON views for people: the plan, the run summary table, the run
//! history and logs.

use crate::expr::Ref;
use crate::journal::Record;
use crate::pipeline::{RunResult, resolve};
use crate::plan::Plan;
use crate::redact::MASK;
use crate::runtime::Plugin;
use std::collections::HashMap;
use std::sync::Arc;

/// The plan as shown by `gantry plan`: config with variables and the run's
/// known fields filled in, secrets masked, upstream outputs left as expressions.
pub fn plan(plan: &Plan, plugins: &HashMap<String, Arc<Plugin>>) -> serde_json::Value {
    let lookup = |r: &Ref| -> Option<String> {
        match r {
            Ref::Var(n) => plan.variables.get(n).cloned(),
            Ref::Secret(_) => Some(MASK.to_string()),
            Ref::Run(f) if f == "environment" => Some(plan.environment.clone()),
            Ref::Run(f) if f == "pipeline" => Some(plan.pipeline.clone()),
            other => Some(format!("${{{{ {other} }}}}")),
        }
    };
    let unit = |u: &crate::plan::Unit| {
        let p = &plugins[&u.field];
        serde_json::json!({
            "name": u.name,
            "provider": u.uses,
            "plugin": p.label,
            "digest": p.digest,
            // The key whose cosign signature the plugin carries (checked before this view).
            "signed_by": match &u.source {
                crate::plugins::PluginSource::Oci(o) => o.verify.as_ref().map(|k| k.describe()),
                _ => None,
            },
            "needs": u.needs,
            "if": u.condition.as_ref().map(|c| c.0.clone()),
            "retries": u.retries,
            "timeout_s": u.limits.timeout.as_secs(),
            "grants": u.grants.describe(),
            "config": resolve(&u.config, &lookup).unwrap_or_else(|_| u.config.clone()),
        })
    };
    serde_json::json!({
        "pipeline": plan.pipeline,
        "environment": plan.environment,
        "workspace": plan.workspace,
        "cluster": plan.cluster.as_ref().map(|c| serde_json::json!({"kubeconfig": c.kubeconfig, "context": c.context})),
        "executor": plan.executor.as_ref().map_or(serde_json::json!("local"), |k| serde_json::json!({"kubernetes": k})),
        "stages": plan.stages.iter().map(unit).collect::<Vec<_>>(),
        "telemetry": plan.sinks.iter().map(unit).collect::<Vec<_>>(),
    })
}

pub fn plan_text(shown: &serde_json::Value) -> String {
    let mut out = format!(
        "pipeline `{}`, environment `{}`\n",
        shown["pipeline"].as_str().unwrap_or(""),
        shown["environment"].as_str().unwrap_or("")
    );
    if let Some(kubeconfig) = shown["cluster"]["kubeconfig"].as_str() {
        let context = shown["cluster"]["context"]
            .as_str()
            .unwrap_or("its current-context");
        out.push_str(&format!("cluster: {kubeconfig}, context {context}\n"));
    }
    if let Some(k) = shown["executor"].get("kubernetes") {
        let s = |f: &str| k[f].as_str().unwrap_or_default().to_string();
        out.push_str(&format!(
            "executor: each stage a Kubernetes Job in namespace {}, image {}, workspace claim {}\n",
            s("namespace"),
            s("image"),
            s("workspace-claim")
        ));
    }
    let mut section = |title: &str, units: &serde_json::Value| {
        let Some(units) = units.as_array() else {
            return;
        };
        if units.is_empty() {
            return;
        }
        out.push_str(&format!("{title}:\n"));
        for (i, u) in units.iter().enumerate() {
            out.push_str(&format!(
                "{:>3}. {} ← {} ({})\n",
                i + 1,
                u["name"].as_str().unwrap_or(""),
                u["provider"].as_str().unwrap_or(""),
                u["digest"].as_str().unwrap_or("")
            ));
            let needs: Vec<&str> = u["needs"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            if !needs.is_empty() {
                out.push_str(&format!("       needs: {}\n", needs.join(", ")));
            }
            if let Some(c) = u["if"].as_str() {
                out.push_str(&format!("       if: {c}\n"));
            }
            if let Some(k) = u["signed_by"].as_str() {
                out.push_str(&format!(
                    "       signed by {k} (cosign signature verified)\n"
                ));
            }
            for g in u["grants"].as_array().into_iter().flatten() {
                out.push_str(&format!("       grant {}\n", g.as_str().unwrap_or("")));
            }
            out.push_str(&format!("       config: {}\n", u["config"]));
        }
    };
    section("stages", &shown["stages"]);
    section("telemetry", &shown["telemetry"]);
    out
}

/// The end-of-run table: stage, provider, status, duration, key outputs.
pub fn summary_table(result: &RunResult) -> String {
    let rows: Vec<[String; 5]> = result
        .stages
        .iter()
        .map(|s| {
            let outputs: Vec<String> = s
                .outputs
                .iter()
                .take(3)
                .map(|(k, v)| format!("{k}={}", shorten(v, 40)))
                .collect();
            let status = match &s.reused_from {
                Some(from) => format!("{} (reused from run {from})", s.status),
                None => s.status.clone(),
            };
            [
                s.name.clone(),
                s.uses.clone(),
                status,
                format!("{:.1}s", s.duration_ms as f64 / 1000.0),
                outputs.join(" "),
            ]
        })
        .collect();
    let header = ["STAGE", "PROVIDER", "STATUS", "TIME", "OUTPUTS"].map(String::from);
    table(&std::iter::once(header).chain(rows).collect::<Vec<_>>())
}

/// Rows as columns padded to their widest cell, two spaces apart.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// One line of `gantry runs`.
pub fn run_line(id: &str, records: &[Record]) -> String {
    let (pipeline, env, start, promoted) = match records.first() {
        Some(Record::RunStarted {
            pipeline,
            environment,
            ts_ms,
            promoted_from,
            ..
        }) => (
            pipeline.as_str(),
            environment.as_str(),
            *ts_ms,
            promoted_from
                .as_deref()
                .map_or(String::new(), |f| format!("  promoted from {f}")),
        ),
        _ => ("?", "?", 0, String::new()),
    };
    let end = records.iter().rev().find_map(|r| match r {
        Record::RunFinished { success, ts_ms } => {
            Some((if *success { "succeeded" } else { "failed" }, *ts_ms))
        }
        Record::RunCancelled { ts_ms, .. } => Some(("cancelled", *ts_ms)),
        _ => None,
    });
    let (status, duration) = match end {
        Some((s, t)) => (
            s,
            format!("{:.1}s", t.saturating_sub(start) as f64 / 1000.0),
        ),
        None => ("incomplete", "-".into()),
    };
    let finished = records
        .iter()
        .filter(|r| matches!(r, Record::StageFinished { .. }))
        .count();
    format!(
        "{id}  {pipeline}  env={env}  {status}  {duration}  {finished} stage(s) recorded{promoted}"
    )
}

/// The logs of one stage, or of all stages in the order they finished.
pub fn logs(dir: &crate::state_dir::PrivateDir, stage: Option<&str>) -> anyhow::Result<String> {
    let logs = dir
        .subdir("logs", false)?
        .ok_or_else(|| anyhow::anyhow!("{}: the run has no logs", dir.path().display()))?;
    let names: Vec<String> = match stage {
        Some(s) => vec![s.to_string()],
        None => logs
            .entries()?
            .iter()
            .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
            .collect(),
    };
    let mut out = String::new();
    for name in names {
        let lines = log_lines(&logs, &name)?.ok_or_else(|| {
            anyhow::anyhow!("no log for stage `{name}` in {}", logs.path().display())
        })?;
        if stage.is_none() {
            out.push_str(&format!("== {name}\n"));
        }
        for (_, text) in lines {
            out.push_str(&text);
            out.push('\n');
        }
    }
    Ok(out)
}

/// One line of a stage's log file: `<unix ms> <text>`.
pub fn parse_log_line(line: &str) -> LogLine {
    match line.split_once(' ') {
        Some((ts, text)) => (ts.parse().ok(), text.to_string()),
        None => match line.parse() {
            Ok(ts) => (Some(ts), String::new()),
            Err(_) => (None, line.to_string()),
        },
    }
}

/// A log line: when it was written (unix ms, when the line says) and its text.
pub type LogLine = (Option<u64>, String);

/// The lines of one stage's log in a run's `logs/` directory, as (unix ms,
/// text); `None` when the stage wrote no log.
pub fn log_lines(
    logs: &crate::state_dir::PrivateDir,
    stage: &str,
) -> anyhow::Result<Option<Vec<LogLine>>> {
    let Some(bytes) = logs.read(&format!("{stage}.log"))? else {
        return Ok(None);
    };
    Ok(Some(
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(parse_log_line)
            .collect(),
    ))
}
