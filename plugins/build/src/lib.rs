//! Built-in stage `build`: build the app, run its unit tests, and build its
//! container image.
//!
//! - `build` and `test`: steps run through the `exec` capability; test counts
//!   (passed / failed / ignored) are read from cargo's `test result:` lines, or
//!   from a JUnit XML report, and become outputs and metrics.
//! - `image` with `backend: daemonless`: an OCI image layout written by this
//!   plugin, no Docker: one reproducible layer (sorted entries, fixed owner,
//!   modes and mtimes, gzip without timestamps) on `scratch` or on a base image
//!   given as an OCI layout. The same inputs give the same digest.
//! - `image` with `backend: dockerfile`: a Dockerfile build through the `engine`
//!   capability, exported to the same kind of layout.
//!
//! Either way the stage's artifact is the layout: path, manifest digest and ref
//! name, so the registry stage does not care which backend built it.

mod layout;

use gantry_sdk::steps::{STEP_SCHEMA, Step};
use gantry_sdk::{Artifact, CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Commands that build the app.
    #[serde(default)]
    build: Vec<Step>,
    /// Commands that run its unit tests.
    #[serde(default)]
    test: Vec<Step>,
    /// A JUnit XML report written by the test steps, relative to the workspace.
    #[serde(default)]
    junit: Option<String>,
    #[serde(default)]
    image: Option<Image>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Image {
    /// `daemonless` (default) or `dockerfile`.
    #[serde(default = "daemonless")]
    backend: String,
    /// The ref name recorded in the layout's index.json, e.g. `hello:1.0`.
    #[serde(rename = "ref")]
    reference: String,
    /// Where to write the OCI image layout, relative to the workspace.
    output: String,
    // Daemonless.
    /// `scratch` (default) or the path of an OCI image layout to build on.
    #[serde(default)]
    base: Option<String>,
    /// Files or directories of the workspace to put in the image.
    #[serde(default)]
    files: Vec<layout::FileSpec>,
    #[serde(default)]
    uid: u64,
    #[serde(default)]
    gid: u64,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Exposed ports, e.g. `8080/tcp`.
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// `org.opencontainers.image.source`, e.g. the repository URL.
    #[serde(default)]
    source: Option<String>,
    /// `org.opencontainers.image.revision`, e.g. `${{ run.commit }}`.
    #[serde(default)]
    revision: Option<String>,
    /// Timestamp for every file and for the image (seconds since 1970); the
    /// SOURCE_DATE_EPOCH environment variable when granted; else 0.
    #[serde(default)]
    source_date_epoch: Option<u64>,
    #[serde(default = "linux")]
    os: String,
    #[serde(default = "amd64")]
    architecture: String,
    // Dockerfile.
    /// Build context directory, relative to the workspace.
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    #[serde(default)]
    target: Option<String>,
}

fn daemonless() -> String {
    "daemonless".into()
}
fn linux() -> String {
    "linux".into()
}
fn amd64() -> String {
    "amd64".into()
}

fn schema() -> String {
    format!(
        r#"{{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {{
    "build": {{"type": "array", "items": {STEP_SCHEMA}}},
    "test": {{"type": "array", "items": {STEP_SCHEMA}}},
    "junit": {{"type": "string", "description": "JUnit XML report to read test counts from"}},
    "image": {{
      "type": "object",
      "required": ["ref", "output"],
      "additionalProperties": false,
      "properties": {{
        "backend": {{"enum": ["daemonless", "dockerfile"]}},
        "ref": {{"type": "string"}},
        "output": {{"type": "string", "description": "OCI image layout directory to write"}},
        "base": {{"type": "string", "description": "`scratch` or an OCI image layout directory"}},
        "files": {{"type": "array", "items": {{
          "type": "object", "required": ["from", "to"], "additionalProperties": false,
          "properties": {{"from": {{"type": "string"}}, "to": {{"type": "string"}}, "mode": {{"type": "string", "pattern": "^[0-7]{{3,4}}$"}}}}
        }}}},
        "uid": {{"type": "integer", "minimum": 0}},
        "gid": {{"type": "integer", "minimum": 0}},
        "entrypoint": {{"type": "array", "items": {{"type": "string"}}}},
        "cmd": {{"type": "array", "items": {{"type": "string"}}}},
        "env": {{"type": "object", "additionalProperties": {{"type": "string"}}}},
        "ports": {{"type": "array", "items": {{"type": "string", "pattern": "^[0-9]+(/(tcp|udp))?$"}}}},
        "workdir": {{"type": "string"}},
        "user": {{"type": "string"}},
        "labels": {{"type": "object", "additionalProperties": {{"type": "string"}}}},
        "source": {{"type": "string"}},
        "revision": {{"type": "string"}},
        "source-date-epoch": {{"type": "integer", "minimum": 0}},
        "os": {{"type": "string"}},
        "architecture": {{"type": "string"}},
        "context": {{"type": "string"}},
        "dockerfile": {{"type": "string"}},
        "build-args": {{"type": "object", "additionalProperties": {{"type": "string"}}}},
        "target": {{"type": "string"}}
      }}
    }}
  }}
}}"#
    )
}

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Default, Debug, PartialEq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out`
pub fn cargo_counts(output: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = false;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        seen = true;
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let n = |i: usize| {
                words
                    .get(i)
                    .and_then(|w| w.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match words.as_slice() {
                [_, _, "passed"] => counts.passed += n(1),
                [_, "passed"] => counts.passed += n(0),
                [_, "failed"] => counts.failed += n(0),
                [_, "ignored"] => counts.ignored += n(0),
                _ => {}
            }
        }
    }
    seen.then_some(counts)
}

/// Counts from a JUnit XML report: the sum over its `<testsuite>` elements.
pub fn junit_counts(xml: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = false;
    for element in xml.split("<testsuite").skip(1) {
        if element.starts_with('s') {
            continue; // <testsuites>, the optional wrapper
        }
        let head = &element[..element.find('>').unwrap_or(element.len())];
        let attr = |name: &str| -> u64 {
            head.split_whitespace()
                .find_map(|a| a.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches(|c| c == '"' || c == '\'' || c == '/'))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        seen = true;
        let (tests, failed, skipped) = (
            attr("tests"),
            attr("failures") + attr("errors"),
            attr("skipped"),
        );
        counts.passed += tests.saturating_sub(failed + skipped);
        counts.failed += failed;
        counts.ignored += skipped;
    }
    seen.then_some(counts)
}

fn run_steps(kind: &str, steps: &[Step], log: &mut String) -> Result<(), StageError> {
    for step in steps {
        gantry_sdk::info(format!("{kind}: {}", step.run.join(" ")));
        let status = step.run()?;
        log.push_str(&status.stdout);
        log.push('\n');
        log.push_str(&status.stderr);
    }
    Ok(())
}

struct Build;

impl Guest for Build {
    fn describe() -> StageInfo {
        StageInfo {
            name: "build".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Builds the app, runs its unit tests (counts as outputs), and builds its container image as an OCI layout: daemonless and reproducible, or from a Dockerfile through the engine.".into(),
            config_schema: schema(),
            capabilities: vec![
                gantry_sdk::Capability {
                    kind: CapabilityKind::Exec,
                    target: None,
                    reason: "the build and test steps' programs".into(),
                },
                gantry_sdk::Capability {
                    kind: CapabilityKind::WorkspaceWrite,
                    target: None,
                    reason: "writes the image layout to `image.output`".into(),
                },
                gantry_sdk::Capability {
                    kind: CapabilityKind::Engine,
                    target: None,
                    reason: "only for `image.backend: dockerfile`".into(),
                },
            ],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        let mut outputs = vec![];
        let mut artifacts = vec![];
        let mut summary = vec![];

        let mut log = String::new();
        run_steps("build", &cfg.build, &mut log)?;
        let mut test_log = String::new();
        let tests = run_steps("test", &cfg.test, &mut test_log);
        let counts = match &cfg.junit {
            Some(path) => {
                let xml = std::fs::read_to_string(path)
                    .map_err(|e| StageError::Failed(format!("junit report `{path}`: {e}")))?;
                Some(junit_counts(&xml).ok_or_else(|| {
                    StageError::Failed(format!("junit report `{path}` has no <testsuite> element"))
                })?)
            }
            None => cargo_counts(&test_log),
        };
        if let Some(c) = &counts {
            for (k, v) in [
                ("passed", c.passed),
                ("failed", c.failed),
                ("ignored", c.ignored),
            ] {
                outputs.push((format!("tests.{k}"), v.to_string()));
                gantry_sdk::telemetry::metric(&format!("tests.{k}"), v as f64, &[]);
            }
            summary.push(format!(
                "{} passed, {} failed, {} ignored",
                c.passed, c.failed, c.ignored
            ));
        }
        tests?;

        if let Some(image) = &cfg.image {
            let built = match image.backend.as_str() {
                "daemonless" => layout::build(image)?,
                "dockerfile" => dockerfile(image)?,
                other => {
                    return Err(StageError::InvalidConfig(format!(
                        "image.backend `{other}`: use `daemonless` or `dockerfile`"
                    )));
                }
            };
            outputs.push(("image.digest".into(), built.digest.clone()));
            outputs.push(("image.ref".into(), image.reference.clone()));
            outputs.push(("image.layout".into(), image.output.clone()));
            outputs.push(("image.size".into(), built.size.to_string()));
            gantry_sdk::telemetry::metric("image.size-bytes", built.size as f64, &[]);
            summary.push(format!("image {} {}", image.reference, built.digest));
            artifacts.push(Artifact {
                name: "image".into(),
                media_type: "application/vnd.oci.image.layout.v1+json".into(),
                path: Some(image.output.clone()),
                reference: None,
                digest: Some(built.digest),
                annotations: vec![(
                    "org.opencontainers.image.ref.name".into(),
                    image.reference.clone(),
                )],
            });
        }
        Ok(Outcome {
            artifacts,
            outputs,
            summary: if summary.is_empty() {
                "built".into()
            } else {
                summary.join("; ")
            },
        })
    }
}

/// What an image backend produced.
pub struct Built {
    /// The manifest digest, `sha256:...`.
    pub digest: String,
    /// Bytes of the image's blobs (config + layers).
    pub size: u64,
}

fn dockerfile(image: &Image) -> Result<Built, StageError> {
    let context = image.context.clone().unwrap_or_else(|| ".".into());
    let id = gantry_sdk::engine::build(&gantry_sdk::engine::BuildRequest {
        context,
        dockerfile: image.dockerfile.clone(),
        build_args: image.build_args.clone().into_iter().collect(),
        target: image.target.clone(),
        tags: vec![image.reference.clone()],
    })?;
    let digest = gantry_sdk::engine::export_layout(&id, &image.output, &image.reference)?;
    let size = layout::blobs_size(&image.output);
    Ok(Built { digest, size })
}

gantry_sdk::export_stage!(Build);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_counts_sum_every_binary() {
        let out = "running 3 tests\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            cargo_counts(out),
            Some(Counts {
                passed: 5,
                failed: 1,
                ignored: 1
            })
        );
        assert_eq!(cargo_counts("nothing"), None);
    }

    #[test]
    fn junit_counts_sum_suites() {
        let xml = r#"<?xml version="1.0"?><testsuites tests="5"><testsuite name="a" tests="3" failures="1" errors="0" skipped="1"></testsuite><testsuite name="b" tests='2' failures='0'/></testsuites>"#;
        assert_eq!(
            junit_counts(xml),
            Some(Counts {
                passed: 3,
                failed: 1,
                ignored: 1
            })
        );
        assert_eq!(junit_counts("<html/>"), None);
    }
}
