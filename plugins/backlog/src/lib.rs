//! Built-in stage `backlog`: after a deployment, tell the work items its
//! commits mention. For each item: a history entry / comment saying what was
//! deployed where (environment, commit, image, run), links, and for a closing
//! mention (`Fixes AB#12`, `Closes #12`) the move to the resolved state.
//!
//! Providers, swapped per environment like every other provider:
//! `azure-boards` (Work Item Tracking REST 7.1) and `github-issues`.
//!
//! The commits are `git log previous-commit..commit` in the workspace (a
//! granted `git`), or the messages passed in `messages`. The same deployment
//! (pipeline, environment, commit) is reported on an item once: a marker in
//! the written entry is looked for first, so a re-run or a resumed run adds
//! nothing twice.

mod boards;
mod client;
mod commits;
mod github;
mod mentions;
mod report;

use gantry_sdk::{CapabilityKind, Guest, Outcome, StageContext, StageError, StageInfo};
use mentions::{Item, Style};
use report::{Deployment, Fatal, ItemReport};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    provider: Provider,
    /// The deployed commit: `${{ run.commit }}` (empty outside git).
    #[serde(default)]
    commit: Option<String>,
    /// The commit deployed there before: `${{ run.previous-commit }}`.
    #[serde(default)]
    previous_commit: String,
    /// The messages to read instead of git (e.g. `${{ run.commit-messages }}`).
    #[serde(default)]
    messages: Option<String>,
    /// What was deployed; default: the `image` output of a needed stage.
    #[serde(default)]
    image: Option<String>,
    /// A link to the run, written with every update.
    #[serde(default)]
    run_url: Option<String>,
    /// Print what would be written; write nothing, send nothing.
    #[serde(default)]
    dry_run: bool,
    /// Fail the stage when an item could not be updated (default: report it
    /// and succeed: the deployment itself happened).
    #[serde(default)]
    strict: bool,
    /// Longest wait a throttled service may ask for, in seconds.
    #[serde(default = "two_minutes")]
    max_wait: u64,
    #[serde(default)]
    azure_boards: Option<boards::Config>,
    #[serde(default)]
    github_issues: Option<github::Config>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Provider {
    AzureBoards,
    GithubIssues,
}

fn two_minutes() -> u64 {
    120
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["provider"],
  "properties": {
    "provider": {"enum": ["azure-boards", "github-issues"]},
    "commit": {"type": "string", "description": "the deployed commit: ${{ run.commit }}"},
    "previous-commit": {"type": "string", "description": "the commit deployed there before: ${{ run.previous-commit }} (empty: only `commit` is read)"},
    "messages": {"type": "string", "description": "commit messages to read instead of git, e.g. ${{ run.commit-messages }}"},
    "image": {"type": "string", "description": "what was deployed (default: the `image` output of a needed stage)"},
    "run-url": {"type": "string", "pattern": "^https?://", "description": "a link to the run, added to each item"},
    "dry-run": {"type": "boolean", "description": "print what would be written; send nothing"},
    "strict": {"type": "boolean", "description": "fail the stage when an item cannot be updated (default false)"},
    "max-wait": {"type": "integer", "minimum": 0, "description": "longest wait (s) a throttled service may ask for (default 120)"},
    "azure-boards": {"type": "object", "additionalProperties": false, "required": ["organization", "project", "token-secret"], "properties": {
      "organization": {"type": "string", "minLength": 1},
      "project": {"type": "string", "minLength": 1},
      "token-secret": {"type": "string", "description": "granted secret: a PAT (Work Items read & write) or an Entra ID token"},
      "auth": {"enum": ["pat", "bearer"], "description": "pat (default): Basic with the empty user; bearer: an Entra ID token"},
      "endpoint": {"type": "string", "pattern": "^https?://", "description": "default https://dev.azure.com"},
      "resolved-state": {"type": "string", "minLength": 1, "description": "where `Fixes AB#N` moves an item (default Resolved)"},
      "azure-repos": {"type": "object", "additionalProperties": false, "required": ["project-id", "repository-id"], "properties": {
        "project-id": {"type": "string"}, "repository-id": {"type": "string"}},
        "description": "the repository is in Azure Repos: commits linked as artifacts, plain #N mentions count"},
      "commit-url": {"type": "string", "pattern": "^https?://", "description": "a commit's page, {commit} replaced: linked as a Hyperlink"}}},
    "github-issues": {"type": "object", "additionalProperties": false, "required": ["repository", "token-secret"], "properties": {
      "repository": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"},
      "token-secret": {"type": "string"},
      "api": {"type": "string", "pattern": "^https?://", "description": "default https://api.github.com"},
      "label": {"type": "string", "description": "added to each item, {environment} replaced (default deployed:{environment}; empty: none)"},
      "branch": {"type": "string", "description": "${{ run.branch }}: closing keywords close only on the default branch"},
      "default-branch": {"type": "string", "description": "default main"}}}
  }
}"#;

fn invalid(m: impl Into<String>) -> StageError {
    StageError::InvalidConfig(m.into())
}

fn secret(name: &str) -> Result<String, StageError> {
    gantry_sdk::secrets::get(name).map_err(StageError::from)
}

/// One provider, set up.
enum Tracker<'a> {
    Boards(boards::Boards<'a>),
    Issues(github::Issues<'a>),
}

impl Tracker<'_> {
    fn style(&self) -> Style {
        match self {
            Tracker::Boards(b) => Style::AzureBoards {
                plain_hash: b.cfg.azure_repos.is_some(),
            },
            Tracker::Issues(_) => Style::GitHub,
        }
    }

    fn name(&self, id: u64) -> String {
        match self {
            Tracker::Boards(_) => format!("AB#{id}"),
            Tracker::Issues(_) => format!("#{id}"),
        }
    }

    fn plan(&self, id: u64, item: &Item, d: &Deployment) -> String {
        match self {
            Tracker::Boards(b) => b.plan(id, item, d),
            Tracker::Issues(g) => g.plan(id, item, d),
        }
    }

    fn update(&self, id: u64, item: &Item, d: &Deployment) -> Result<ItemReport, Fatal> {
        match self {
            Tracker::Boards(b) => b.update(id, item, d),
            Tracker::Issues(g) => g.update(id, item, d),
        }
    }

    fn waited(&self) -> u64 {
        match self {
            Tracker::Boards(b) => b.client.waited.get(),
            Tracker::Issues(g) => g.client.waited.get(),
        }
    }
}

fn tracker<'a>(cfg: &'a Config, dry_run: bool) -> Result<Tracker<'a>, StageError> {
    // A dry run reads no secret: it may run where the token is not granted.
    let token = |name: &str| {
        if dry_run {
            Ok(String::new())
        } else {
            secret(name)
        }
    };
    let wait = Duration::from_secs(cfg.max_wait);
    match cfg.provider {
        Provider::AzureBoards => {
            let b = cfg
                .azure_boards
                .as_ref()
                .ok_or_else(|| invalid("provider `azure-boards` needs `azure-boards: {organization, project, token-secret}`"))?;
            let mut client = client::Client::new(
                boards::authorization(b.auth, &token(&b.token_secret)?),
                vec![("accept", "application/json".into())],
            );
            client.max_wait = wait;
            Ok(Tracker::Boards(boards::Boards { cfg: b, client }))
        }
        Provider::GithubIssues => {
            let g = cfg.github_issues.as_ref().ok_or_else(|| {
                invalid(
                    "provider `github-issues` needs `github-issues: {repository, token-secret}`",
                )
            })?;
            let mut client = client::Client::new(
                format!("Bearer {}", token(&g.token_secret)?),
                github::headers(),
            );
            client.max_wait = wait;
            Ok(Tracker::Issues(github::Issues { cfg: g, client }))
        }
    }
}

fn list(reports: &[ItemReport], pick: impl Fn(&ItemReport) -> bool) -> String {
    reports
        .iter()
        .filter(|r| pick(r))
        .map(|r| r.item.clone())
        .collect::<Vec<_>>()
        .join(",")
}

struct Backlog;

impl Guest for Backlog {
    fn describe() -> StageInfo {
        StageInfo {
            name: "backlog".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "After a deployment, updates the work items its commits mention (Azure Boards: AB#N; GitHub Issues: #N): a history entry or comment with what was deployed where, links, and for Fixes/Closes mentions the resolved state. Idempotent per deployment.".into(),
            config_schema: SCHEMA.into(),
            capabilities: vec![
                gantry_sdk::Capability { kind: CapabilityKind::Http, target: None, reason: "the Azure DevOps or GitHub API".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Secret, target: None, reason: "the PAT or token".into() },
                gantry_sdk::Capability { kind: CapabilityKind::Exec, target: None, reason: "git, reading the deployed commits (not with `messages`)".into() },
            ],
        }
    }

    fn run(ctx: StageContext) -> Result<Outcome, StageError> {
        let cfg: Config = gantry_sdk::config(&ctx)?;
        let commit = cfg.commit.clone().unwrap_or_default();
        let messages = match (cfg.messages.as_deref(), &cfg.commit) {
            (Some(m), _) if !m.trim().is_empty() => vec![(commit.clone(), m.to_string())],
            (Some(_), _) => vec![],
            (None, None) => {
                return Err(invalid(
                    "nothing says which commits were deployed: set `commit: ${{ run.commit }}` (and \
                     `previous-commit: ${{ run.previous-commit }}`) or `messages`",
                ));
            }
            (None, Some(c)) if c.is_empty() => {
                // `${{ run.commit }}` outside git and CI: nothing to read.
                gantry_sdk::warn(
                    "the deployed commit is not known (the workspace is not a git repository and \
                     no CI variable names it), so no work item is updated",
                );
                return Ok(Outcome {
                    artifacts: vec![],
                    outputs: vec![gantry_sdk::output("items", "0")],
                    summary: "no commit known: no work item updated".into(),
                });
            }
            (None, Some(_)) => {
                let delivered = commits::delivered(&commit, &cfg.previous_commit)?;
                gantry_sdk::info(match cfg.previous_commit.as_str() {
                    prev if prev == commit => format!(
                        "commit {prev} is already the last one deployed to `{}`: reading it only",
                        ctx.environment
                    ),
                    "" => format!(
                        "first deployment to `{}`: reading commit {} only",
                        ctx.environment, commit
                    ),
                    prev => format!(
                        "{} commit(s) since {prev}, the last one deployed to `{}`",
                        delivered.len(),
                        ctx.environment
                    ),
                });
                delivered
            }
        };
        let tracker = tracker(&cfg, cfg.dry_run)?;
        let repository = cfg
            .github_issues
            .as_ref()
            .map(|g| g.repository.to_ascii_lowercase());
        let items = mentions::scan(&messages, tracker.style(), repository.as_deref());
        let image = cfg.image.clone().or_else(|| {
            ctx.upstream.iter().find_map(|u| {
                u.outputs
                    .iter()
                    .find(|(k, _)| k == "image")
                    .map(|(_, v)| v.clone())
            })
        });
        let deployment = Deployment {
            pipeline: ctx.pipeline.clone(),
            environment: ctx.environment.clone(),
            run_id: ctx.run_id.clone(),
            commit,
            image,
            run_url: cfg.run_url.clone().filter(|u| !u.is_empty()),
        };
        if items.is_empty() {
            return Ok(Outcome {
                artifacts: vec![],
                outputs: vec![gantry_sdk::output("items", "0")],
                summary: format!("no work item mentioned in {} commit(s)", messages.len()),
            });
        }
        if cfg.dry_run {
            for (id, item) in &items {
                gantry_sdk::info(format!(
                    "dry run: {} would get:\n{}",
                    tracker.name(*id),
                    tracker.plan(*id, item, &deployment)
                ));
            }
            let names: Vec<_> = items.keys().map(|id| tracker.name(*id)).collect();
            return Ok(Outcome {
                artifacts: vec![],
                outputs: vec![
                    gantry_sdk::output("items", items.len().to_string()),
                    gantry_sdk::output("planned", names.join(",")),
                ],
                summary: format!("dry run: would update {}", names.join(", ")),
            });
        }
        let mut reports: Vec<ItemReport> = vec![];
        for (id, item) in &items {
            let report = tracker
                .update(*id, item, &deployment)
                .map_err(|Fatal(e)| e)?;
            let result = match (&report.error, report.updated, report.already) {
                (_, _, true) => "already-recorded",
                (Some(_), false, _) => "failed",
                (Some(_), true, _) => "updated-not-transitioned",
                (None, _, _) if report.transitioned => "transitioned",
                (None, _, _) => "updated",
            };
            match &report.error {
                Some(e) => gantry_sdk::warn(format!("{}: {e}", report.item)),
                None => gantry_sdk::info(format!("{}: {}", report.item, result.replace('-', " "))),
            }
            let mut props = vec![
                ("item".to_string(), report.item.clone()),
                ("result".to_string(), result.to_string()),
                ("environment".to_string(), deployment.environment.clone()),
            ];
            if let Some(e) = &report.error {
                props.push(("error".into(), e.clone()));
            }
            gantry_sdk::telemetry::event("backlog.item", &props);
            reports.push(report);
        }
        let updated = list(&reports, |r| r.updated);
        let transitioned = list(&reports, |r| r.transitioned);
        let failed = list(&reports, |r| r.error.is_some());
        let already = list(&reports, |r| r.already);
        let mut parts = vec![];
        if !updated.is_empty() {
            parts.push(format!("updated {}", updated.replace(',', ", ")));
        }
        if !transitioned.is_empty() {
            parts.push(format!("resolved {}", transitioned.replace(',', ", ")));
        }
        if !already.is_empty() {
            parts.push(format!(
                "already recorded on {}",
                already.replace(',', ", ")
            ));
        }
        if !failed.is_empty() {
            parts.push(format!("failed {}", failed.replace(',', ", ")));
        }
        let waited = tracker.waited();
        if waited > 0 {
            parts.push(format!("waited {waited}s for rate limits"));
        }
        let summary = parts.join("; ");
        if cfg.strict && !failed.is_empty() {
            return Err(StageError::Failed(summary));
        }
        Ok(Outcome {
            artifacts: vec![],
            outputs: vec![
                gantry_sdk::output("items", reports.len().to_string()),
                gantry_sdk::output("updated", updated),
                gantry_sdk::output("transitioned", transitioned),
                gantry_sdk::output("failed", failed),
                gantry_sdk::output("already-recorded", already),
            ],
            summary,
        })
    }
}

gantry_sdk::export_stage!(Backlog);
