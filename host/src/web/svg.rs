//! Every picture the dashboard and the report draw, as inline SVG built with
//! the same templates as the pages (so every label is escaped): the run's
//! timeline (Gantt bars from the journal's times), its stages as a DAG, and
//! a pipeline's duration and failure-rate chart.

use super::model::StageView;
use maud::{Markup, html};
use std::collections::BTreeMap;

/// The CSS class of a status: the colour of its bar, node or dot.
pub fn status_class(status: &str) -> &'static str {
    match status {
        "succeeded" => "ok",
        "skipped" | "superseded" => "skip",
        "running" => "run",
        "pending" | "queued" => "wait",
        "cancelled" | "rejected" => "cancel",
        _ => "bad",
    }
}

/// Seconds, for axis labels and tooltips.
pub fn secs(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 10.0 {
        format!("{s:.1}s")
    } else if s < 600.0 {
        format!("{s:.0}s")
    } else {
        format!("{:.0}m", s / 60.0)
    }
}

const ROW: f64 = 24.0;
const LABEL: f64 = 150.0;
const WIDTH: f64 = 760.0;

/// Gantt bars: each stage from its (first attempt's) start to its end, or to
/// `end_ms` while it runs, on one time axis from `start_ms`.
pub fn timeline(stages: &[StageView], start_ms: u64, end_ms: u64) -> Markup {
    let span = end_ms.saturating_sub(start_ms).max(1) as f64;
    // Room on the right for the last bar's label.
    let plot = WIDTH - LABEL - 110.0;
    let x = |t: u64| LABEL + (t.saturating_sub(start_ms) as f64 / span) * plot;
    let height = ROW * stages.len() as f64 + 30.0;
    let ticks = 5;
    html! {
        svg class="timeline" xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox=(format!("0 0 {WIDTH} {height}")) width=(WIDTH) height=(height) {
            title { "Timeline of the run's stages" }
            @for i in 0..=ticks {
                @let t = start_ms + (span as u64) * i / ticks;
                @let tx = x(t);
                line class="grid" x1=(tx) x2=(tx) y1="0" y2=(height - 18.0) {}
                text class="axis" x=(tx) y=(height - 4.0) text-anchor="middle" {
                    (secs(t - start_ms))
                }
            }
            @for (i, s) in stages.iter().enumerate() {
                @let y = ROW * i as f64;
                text class="label" x="4" y=(y + 16.0) { (s.name) }
                @if let Some(from) = s.started_ms {
                    @let to = s.finished_ms.unwrap_or(end_ms).max(from);
                    @let (x1, x2) = (x(from), x(to));
                    rect class=(format!("bar {}", status_class(&s.status)))
                        x=(x1) y=(y + 4.0) width=((x2 - x1).max(2.0)) height=(ROW - 8.0) rx="3" {
                        title { (s.name) " " (s.status) " " (secs(to - from)) }
                    }
                    text class="barlabel" x=(x2 + 4.0) y=(y + 16.0) {
                        (s.status) " " (secs(to - from))
                    }
                } @else {
                    text class="barlabel" x=(LABEL) y=(y + 16.0) { (s.status) }
                }
            }
        }
    }
}

/// The stages as a graph: a column per depth (the longest chain of `needs`
/// before it), an arrow from each needed stage.
pub fn dag(stages: &[StageView]) -> Markup {
    let index: BTreeMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // Depth by relaxation: needs form a DAG (the manifest checks), so at most
    // n rounds settle it; the bound also guards against a bad record.
    let mut depth = vec![0usize; stages.len()];
    for _ in 0..stages.len() {
        let mut changed = false;
        for (i, s) in stages.iter().enumerate() {
            for n in &s.needs {
                if let Some(&j) = index.get(n.as_str())
                    && depth[i] < depth[j] + 1
                {
                    depth[i] = depth[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let (w, h, gap_x, gap_y) = (140.0, 34.0, 50.0, 14.0);
    let mut rows = vec![0usize; stages.len() + 1];
    let mut pos = vec![(0.0, 0.0); stages.len()];
    for (i, d) in depth.iter().enumerate() {
        pos[i] = (
            10.0 + *d as f64 * (w + gap_x),
            10.0 + rows[*d] as f64 * (h + gap_y),
        );
        rows[*d] += 1;
    }
    let columns = depth.iter().max().map_or(1, |d| d + 1);
    let tallest = rows.iter().max().copied().unwrap_or(1).max(1);
    let width = 20.0 + columns as f64 * (w + gap_x) - gap_x;
    let height = 20.0 + tallest as f64 * (h + gap_y) - gap_y;
    html! {
        svg class="dag" xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox=(format!("0 0 {width} {height}")) width=(width) height=(height) {
            title { "The run's stages and what each needs" }
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5"
                    markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead" {}
                }
            }
            @for (i, s) in stages.iter().enumerate() {
                @for n in &s.needs {
                    @if let Some(&j) = index.get(n.as_str()) {
                        @let (x1, y1) = (pos[j].0 + w, pos[j].1 + h / 2.0);
                        @let (x2, y2) = (pos[i].0, pos[i].1 + h / 2.0);
                        path class="edge" marker-end="url(#arrow)"
                            d=(format!("M {x1} {y1} C {} {y1}, {} {y2}, {x2} {y2}", x1 + gap_x / 2.0, x2 - gap_x / 2.0)) {}
                    }
                }
            }
            @for (i, s) in stages.iter().enumerate() {
                @let (x, y) = pos[i];
                g class=(format!("node {}", status_class(&s.status))) {
                    rect x=(x) y=(y) width=(w) height=(h) rx="6" {
                        title { (s.name) ": " (s.status) }
                    }
                    text x=(x + 8.0) y=(y + 15.0) class="name" { (clip(&s.name, 18)) }
                    text x=(x + 8.0) y=(y + 28.0) class="status" { (s.status) }
                }
            }
        }
    }
}

/// One point of a pipeline's chart: a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPoint {
    pub label: String,
    pub duration_ms: u64,
    pub failed: bool,
}

/// A bar per run (its duration, red when it failed), oldest on the left, and
/// the failure rate over the last `window` runs at each point as a line on a
/// 0-100% scale.
pub fn pipeline_chart(points: &[RunPoint], window: usize) -> Markup {
    let (width, height, left, bottom, top) = (760.0, 220.0, 50.0, 24.0, 10.0);
    let plot_h = height - bottom - top;
    let longest = points
        .iter()
        .map(|p| p.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let step = (width - left - 40.0) / points.len().max(1) as f64;
    let bar_w = (step * 0.7).clamp(1.0, 40.0);
    let rate: Vec<f64> = (0..points.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(window.max(1));
            let seen = &points[from..=i];
            seen.iter().filter(|p| p.failed).count() as f64 / seen.len() as f64
        })
        .collect();
    let line: Vec<String> = rate
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{:.1},{:.1}",
                left + step * i as f64 + step / 2.0,
                top + plot_h * (1.0 - r)
            )
        })
        .collect();
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox=(format!("0 0 {width} {height}")) width=(width) height=(height) {
            title { "Run duration (bars) and failure rate over the last " (window) " runs (line)" }
            line class="grid" x1=(left) x2=(width - 40.0) y1=(top + plot_h) y2=(top + plot_h) {}
            text class="axis" x=(left - 4.0) y=(top + 8.0) text-anchor="end" { (secs(longest as u64)) }
            text class="axis" x=(left - 4.0) y=(top + plot_h) text-anchor="end" { "0" }
            text class="axis rate" x=(width - 36.0) y=(top + 8.0) { "100%" }
            text class="axis rate" x=(width - 36.0) y=(top + plot_h) { "0%" }
            @for (i, p) in points.iter().enumerate() {
                @let h = plot_h * p.duration_ms as f64 / longest;
                @let x = left + step * i as f64 + (step - bar_w) / 2.0;
                rect class=(if p.failed { "bar bad" } else { "bar ok" })
                    x=(x) y=(top + plot_h - h) width=(bar_w) height=(h.max(1.0)) {
                    title { (p.label) ": " (secs(p.duration_ms)) (if p.failed { ", failed" } else { "" }) }
                }
            }
            @if !line.is_empty() {
                polyline class="rate" points=(line.join(" ")) {}
            }
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, needs: &[&str], from: u64, to: Option<u64>, status: &str) -> StageView {
        StageView {
            name: name.into(),
            status: status.into(),
            started_ms: Some(from),
            finished_ms: to,
            needs: needs.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn bars_sit_at_their_real_times() {
        let stages = [
            stage("build", &[], 1000, Some(3000), "succeeded"),
            stage("deploy", &["build"], 3000, None, "running"),
        ];
        let svg = timeline(&stages, 1000, 5000).into_string();
        // 4 s over 500 px from x=150: build spans 150..400, deploy 400..650.
        assert!(
            svg.contains(r#"class="bar ok" x="150" y="4" width="250""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="bar run" x="400" y="28" width="250""#),
            "{svg}"
        );
    }

    #[test]
    fn the_graph_puts_a_stage_right_of_what_it_needs() {
        let stages = [
            stage("test", &["build"], 0, None, "pending"),
            stage("build", &[], 0, None, "succeeded"),
            stage("lint", &[], 0, None, "failed"),
            stage("deploy", &["test", "lint"], 0, None, "pending"),
        ];
        let svg = dag(&stages).into_string();
        assert_eq!(svg.matches(r#"class="edge""#).count(), 3, "{svg}");
        // build and lint at depth 0, test at 1, deploy at 2.
        assert!(
            svg.contains(r#"<g class="node wait"><rect x="390""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"<g class="node ok"><rect x="10" y="10""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"<g class="node bad"><rect x="10" y="58""#),
            "{svg}"
        );
    }

    #[test]
    fn the_failure_rate_line_follows_the_window() {
        let p = |failed| RunPoint {
            label: "r".into(),
            duration_ms: 1000,
            failed,
        };
        let svg = pipeline_chart(&[p(false), p(true), p(true), p(false)], 2).into_string();
        // Rates 0, 0.5, 1, 0.5 on a 186 px plot from y=10.
        assert!(
            svg.contains(r#"points="133.8,196.0 301.2,103.0 468.8,10.0 636.2,103.0""#),
            "{svg}"
        );
        assert_eq!(svg.matches(r#"class="bar bad""#).count(), 2);
    }
}
