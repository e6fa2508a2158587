//! A checked manifest resolved, for one environment, into what will run: each
//! stage's provider (plugin), configuration, grants, limits, retries, condition
//! and the stages it needs, in an order that respects `needs`. Every problem is
//! reported at once, each with file, line, column and field; nothing runs if
//! there is one.

use crate::capabilities::Grants;
use crate::expr::{self, Expr, Ref};
use crate::manifest::{
    Approval, ClusterTarget, Environment, Limits as LimitsSpec, ManifestError, ManifestErrors,
    ManifestFile, Permissions, PromotionStep, SecretSource, Sink, closest,
};
use crate::plugins::{BUILTINS, PluginSource};
use crate::runtime::MAX_MEMORY;
use crate::runtime::limits::Limits;
use crate::units::{format_size, parse_duration, parse_size};
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The environment used when a manifest defines none, or none is the default.
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// One stage or telemetry sink, ready to run.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The stage name, or `telemetry[i]` for a sink.
    pub name: String,
    /// Its manifest field, e.g. `stages[2]`.
    pub field: String,
    /// The provider as written in `uses:` (after the environment's overlay).
    pub uses: String,
    pub source: PluginSource,
    /// `with:` after the overlay; strings may still hold `${{ }}` expressions.
    pub config: serde_json::Value,
    pub grants: Grants,
    pub limits: Limits,
    /// Names of the stages this one needs (stages only).
    pub needs: Vec<String>,
    /// Retries after `transient` errors.
    pub retries: u32,
    /// Run only when this holds (the text as written, and parsed).
    pub condition: Option<(String, Expr)>,
    /// Where `with:` and `if:` are written, for errors found later.
    pub(crate) with_at: Option<Location>,
    pub(crate) condition_at: Option<Location>,
}

impl Unit {
    /// Where the unit's `with:` is written, if anywhere.
    pub fn with_at(&self) -> Option<Location> {
        self.with_at
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub pipeline: String,
    pub manifest: PathBuf,
    /// Canonical workspace directory.
    pub workspace: PathBuf,
    /// The environment this plan is for.
    pub environment: String,
    pub variables: BTreeMap<String, String>,
    /// Where each secret's value comes from in this environment.
    pub secrets: BTreeMap<String, SecretSource>,
    /// The stages, ordered so that each comes after the stages it needs.
    pub stages: Vec<Unit>,
    pub sinks: Vec<Unit>,
    /// The cluster of this environment, its kubeconfig path made absolute.
    pub cluster: Option<ClusterTarget>,
    /// Where stages run: `None` here, or each as a Kubernetes Job.
    pub executor: Option<crate::kubernetes::config::KubeJobs>,
    /// The promotion chain, when the manifest has one.
    pub promotion: Option<PromotionChain>,
}

/// The manifest's `promotion:`, checked: environments that exist, each once;
/// reused stages that exist and need only reused stages.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionChain {
    pub environments: Vec<PromotionStep>,
    /// Stages whose results a promotion carries over.
    pub reuse: Vec<String>,
}

impl PromotionChain {
    /// The environment after `environment`, if it is in the chain and not last.
    pub fn next(&self, environment: &str) -> Option<&PromotionStep> {
        let i = self
            .environments
            .iter()
            .position(|s| s.name == environment)?;
        self.environments.get(i + 1)
    }

    /// `default → docker → production (approval)`, for messages.
    pub fn describe(&self) -> String {
        self.environments
            .iter()
            .map(|s| match s.approval {
                Approval::Required => format!("{} (approval required)", s.name),
                Approval::None => s.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

/// What to pass [`Plan::new`] for environment `name`: `None` for the implicit
/// `default` of a manifest that does not define it.
pub fn environment_arg<'a>(file: &ManifestFile, name: &'a str) -> Option<&'a str> {
    if file.manifest.environments.contains_key(name) {
        Some(name)
    } else {
        None
    }
}

/// Check `promotion:`; every problem goes to `errors`.
fn check_promotion(file: &ManifestFile, errors: &mut Vec<ManifestError>) -> Option<PromotionChain> {
    let m = &file.manifest;
    let promotion = m.promotion.as_ref()?;
    let p = &promotion.value;
    let envs = &m.environments;
    // `default` needs no definition while no other environment is the default.
    let implicit_default = !envs.values().any(|e| e.value.default);
    let mut chain: Vec<PromotionStep> = vec![];
    for (i, step) in p.environments.iter().enumerate() {
        let name = &step.value.name;
        let field = format!("promotion.environments[{i}]");
        let defined = envs.contains_key(name) || (implicit_default && name == DEFAULT_ENVIRONMENT);
        if !defined {
            let near = closest(name, envs.keys().map(String::as_str));
            errors.push(file.error(
                &step.referenced,
                &field,
                format!("there is no environment `{name}`"),
                Some(match near {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!("define it under `environments:` (`{name}: {{}}`)"),
                }),
            ));
        } else if chain.iter().any(|s| s.name == *name) {
            errors.push(file.error(
                &step.referenced,
                &field,
                format!("`{name}` is already in the chain: an environment appears once"),
                None,
            ));
        }
        chain.push(step.value.clone());
    }
    if p.environments.len() < 2 {
        errors.push(file.error(
            &promotion.referenced,
            "promotion.environments",
            "a promotion chain needs at least two environments: where a commit's run \
             happens, and where its artifacts go next",
            None,
        ));
    }
    let names: BTreeSet<&str> = m.stages.iter().map(|s| s.name.value.as_str()).collect();
    let reused: BTreeSet<&str> = p.reuse.iter().map(|r| r.value.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (i, r) in p.reuse.iter().enumerate() {
        let field = format!("promotion.reuse[{i}]");
        let Some(stage) = m.stages.iter().find(|s| s.name.value == r.value) else {
            errors.push(file.error(
                &r.referenced,
                &field,
                format!("there is no stage named `{}`", r.value),
                closest(&r.value, names.iter().copied()).map(|n| format!("did you mean `{n}`?")),
            ));
            continue;
        };
        if !seen.insert(r.value.as_str()) {
            errors.push(file.error(
                &r.referenced,
                &field,
                format!("`{}` is already listed", r.value),
                None,
            ));
            continue;
        }
        for need in &stage.needs {
            if names.contains(need.value.as_str()) && !reused.contains(need.value.as_str()) {
                errors.push(file.error(
                    &r.referenced,
                    &field,
                    format!(
                        "`{}` is reused, but it needs `{}`, which is not: a promotion would run \
                         `{}` again yet keep what `{}` made from the first run's",
                        r.value, need.value, need.value, r.value
                    ),
                    Some(format!(
                        "add `{}` to `promotion.reuse`, or remove `{}` from it",
                        need.value, r.value
                    )),
                ));
            }
        }
        // A reused stage is the same in every environment of the chain: an
        // overlay would never apply where its result is carried over, and
        // would make the plugin digests of the chain's runs disagree.
        for step in &chain {
            if let Some(overlay) = envs
                .get(&step.name)
                .and_then(|e| e.value.stages.get(&r.value))
            {
                errors.push(file.error(
                    &overlay.referenced,
                    &format!("environments.{}.stages.{}", step.name, r.value),
                    format!(
                        "`{}` is reused by promotion (`promotion.reuse`), so it must be the same \
                         in every environment of the chain; this overlay would apply to one run \
                         and never to the promotions that carry its result",
                        r.value
                    ),
                    Some("move the change into the stage itself, or stop reusing it".into()),
                ));
            }
        }
    }
    Some(PromotionChain {
        environments: chain,
        reuse: p.reuse.iter().map(|r| r.value.clone()).collect(),
    })
}

/// `~/x` in the home directory, a relative path against `base`.
fn resolve_user_path(base: &std::path::Path, path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => base.join(path),
    }
}

/// What a stage says before the environment's overlay is applied, and after.
struct Effective<'a> {
    uses: Option<&'a Spanned<String>>,
    with: Option<serde_json::Value>,
    with_at: Option<Location>,
    permissions: &'a Permissions,
    limits: &'a LimitsSpec,
    timeout: Option<&'a Spanned<String>>,
    retries: Option<&'a Spanned<u32>>,
    condition: Option<&'a Spanned<String>>,
}

impl Plan {
    /// Resolve `file` for environment `env` (`None`: the manifest's default).
    pub fn new(file: &ManifestFile, env: Option<&str>) -> Result<Plan, ManifestErrors> {
        let m = &file.manifest;
        let mut errors = vec![];
        let workspace = resolve_workspace(file, &mut errors);
        crate::triggers::check(file, &mut errors);
        let (environment, overlay) = choose_environment(file, env, &mut errors)?;

        let mut variables = m.variables.clone();
        let mut secrets: BTreeMap<String, SecretSource> = m
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        if let Some(o) = overlay {
            variables.extend(o.variables.clone());
            secrets.extend(o.secrets.iter().map(|(k, v)| (k.clone(), v.value.clone())));
            for (name, at) in &o.stages {
                if !m.stages.iter().any(|s| s.name.value == *name) {
                    let near = closest(name, m.stages.iter().map(|s| s.name.value.as_str()));
                    errors.push(file.error(
                        &at.referenced,
                        &format!("environments.{environment}.stages.{name}"),
                        format!("there is no stage named `{name}`"),
                        near.map(|n| format!("did you mean `{n}`?")),
                    ));
                }
            }
        }
        let defined: BTreeSet<String> = secrets.keys().cloned().collect();

        let mut seen = BTreeSet::new();
        let mut units = vec![];
        for (i, s) in m.stages.iter().enumerate() {
            let field = format!("stages[{i}]");
            let name = &s.name.value;
            check_stage_name(file, &field, &s.name, &mut seen, &mut errors);
            let o = overlay.and_then(|o| o.stages.get(name)).map(|o| &o.value);
            let eff = Effective {
                uses: o.and_then(|o| o.uses.as_ref()).or(s.uses.as_ref()),
                // A swapped provider is another plugin: its config replaces the
                // stage's instead of being merged into it.
                with: match o {
                    Some(o) if o.uses.is_some() => o.with.as_ref().map(|w| w.value.clone()),
                    _ => merge(
                        s.with.as_ref().map(|w| w.value.clone()),
                        o.and_then(|o| o.with.as_ref()).map(|w| w.value.clone()),
                    ),
                },
                with_at: o
                    .and_then(|o| o.with.as_ref())
                    .or(s.with.as_ref())
                    .map(|w| w.referenced),
                permissions: o
                    .and_then(|o| o.permissions.as_ref())
                    .unwrap_or(&s.permissions),
                limits: o.and_then(|o| o.limits.as_ref()).unwrap_or(&s.limits),
                timeout: o.and_then(|o| o.timeout.as_ref()).or(s.timeout.as_ref()),
                retries: o.and_then(|o| o.retries.as_ref()).or(s.retries.as_ref()),
                condition: o
                    .and_then(|o| o.condition.as_ref())
                    .or(s.condition.as_ref()),
            };
            let Some(uses) = eff.uses else {
                errors.push(file.error(
                    &s.name.referenced,
                    &format!("{field}.uses"),
                    format!("stage `{name}` has no provider in environment `{environment}`"),
                    Some(format!(
                        "give the stage `uses:`, or set `environments.{environment}.stages.{name}.uses`"
                    )),
                ));
                continue;
            };
            let unit = plan_unit(file, &field, uses, &eff, &defined, &mut errors);
            if let Some(mut unit) = unit {
                unit.name = name.clone();
                units.push((unit, s));
            }
        }
        if m.stages.is_empty() {
            errors.push(file.error(
                &m.pipeline.referenced,
                "stages",
                "the pipeline has no stages",
                None,
            ));
        }

        let names: BTreeSet<&str> = m.stages.iter().map(|s| s.name.value.as_str()).collect();
        for (unit, s) in &mut units {
            for (j, need) in s.needs.iter().enumerate() {
                if names.contains(need.value.as_str()) && need.value != s.name.value {
                    if !unit.needs.contains(&need.value) {
                        unit.needs.push(need.value.clone());
                    }
                } else {
                    let help = closest(&need.value, names.iter().copied())
                        .filter(|n| *n != s.name.value)
                        .map(|n| format!("did you mean `{n}`?"));
                    errors.push(file.error(
                        &need.referenced,
                        &format!("{}.needs[{j}]", unit.field),
                        if need.value == s.name.value {
                            "a stage cannot need itself".to_string()
                        } else {
                            format!("there is no stage named `{}`", need.value)
                        },
                        help,
                    ));
                }
            }
        }
        let stages = order(file, units, &mut errors);

        let sinks_spec: &[Sink] = overlay
            .and_then(|o| o.telemetry.as_deref())
            .unwrap_or(&m.telemetry);
        let mut sinks = vec![];
        for (i, s) in sinks_spec.iter().enumerate() {
            let field = format!("telemetry[{i}]");
            let eff = Effective {
                uses: Some(&s.uses),
                with: s.with.as_ref().map(|w| w.value.clone()),
                with_at: s.with.as_ref().map(|w| w.referenced),
                permissions: &s.permissions,
                limits: &s.limits,
                timeout: None,
                retries: None,
                condition: None,
            };
            if let Some(mut unit) = plan_unit(file, &field, &s.uses, &eff, &defined, &mut errors) {
                unit.name = field;
                sinks.push(unit);
            }
        }

        let promotion = check_promotion(file, &mut errors);
        let cluster = overlay
            .and_then(|o| o.cluster.as_ref())
            .or(m.cluster.as_ref())
            .map(|c| ClusterTarget {
                kubeconfig: resolve_user_path(&file.dir(), &c.kubeconfig)
                    .display()
                    .to_string(),
                context: c.context.clone(),
            });
        let executor = match overlay.and_then(|o| o.executor.as_ref()) {
            Some(e) => crate::kubernetes::config::resolve(
                file,
                &format!("environments.{environment}.executor"),
                e,
                &mut errors,
            ),
            None => m
                .executor
                .as_ref()
                .and_then(|e| crate::kubernetes::config::resolve(file, "executor", e, &mut errors)),
        };
        let plan = Plan {
            executor,
            pipeline: m.pipeline.value.clone(),
            manifest: file.path.clone(),
            workspace: workspace.unwrap_or_default(),
            environment,
            variables,
            secrets,
            stages,
            sinks,
            cluster,
            promotion,
        };
        plan.check_expressions(file, &mut errors);
        if !errors.is_empty() {
            errors.sort_by_key(ManifestError::offset);
            // An alias used by several stages is checked once per use.
            errors.dedup_by(|a, b| a.offset() == b.offset() && a.to_string() == b.to_string());
            return Err(ManifestErrors(errors));
        }
        Ok(plan)
    }

    /// Every expression must parse and read only what exists: defined
    /// variables, secrets granted to the stage, outputs of stages it needs.
    fn check_expressions(&self, file: &ManifestFile, errors: &mut Vec<ManifestError>) {
        let fallback = file.manifest.pipeline.referenced;
        for unit in self.stages.iter().chain(&self.sinks) {
            let at = unit.with_at.unwrap_or(fallback);
            let mut strings = vec![];
            collect_strings(&unit.config, String::new(), &mut strings);
            for (path, text) in strings {
                let field = format!("{}.with{path}", unit.field);
                let pieces = match expr::parse_template(&text) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(file.error(&at, &field, e, None));
                        continue;
                    }
                };
                let mut refs = vec![];
                for p in &pieces {
                    if let expr::Piece::Expr(e) = p {
                        e.refs(&mut refs);
                    }
                }
                for r in refs {
                    if let Err((msg, help)) = self.check_ref(unit, &r, true) {
                        errors.push(file.error(&at, &field, msg, help));
                    }
                }
            }
            if let Some((_, e)) = &unit.condition {
                let at = unit.condition_at.unwrap_or(fallback);
                let mut refs = vec![];
                e.refs(&mut refs);
                for r in refs {
                    if let Err((msg, help)) = self.check_ref(unit, &r, false) {
                        errors.push(file.error(&at, &format!("{}.if", unit.field), msg, help));
                    }
                }
            }
        }
    }

    fn check_ref(
        &self,
        unit: &Unit,
        r: &Ref,
        secrets_allowed: bool,
    ) -> Result<(), (String, Option<String>)> {
        match r {
            Ref::Var(n) if !self.variables.contains_key(n) => Err((
                format!("`{r}` is not defined in environment `{}`", self.environment),
                closest(n, self.variables.keys().map(String::as_str))
                    .map(|c| format!("did you mean `vars.{c}`?"))
                    .or_else(|| {
                        Some(format!(
                            "define it under `variables:` or `environments.{}.variables`",
                            self.environment
                        ))
                    }),
            )),
            Ref::Secret(_) if !secrets_allowed => {
                Err((format!("`{r}` cannot be used in a condition"), None))
            }
            Ref::Secret(n) if !self.secrets.contains_key(n) => Err((
                format!(
                    "secret `{n}` is not defined in environment `{}`",
                    self.environment
                ),
                Some(format!(
                    "define it under `secrets:`: `{n}: {{ env: SOME_VARIABLE }}`"
                )),
            )),
            Ref::Secret(n) if !unit.grants.secrets.names.contains(n) => Err((
                format!(
                    "`{r}` is read, but stage `{}` is not granted secret `{n}`",
                    unit.name
                ),
                Some(format!(
                    "grant it with `{}.permissions.secrets: [{n}]`",
                    unit.field
                )),
            )),
            Ref::Output { stage, .. } if !unit.needs.contains(stage) => Err((
                format!(
                    "`{r}` reads stage `{stage}`, which `{}` does not need",
                    unit.name
                ),
                Some(format!("add `{stage}` to `{}.needs`", unit.field)),
            )),
            _ => Ok(()),
        }
    }
}

/// Every string in a JSON value, with its path (`.steps[0].run[1]`).
pub fn collect_strings(v: &serde_json::Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::String(s) => out.push((path, s.clone())),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                collect_strings(x, format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                collect_strings(x, format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// The environment to use and its overlay.
fn choose_environment<'a>(
    file: &'a ManifestFile,
    env: Option<&str>,
    errors: &mut Vec<ManifestError>,
) -> Result<(String, Option<&'a Environment>), ManifestErrors> {
    let envs = &file.manifest.environments;
    let defaults: Vec<&String> = envs
        .iter()
        .filter(|(_, e)| e.value.default)
        .map(|(n, _)| n)
        .collect();
    if defaults.len() > 1 {
        let at = &envs[defaults[1]].referenced;
        errors.push(file.error(
            at,
            &format!("environments.{}.default", defaults[1]),
            format!(
                "`{}` and `{}` are both marked as the default",
                defaults[0], defaults[1]
            ),
            None,
        ));
    }
    let name = match env {
        Some(n) => n.to_string(),
        None => defaults
            .first()
            .map_or(DEFAULT_ENVIRONMENT.to_string(), |n| n.to_string()),
    };
    match envs.get(&name) {
        Some(e) => Ok((name, Some(&e.value))),
        None if envs.is_empty() || (env.is_none() && name == DEFAULT_ENVIRONMENT) => {
            Ok((name, None))
        }
        None => {
            let known: Vec<&str> = envs.keys().map(String::as_str).collect();
            let near = closest(&name, known.iter().copied())
                .map_or(String::new(), |n| format!("did you mean `{n}`? "));
            Err(ManifestErrors(vec![ManifestError::plain(format!(
                "{}: there is no environment `{name}`; {near}environments: {}",
                file.path.display(),
                known.join(", ")
            ))]))
        }
    }
}

fn check_stage_name(
    file: &ManifestFile,
    field: &str,
    name: &Spanned<String>,
    seen: &mut BTreeSet<String>,
    errors: &mut Vec<ManifestError>,
) {
    let n = &name.value;
    let valid = !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        errors.push(file.error(
            &name.referenced,
            &format!("{field}.name"),
            format!("`{n}` is not a stage name"),
            Some("use letters, digits, `-` and `_`".into()),
        ));
    } else if !seen.insert(n.clone()) {
        errors.push(file.error(
            &name.referenced,
            &format!("{field}.name"),
            format!("there is already a stage named `{n}`"),
            None,
        ));
    }
}

/// Order stages so that each follows the stages it needs (manifest order
/// otherwise); a cycle is an error on the first stage in it.
fn order(
    file: &ManifestFile,
    units: Vec<(Unit, &crate::manifest::Stage)>,
    errors: &mut Vec<ManifestError>,
) -> Vec<Unit> {
    let mut remaining = units;
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut ordered = vec![];
    loop {
        let ready = remaining
            .iter()
            .position(|(u, _)| u.needs.iter().all(|n| done.contains(n)));
        match ready {
            Some(i) => {
                let (unit, _) = remaining.remove(i);
                done.insert(unit.name.clone());
                ordered.push(unit);
            }
            None if remaining.is_empty() => return ordered,
            None => {
                // Only stages in or behind a cycle remain; report one cycle.
                let (unit, stage) = &remaining[0];
                let mut path = vec![unit.name.clone()];
                let mut current = unit;
                while let Some(next) = current
                    .needs
                    .iter()
                    .find_map(|n| remaining.iter().find(|(u, _)| &u.name == n).map(|(u, _)| u))
                {
                    if let Some(start) = path.iter().position(|p| *p == next.name) {
                        path.drain(..start);
                        path.push(next.name.clone());
                        break;
                    }
                    path.push(next.name.clone());
                    current = next;
                }
                errors.push(file.error(
                    &stage.name.referenced,
                    &format!("{}.needs", unit.field),
                    format!("`needs` form a cycle: {}", path.join(" → ")),
                    Some("remove one of these needs".into()),
                ));
                return ordered;
            }
        }
    }
}

/// `base` with `overlay` merged in as a JSON merge patch (RFC 7396): objects
/// key by key, `null` removes a key, anything else replaces.
pub fn merge(
    base: Option<serde_json::Value>,
    overlay: Option<serde_json::Value>,
) -> Option<serde_json::Value> {
    match (base, overlay) {
        (Some(serde_json::Value::Object(mut b)), Some(serde_json::Value::Object(o))) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(merged) = merge(b.remove(&k), Some(v)) {
                    b.insert(k, merged);
                }
            }
            Some(serde_json::Value::Object(b))
        }
        (b, None) => b,
        (_, o) => o,
    }
}

fn plan_unit(
    file: &ManifestFile,
    field: &str,
    uses: &Spanned<String>,
    eff: &Effective<'_>,
    defined_secrets: &BTreeSet<String>,
    errors: &mut Vec<ManifestError>,
) -> Option<Unit> {
    let source = resolve_uses(file, field, uses, defined_secrets, errors);
    let grants = Grants::configure(file, field, eff.permissions, defined_secrets, errors);
    let mut limits = resolve_limits(file, field, eff.limits, errors);
    if let Some(t) = eff.timeout {
        match parse_duration(&t.value) {
            Ok(d) => limits.timeout = d,
            Err(e) => errors.push(file.error(&t.referenced, &format!("{field}.timeout"), e, None)),
        }
    }
    let retries = match eff.retries {
        Some(r) if r.value > 10 => {
            errors.push(file.error(
                &r.referenced,
                &format!("{field}.retries"),
                "at most 10 retries",
                None,
            ));
            0
        }
        Some(r) => r.value,
        None => 0,
    };
    let condition = eff.condition.and_then(|c| match expr::parse(&c.value) {
        Ok(e) => Some((c.value.clone(), e)),
        Err(e) => {
            errors.push(file.error(&c.referenced, &format!("{field}.if"), e, None));
            None
        }
    });
    let config = match &eff.with {
        Some(v @ serde_json::Value::Object(_)) => v.clone(),
        Some(serde_json::Value::Null) | None => serde_json::json!({}),
        Some(_) => {
            let at = eff.with_at.unwrap_or(uses.referenced);
            errors.push(file.error(
                &at,
                &format!("{field}.with"),
                "`with` must be a mapping",
                None,
            ));
            serde_json::json!({})
        }
    };
    source.map(|source| Unit {
        name: String::new(),
        field: field.to_string(),
        uses: uses.value.clone(),
        source,
        config,
        grants,
        limits,
        needs: vec![],
        retries,
        condition,
        with_at: eff.with_at,
        condition_at: eff.condition.map(|c| c.referenced),
    })
}

/// `uses:` → an alias from `plugins:`, an `oci://` reference, a `.wasm` path,
/// or a built-in name.
fn resolve_uses(
    file: &ManifestFile,
    field: &str,
    uses: &Spanned<String>,
    defined_secrets: &BTreeSet<String>,
    errors: &mut Vec<ManifestError>,
) -> Option<PluginSource> {
    let field = format!("{field}.uses");
    let dir = file.dir();
    let parsed = if let Some(alias) = file.manifest.plugins.get(&uses.value) {
        let a = &alias.value;
        let alias_field = format!("plugins.{}", uses.value);
        let alias_error = |message: String, help: Option<String>| {
            file.error(&alias.referenced, &alias_field, message, help)
        };
        let oci_only = a.username_secret.is_some()
            || a.password_secret.is_some()
            || a.insecure
            || a.verify.is_some();
        match (&a.path, &a.builtin, &a.oci) {
            (Some(_), None, None) | (None, Some(_), None) if oci_only => {
                errors.push(alias_error(
                    "`username-secret`, `password-secret`, `insecure` and `verify` only go with `oci`"
                        .into(),
                    None,
                ));
                return None;
            }
            (Some(path), None, None) => Some(Ok(PluginSource::File(dir.join(path)))),
            (None, Some(name), None) => PluginSource::parse(name, &dir)
                .filter(|s| matches!(s, Ok(PluginSource::Builtin(_)))),
            (None, None, Some(reference)) => {
                let auth = match (&a.username_secret, &a.password_secret) {
                    (Some(u), Some(p)) => {
                        for name in [u, p] {
                            if !defined_secrets.contains(name) {
                                errors.push(alias_error(
                                    format!("secret `{name}` is not defined"),
                                    Some(format!("define it under `secrets:`: `{name}: {{ env: SOME_VARIABLE }}`")),
                                ));
                            }
                        }
                        Some(crate::oci::SecretAuth {
                            username_secret: u.clone(),
                            password_secret: p.clone(),
                        })
                    }
                    (None, None) => None,
                    _ => {
                        errors.push(alias_error(
                            "give both `username-secret` and `password-secret`, or neither (anonymous)".into(),
                            None,
                        ));
                        return None;
                    }
                };
                let plugin = crate::oci::OciPlugin::new(reference, auth, a.insecure);
                if let Ok(p) = &plugin
                    && a.insecure
                    && !p.reference.is_loopback()
                {
                    errors.push(alias_error(
                        format!(
                            "`insecure` (plain HTTP) is only allowed for a registry on this machine, not `{}`",
                            p.reference.registry
                        ),
                        Some("remove `insecure`: the registry is reached over HTTPS".into()),
                    ));
                    return None;
                }
                let plugin = match (plugin, &a.verify) {
                    (Ok(p), Some(v)) => {
                        match crate::oci::signature::TrustedKey::read(
                            &dir.join(&v.value.key),
                            &v.value.key,
                        ) {
                            Ok(key) => Ok(p.with_key(key)),
                            Err(e) => {
                                errors.push(file.error(
                                    &v.referenced,
                                    &format!("{alias_field}.verify.key"),
                                    e,
                                    Some("`key` is a cosign public key (`cosign.pub`), relative to the manifest's directory".into()),
                                ));
                                return None;
                            }
                        }
                    }
                    (plugin, _) => plugin,
                };
                Some(plugin.map(|p| PluginSource::Oci(std::sync::Arc::new(p))))
            }
            _ => {
                errors.push(alias_error(
                    "a plugin alias needs exactly one of `path`, `builtin` or `oci`".into(),
                    None,
                ));
                return None;
            }
        }
    } else {
        PluginSource::parse(&uses.value, &dir)
    };
    let source = match parsed {
        Some(Err(e)) => {
            errors.push(file.error(&uses.referenced, &field, e, None));
            return None;
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    match source {
        Some(PluginSource::File(path)) if !path.is_file() => {
            errors.push(file.error(
                &uses.referenced,
                &field,
                format!("plugin file {} does not exist", path.display()),
                Some("paths in `uses:` are relative to the manifest's directory".into()),
            ));
            None
        }
        Some(source) => Some(source),
        None => {
            let names = BUILTINS
                .iter()
                .map(|b| b.name)
                .chain(file.manifest.plugins.keys().map(String::as_str));
            let help = match closest(&uses.value, names) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "built-in plugins: {}; or give a path to a .wasm component",
                    BUILTINS
                        .iter()
                        .map(|b| b.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            errors.push(file.error(
                &uses.referenced,
                &field,
                format!("unknown plugin `{}`", uses.value),
                Some(help),
            ));
            None
        }
    }
}

fn resolve_limits(
    file: &ManifestFile,
    field: &str,
    spec: &LimitsSpec,
    errors: &mut Vec<ManifestError>,
) -> Limits {
    let mut limits = Limits::default();
    let mut size = |v: &Option<Spanned<String>>, name: &str, max: u64, slot: &mut u64| {
        let Some(v) = v else { return };
        match parse_size(&v.value) {
            Ok(n) if n == 0 || n > max => errors.push(file.error(
                &v.referenced,
                &format!("{field}.limits.{name}"),
                format!("must be between 1 byte and {}", format_size(max)),
                None,
            )),
            Ok(n) => *slot = n,
            Err(e) => {
                errors.push(file.error(&v.referenced, &format!("{field}.limits.{name}"), e, None))
            }
        }
    };
    size(&spec.memory, "memory", MAX_MEMORY, &mut limits.memory);
    size(&spec.log, "log", 1 << 30, &mut limits.log);
    size(&spec.telemetry, "telemetry", 1 << 30, &mut limits.telemetry);
    size(&spec.outputs, "outputs", 256 << 20, &mut limits.outputs);
    size(&spec.summary, "summary", 16 << 20, &mut limits.summary);
    size(
        &spec.artifacts,
        "artifacts",
        256 << 20,
        &mut limits.artifacts,
    );
    let mut count = |v: &Option<Spanned<u64>>, name: &str, max: u64, slot: &mut u64| match v {
        Some(v) if (1..=max).contains(&v.value) => *slot = v.value,
        Some(v) => errors.push(file.error(
            &v.referenced,
            &format!("{field}.limits.{name}"),
            format!("must be between 1 and {max}"),
            None,
        )),
        None => {}
    };
    count(&spec.events, "events", 10_000_000, &mut limits.events);
    count(
        &spec.processes,
        "processes",
        1_000_000,
        &mut limits.processes,
    );
    if let Some(v) = &spec.cpu {
        match parse_duration(&v.value) {
            Ok(d) => limits.cpu = d,
            Err(e) => {
                errors.push(file.error(&v.referenced, &format!("{field}.limits.cpu"), e, None))
            }
        }
    }
    limits
}

fn resolve_workspace(file: &ManifestFile, errors: &mut Vec<ManifestError>) -> Option<PathBuf> {
    let dir = match file.dir() {
        d if d.as_os_str().is_empty() => PathBuf::from("."),
        d => d,
    };
    let (path, at) = match &file.manifest.workspace {
        Some(w) => (dir.join(&w.value), Some(&w.referenced)),
        None => (dir, None),
    };
    match path.canonicalize() {
        Ok(p) if p.is_dir() => Some(p),
        result => {
            let why = match result {
                Ok(_) => "is not a directory".to_string(),
                Err(e) => e.to_string(),
            };
            let message = format!("workspace {}: {why}", path.display());
            errors.push(match at {
                Some(at) => file.error(at, "workspace", message, None),
                None => ManifestError::plain(message),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan_errors(yaml: &str) -> String {
        let file = match ManifestFile::parse(std::path::Path::new("pipeline.yaml"), yaml.into()) {
            Ok(f) => f,
            Err(e) => return e.to_string(),
        };
        match Plan::new(&file, None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn oci_aliases_are_checked() {
        let with = |alias: &str| {
            plan_errors(&format!(
                "pipeline: p\nsecrets: {{ u: {{ env: U }} }}\nplugins:\n  x: {{ {alias} }}\nstages:\n  - {{ name: a, uses: x }}\n"
            ))
        };
        assert_eq!(with("oci: \"127.0.0.1:5000/p/x:1\", insecure: true"), "");
        assert!(with("oci: ghcr.io/p/x:1, insecure: true").contains(
            "`insecure` (plain HTTP) is only allowed for a registry on this machine, not `ghcr.io`"
        ));
        assert!(with("oci: ghcr.io/p/x:1, username-secret: u").contains("give both"));
        assert!(
            with("oci: ghcr.io/p/x:1, username-secret: u, password-secret: p")
                .contains("secret `p` is not defined")
        );
        assert!(with("builtin: command, insecure: true").contains("only go with `oci`"));
        assert!(with("oci: p/x:1").contains("does not start with a registry host"));
        // A key that cannot be read, reported once though two stages use the alias.
        let twice = plan_errors(
            "pipeline: p\nplugins:\n  x: { oci: \"ghcr.io/p/x:1\", verify: { key: missing.pub } }\nstages:\n  - { name: a, uses: x }\n  - { name: b, uses: x }\n",
        );
        assert_eq!(
            twice
                .matches("plugins.x.verify.key: cannot read the public key missing.pub")
                .count(),
            1,
            "{twice}"
        );
        let direct =
            plan_errors("pipeline: p\nstages:\n  - { name: a, uses: \"oci://ghcr.io/P\" }\n");
        assert!(
            direct.contains("stages[0].uses: `P` in `oci://ghcr.io/P` is not a repository name"),
            "{direct}"
        );
    }

    const CHAIN: &str = "pipeline: p
stages:
  - { name: test, uses: command }
  - { name: image, uses: command, needs: [test] }
  - { name: deploy, uses: command, needs: [image] }
environments:
  default: { default: true }
  docker: {}
  production: {}
";

    #[test]
    fn a_promotion_chain_is_resolved_with_its_approvals() {
        let yaml = format!(
            "{CHAIN}promotion:\n  reuse: [test, image]\n  environments:\n    - default\n    - name: docker\n    - {{ name: production, approval: required }}\n"
        );
        let file = ManifestFile::parse(std::path::Path::new("pipeline.yaml"), yaml).unwrap();
        let chain = Plan::new(&file, Some("docker")).unwrap().promotion.unwrap();
        assert_eq!(chain.reuse, ["test", "image"]);
        assert_eq!(
            chain.describe(),
            "default → docker → production (approval required)"
        );
        assert_eq!(chain.next("default").unwrap().name, "docker");
        assert_eq!(chain.next("docker").unwrap().approval, Approval::Required);
        assert!(chain.next("production").is_none());
        assert!(chain.next("nowhere").is_none());
        // `default` needs no definition while no environment is marked default.
        let implicit = "pipeline: p\nstages:\n  - { name: a, uses: command }\nenvironments:\n  docker: {}\npromotion: { reuse: [a], environments: [default, docker] }\n";
        assert_eq!(plan_errors(implicit), "");
    }

    #[test]
    fn promotion_errors_name_file_line_and_field() {
        let with = |promotion: &str| plan_errors(&format!("{CHAIN}promotion:\n{promotion}"));
        let err = with("  reuse: [image]\n  environments: [default, docker]\n");
        assert!(
            err.contains("pipeline.yaml:11:11: promotion.reuse[0]: `image` is reused, but it needs `test`, which is not"),
            "{err}"
        );
        assert!(err.contains("add `test` to `promotion.reuse`"), "{err}");
        let err = with("  reuse: [test, tset, test]\n  environments: [default, dokcer, default]\n");
        assert!(
            err.contains("pipeline.yaml:11:17: promotion.reuse[1]: there is no stage named `tset`"),
            "{err}"
        );
        assert!(err.contains("did you mean `test`?"), "{err}");
        assert!(
            err.contains("promotion.reuse[2]: `test` is already listed"),
            "{err}"
        );
        assert!(
            err.contains(
                "pipeline.yaml:12:27: promotion.environments[1]: there is no environment `dokcer`"
            ),
            "{err}"
        );
        assert!(err.contains("did you mean `docker`?"), "{err}");
        assert!(
            err.contains("promotion.environments[2]: `default` is already in the chain"),
            "{err}"
        );
        let err = with("  reuse: []\n  environments: [default]\n");
        assert!(err.contains("needs at least two environments"), "{err}");
        let err =
            with("  reuse: [test]\n  environments: [{ name: docker, approval: yes }, default]\n");
        assert!(err.contains("pipeline.yaml:12:"), "{err}");
        assert!(err.contains("yes"), "{err}");
        let err = with(
            "  reuse: [test]\n  environments: [{ name: docker, aproval: required }, default]\n",
        );
        assert!(err.contains("unknown field `aproval`"), "{err}");
        // An overlay of a reused stage in an environment of the chain.
        let overlaid = CHAIN.replace(
            "  docker: {}",
            "  docker:\n    stages:\n      test: { with: { x: 1 } }",
        );
        let err = plan_errors(&format!(
            "{overlaid}promotion: {{ reuse: [test], environments: [default, docker] }}\n"
        ));
        assert!(
            err.contains("environments.docker.stages.test: `test` is reused by promotion"),
            "{err}"
        );
    }

    #[test]
    fn overlays_merge_objects_and_replace_the_rest() {
        let base =
            json!({"registry": "local", "tags": ["a"], "auth": {"user": "u", "mode": "basic"}});
        let over = json!({"registry": "acr", "tags": ["b"], "auth": {"mode": "aad"}});
        assert_eq!(
            merge(Some(base), Some(over)).unwrap(),
            json!({"registry": "acr", "tags": ["b"], "auth": {"user": "u", "mode": "aad"}})
        );
        assert_eq!(merge(None, Some(json!({"x": 1}))).unwrap(), json!({"x": 1}));
        assert_eq!(
            merge(Some(json!({"x": 1, "y": 2})), Some(json!({"y": null}))).unwrap(),
            json!({"x": 1})
        );
        assert_eq!(merge(Some(json!({"x": 1})), None).unwrap(), json!({"x": 1}));
    }
}
