//! GitHub Issues (REST, API version 2022-11-28): a label, a close with
//! `state_reason: completed` for a closing keyword on the default branch, and
//! last a comment carrying the deployment's marker (so a run that stopped
//! half-way writes what is missing when it is run again).

use crate::client::{Client, Failure, error_text};
use crate::mentions::Item;
use crate::report::{Deployment, Fatal, ItemReport};
use gantry_sdk::StageError;
use gantry_sdk::http::Response;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `owner/name`.
    pub repository: String,
    /// A granted secret with a token (fine-grained: Issues read & write).
    pub token_secret: String,
    #[serde(default = "api")]
    pub api: String,
    /// Added to each item; `{environment}` is replaced. Empty: no label.
    #[serde(default = "label")]
    pub label: String,
    /// The branch the deployed commit is on (`${{ run.branch }}`): closing
    /// keywords close issues only on the default branch, as on GitHub.
    #[serde(default)]
    pub branch: String,
    #[serde(default = "main")]
    pub default_branch: String,
}

fn api() -> String {
    "https://api.github.com".into()
}
fn label() -> String {
    "deployed:{environment}".into()
}
fn main() -> String {
    "main".into()
}

pub fn headers() -> Vec<(&'static str, String)> {
    vec![
        ("accept", "application/vnd.github+json".into()),
        ("x-github-api-version", "2022-11-28".into()),
        ("user-agent", "gantry-backlog".into()),
    ]
}

pub struct Issues<'a> {
    pub cfg: &'a Config,
    pub client: Client,
}

impl Issues<'_> {
    fn issue_url(&self, n: u64) -> String {
        format!(
            "{}/repos/{}/issues/{n}",
            self.cfg.api.trim_end_matches('/'),
            self.cfg.repository
        )
    }

    fn send(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Response, Fatal> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialize"));
        let r = match self.client.send(
            method,
            url,
            bytes.as_deref().map(|b| ("application/json", b)),
        ) {
            Ok(r) => r,
            Err(Failure::Denied(m)) => return Err(Fatal(StageError::Denied(m))),
            Err(Failure::Unavailable(m)) => return Err(Fatal(StageError::Transient(m))),
        };
        if r.status == 401 {
            return Err(Fatal(StageError::Failed(format!(
                "GitHub did not accept the token in secret `{}` ({}): it is wrong or expired",
                self.cfg.token_secret,
                error_text(&r)
            ))));
        }
        Ok(r)
    }

    pub fn label(&self, d: &Deployment) -> String {
        self.cfg.label.replace("{environment}", &d.environment)
    }

    pub fn closes(&self, item: &Item) -> bool {
        item.fixes && self.cfg.branch == self.cfg.default_branch
    }

    fn comment(&self, d: &Deployment, item: &Item) -> String {
        let mut text = format!(
            "Deployed to **{}** by gantry (pipeline `{}`, run ",
            d.environment, d.pipeline
        );
        match &d.run_url {
            Some(u) => text.push_str(&format!("[`{}`]({u})", d.run_id)),
            None => text.push_str(&format!("`{}`", d.run_id)),
        }
        text.push(')');
        if !d.commit.is_empty() {
            text.push_str(&format!(": commit {}", d.commit));
        }
        if let Some(image) = &d.image {
            text.push_str(&format!(", image `{image}`"));
        }
        let others: Vec<_> = item
            .commits
            .iter()
            .filter(|c| **c != d.commit)
            .cloned()
            .collect();
        if !others.is_empty() {
            text.push_str(&format!("; mentioned in {}", others.join(", ")));
        }
        text.push_str(&format!(".\n\n<!-- {} -->", d.marker()));
        text
    }

    pub fn plan(&self, n: u64, item: &Item, d: &Deployment) -> String {
        let mut lines = vec![];
        let label = self.label(d);
        if !label.is_empty() {
            lines.push(format!(
                "POST {}/labels {}",
                self.issue_url(n),
                json!({"labels": [label]})
            ));
        }
        if self.closes(item) {
            lines.push(format!(
                "PATCH {} {}",
                self.issue_url(n),
                json!({"state": "closed", "state_reason": "completed"})
            ));
        }
        lines.push(format!(
            "POST {}/comments {}",
            self.issue_url(n),
            json!({"body": self.comment(d, item)})
        ));
        lines.join("\n")
    }

    /// Whether a comment of an earlier run carries `marker`.
    fn recorded(&self, n: u64, marker: &str) -> Result<Result<bool, String>, Fatal> {
        for page in 1..=100 {
            let url = format!("{}/comments?per_page=100&page={page}", self.issue_url(n));
            let r = self.send("GET", &url, None)?;
            if r.status != 200 {
                return Ok(Err(format!("reading its comments: {}", error_text(&r))));
            }
            let comments: Vec<Value> = match serde_json::from_slice(&r.body) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("reading its comments: not a JSON array: {e}"))),
            };
            if comments
                .iter()
                .any(|c| c["body"].as_str().is_some_and(|b| b.contains(marker)))
            {
                return Ok(Ok(true));
            }
            let next = r.header("link").is_some_and(|l| l.contains("rel=\"next\""));
            if !next {
                return Ok(Ok(false));
            }
        }
        Ok(Err("reading its comments: more than 100 pages".into()))
    }

    pub fn update(&self, n: u64, item: &Item, d: &Deployment) -> Result<ItemReport, Fatal> {
        let mut report = ItemReport {
            item: format!("#{n}"),
            ..Default::default()
        };
        let r = self.send("GET", &self.issue_url(n), None)?;
        if r.status != 200 {
            report.error = Some(error_text(&r));
            return Ok(report);
        }
        let issue: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        match self.recorded(n, &d.marker())? {
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
        let mut errors = vec![];
        let label = self.label(d);
        if !label.is_empty() {
            let r = self.send(
                "POST",
                &format!("{}/labels", self.issue_url(n)),
                Some(&json!({"labels": [label]})),
            )?;
            if r.status != 200 {
                errors.push(format!("adding label `{label}`: {}", error_text(&r)));
            }
        }
        if self.closes(item) && issue["state"] == "open" {
            let r = self.send(
                "PATCH",
                &self.issue_url(n),
                Some(&json!({"state": "closed", "state_reason": "completed"})),
            )?;
            if r.status == 200 {
                report.transitioned = true;
            } else {
                errors.push(format!("closing it: {}", error_text(&r)));
            }
        }
        let r = self.send(
            "POST",
            &format!("{}/comments", self.issue_url(n)),
            Some(&json!({"body": self.comment(d, item)})),
        )?;
        if r.status == 201 {
            report.updated = true;
        } else {
            errors.push(format!("commenting: {}", error_text(&r)));
        }
        if !errors.is_empty() {
            report.error = Some(errors.join("; "));
        }
        Ok(report)
    }
}
