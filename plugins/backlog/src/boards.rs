//! Azure Boards (Work Item Tracking REST 7.1): one JSON Patch per work item,
//! guarded by `test /rev` from a fresh GET, carrying the history entry, the
//! links and, for a `Fixes AB#N` mention, the state.

use crate::client::{Client, Failure, error_text, escape, is_html};
use crate::mentions::Item;
use crate::report::{Deployment, Fatal, ItemReport};
use gantry_sdk::StageError;
use gantry_sdk::http::Response;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub organization: String,
    pub project: String,
    /// A granted secret holding a PAT (Work Items: Read & write) or an Entra
    /// ID access token.
    pub token_secret: String,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default = "endpoint")]
    pub endpoint: String,
    /// The state a `Fixes AB#N` mention moves the item to.
    #[serde(default = "resolved")]
    pub resolved_state: String,
    /// The repository is in Azure Repos: commits are linked as artifacts, and
    /// plain `#N` mentions count.
    #[serde(default)]
    pub azure_repos: Option<AzureRepos>,
    /// A commit's web page, `{commit}` replaced by its sha: linked as a
    /// Hyperlink when the repository is not in Azure Repos.
    #[serde(default)]
    pub commit_url: Option<String>,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Auth {
    /// `Basic base64(":" + PAT)`.
    #[default]
    Pat,
    /// `Bearer <Entra ID token>`.
    Bearer,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AzureRepos {
    pub project_id: String,
    pub repository_id: String,
}

fn endpoint() -> String {
    "https://dev.azure.com".into()
}
fn resolved() -> String {
    "Resolved".into()
}

/// 412s in a row before giving up on an item (someone edits it constantly).
const STALE_RETRIES: u32 = 5;

pub fn authorization(auth: Auth, token: &str) -> String {
    use base64::Engine;
    match auth {
        Auth::Pat => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(":{token}"))
        ),
        Auth::Bearer => format!("Bearer {token}"),
    }
}

pub struct Boards<'a> {
    pub cfg: &'a Config,
    pub client: Client,
}

fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Boards<'_> {
    fn base(&self) -> String {
        format!(
            "{}/{}/{}/_apis/wit",
            self.cfg.endpoint.trim_end_matches('/'),
            segment(&self.cfg.organization),
            segment(&self.cfg.project)
        )
    }

    /// A 401, a 203 or an HTML body: the credentials are not accepted.
    fn auth_failure(&self, r: &Response) -> Option<Fatal> {
        let what = match self.cfg.auth {
            Auth::Pat => "the PAT in secret",
            Auth::Bearer => "the Entra ID token in secret",
        };
        let why = if r.status == 401 {
            "HTTP 401".to_string()
        } else if r.status == 203 || (r.status < 300 && is_html(r)) {
            format!(
                "HTTP {} with an HTML sign-in page instead of JSON",
                r.status
            )
        } else {
            return None;
        };
        Some(Fatal(StageError::Failed(format!(
            "Azure DevOps did not accept {what} `{}` ({why}): it is wrong, expired, or lacks the \
             Work Items (Read & write) scope for organization `{}`",
            self.cfg.token_secret, self.cfg.organization
        ))))
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, Fatal> {
        match self.client.send(method, url, body) {
            Ok(r) => match self.auth_failure(&r) {
                Some(f) => Err(f),
                None => Ok(r),
            },
            Err(Failure::Denied(m)) => Err(Fatal(StageError::Denied(m))),
            Err(Failure::Unavailable(m)) => Err(Fatal(StageError::Transient(m))),
        }
    }

    /// Whether an earlier run already wrote `marker` into the item's history.
    fn recorded(&self, id: u64, marker: &str) -> Result<Result<bool, String>, Fatal> {
        let mut token: Option<String> = None;
        for _ in 0..100 {
            let mut url = format!(
                "{}/workItems/{id}/comments?api-version=7.0-preview.3&$top=200",
                self.base()
            );
            if let Some(t) = &token {
                url.push_str(&format!("&continuationToken={}", segment(t)));
            }
            let r = self.send("GET", &url, None)?;
            if r.status != 200 {
                return Ok(Err(format!("reading its comments: {}", error_text(&r))));
            }
            let page: Value = match serde_json::from_slice(&r.body) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("reading its comments: not JSON: {e}"))),
            };
            let comments = page["comments"].as_array().cloned().unwrap_or_default();
            if comments
                .iter()
                .any(|c| c["text"].as_str().is_some_and(|t| t.contains(marker)))
            {
                return Ok(Ok(true));
            }
            token = page["continuationToken"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() || comments.is_empty() {
                return Ok(Ok(false));
            }
        }
        Ok(Err("reading its comments: more than 100 pages".into()))
    }

    fn history(&self, d: &Deployment, commits: &[String]) -> String {
        let mut html = format!(
            "Deployed to <b>{}</b> by gantry (pipeline {}, run ",
            escape(&d.environment),
            escape(&d.pipeline)
        );
        match &d.run_url {
            Some(u) => html.push_str(&format!(
                "<a href=\"{}\">{}</a>",
                escape(u),
                escape(&d.run_id)
            )),
            None => html.push_str(&escape(&d.run_id)),
        }
        html.push(')');
        if !d.commit.is_empty() {
            html.push_str(&format!(
                ": commit <code>{}</code>",
                escape(d.short_commit())
            ));
        }
        if let Some(image) = &d.image {
            html.push_str(&format!(", image <code>{}</code>", escape(image)));
        }
        let others: Vec<_> = commits
            .iter()
            .filter(|c| **c != d.commit)
            .map(|c| format!("<code>{}</code>", escape(&c[..c.len().min(12)])))
            .collect();
        if !others.is_empty() {
            html.push_str(&format!("; mentioned in {}", others.join(", ")));
        }
        html.push_str(&format!(".<br><small>{}</small>", escape(&d.marker())));
        html
    }

    /// The links to add: the mentioning commits, and the run.
    fn links(&self, d: &Deployment, commits: &[String]) -> Vec<Value> {
        let mut links = vec![];
        for sha in commits {
            if let Some(r) = &self.cfg.azure_repos {
                links.push(json!({
                    "rel": "ArtifactLink",
                    "url": format!("vstfs:///Git/Commit/{}%2F{}%2F{sha}", r.project_id, r.repository_id),
                    "attributes": {"name": "Fixed in Commit"}
                }));
            } else if let Some(template) = &self.cfg.commit_url {
                links.push(json!({
                    "rel": "Hyperlink",
                    "url": template.replace("{commit}", sha),
                    "attributes": {"comment": format!("Commit {}", &sha[..sha.len().min(12)])}
                }));
            }
        }
        if let Some(u) = &d.run_url {
            links.push(json!({
                "rel": "Hyperlink",
                "url": u,
                "attributes": {"comment": format!("gantry run {}: deployed to {}", d.run_id, d.environment)}
            }));
        }
        links
    }

    /// The patch for an item at `rev` with `relations` and `state`.
    fn patch(
        &self,
        d: &Deployment,
        item: &Item,
        current: &Value,
        transition: bool,
    ) -> (Vec<Value>, bool) {
        let commits: Vec<String> = if item.commits.is_empty() && !d.commit.is_empty() {
            vec![d.commit.clone()]
        } else {
            item.commits.clone()
        };
        let mut ops = vec![
            json!({"op": "test", "path": "/rev", "value": current["rev"]}),
            json!({"op": "add", "path": "/fields/System.History", "value": self.history(d, &commits)}),
        ];
        let existing: Vec<String> = current["relations"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r["url"].as_str().map(str::to_ascii_lowercase))
                    .collect()
            })
            .unwrap_or_default();
        for link in self.links(d, &commits) {
            let url = link["url"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !existing.contains(&url) {
                ops.push(json!({"op": "add", "path": "/relations/-", "value": link}));
            }
        }
        let state = current["fields"]["System.State"]
            .as_str()
            .unwrap_or_default();
        let moves = transition && !state.eq_ignore_ascii_case(&self.cfg.resolved_state);
        if moves {
            ops.push(json!({"op": "add", "path": "/fields/System.State", "value": self.cfg.resolved_state}));
        }
        (ops, moves)
    }

    /// What would be written to `id` (dry run): the patch without a rev.
    pub fn plan(&self, id: u64, item: &Item, d: &Deployment) -> String {
        let current = json!({"rev": "<fresh>", "fields": {}, "relations": []});
        let (ops, _) = self.patch(d, item, &current, item.fixes);
        format!(
            "PATCH {}/workitems/{id}?api-version=7.1\n{}",
            self.base(),
            serde_json::to_string_pretty(&ops).unwrap_or_default()
        )
    }

    pub fn update(&self, id: u64, item: &Item, d: &Deployment) -> Result<ItemReport, Fatal> {
        let mut report = ItemReport {
            item: format!("AB#{id}"),
            ..Default::default()
        };
        match self.recorded(id, &d.marker())? {
            Ok(true) => {
                report.already = true;
                return Ok(report);
            }
            Ok(false) => {}
            Err(e) => {
                report.error = Some(e);
                return Ok(report);
            }
        }
        let mut transition = item.fixes;
        let mut stale = 0;
        loop {
            let url = format!(
                "{}/workitems/{id}?$expand=Relations&api-version=7.1",
                self.base()
            );
            let r = self.send("GET", &url, None)?;
            if r.status != 200 {
                report.error = Some(error_text(&r));
                return Ok(report);
            }
            let current: Value = match serde_json::from_slice(&r.body) {
                Ok(v) => v,
                Err(e) => {
                    report.error = Some(format!("the work item is not JSON: {e}"));
                    return Ok(report);
                }
            };
            let (ops, moves) = self.patch(d, item, &current, transition);
            let body = serde_json::to_vec(&ops).expect("JSON values serialize");
            let url = format!("{}/workitems/{id}?api-version=7.1", self.base());
            let r = self.send("PATCH", &url, Some(("application/json-patch+json", &body)))?;
            match r.status {
                200 => {
                    report.updated = true;
                    report.transitioned = moves;
                    return Ok(report);
                }
                412 if stale < STALE_RETRIES => {
                    // Changed since our GET: read it again and redo the patch.
                    stale += 1;
                    gantry_sdk::info(format!(
                        "AB#{id} changed since it was read (HTTP 412); reading it again"
                    ));
                }
                400 if moves && {
                    let text = error_text(&r);
                    text.contains("TF401320")
                        || text.contains("not in the list of supported values")
                } =>
                {
                    // The workflow refuses the state: report it, and still
                    // write the history and links without it.
                    let state = current["fields"]["System.State"].as_str().unwrap_or("?");
                    report.error = Some(format!(
                        "cannot move it from `{state}` to `{}`: {}",
                        self.cfg.resolved_state,
                        error_text(&r)
                    ));
                    transition = false;
                }
                _ => {
                    let text = error_text(&r);
                    report.error = Some(match report.error.take() {
                        Some(before) => format!("{before}; then: {text}"),
                        None => text,
                    });
                    return Ok(report);
                }
            }
        }
    }
}
