//! `gantry serve`'s configuration: which repositories it watches, how
//! deliveries authenticate, where it keeps its data. A YAML file
//! (`gantry serve --config FILE`), or the same for one repository from flags.
//! Secrets (webhook secrets, API tokens) are never written in the file: it
//! names where they come from, as a manifest's `secrets:` does.

use crate::manifest::{ManifestErrors, SecretSource, parse_yaml};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The file as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeConfig {
    /// The address the HTTP API and webhooks listen on. Default
    /// `127.0.0.1:8700`; a port of 0 picks a free one (printed at start).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The address people reach the service at, e.g.
    /// `https://gantry.example.com` behind a proxy that terminates TLS. Run
    /// pages are linked as `<url>/runs/<n>` (`${{ run.url }}`). Default:
    /// `http://` + the address it listens on.
    #[serde(default)]
    pub url: Option<String>,
    /// Where the service keeps its database and run workspaces, relative to
    /// this file. Default `.gantry-serve` beside it.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// At most this many runs at once, over all repositories. Default 4.
    #[serde(default = "default_max_runs")]
    pub max_runs: usize,
    /// How many finished runs' workspaces are kept (newest first); older ones
    /// are deleted, except those a later promotion still needs. Default 20.
    #[serde(default = "default_keep")]
    pub keep_workspaces: usize,
    /// Bearer tokens the API accepts (`Authorization: Bearer ...`), each with
    /// the name approvals are recorded under. Without any, the API answers
    /// 401 to everything but `/healthz` and `/metrics`.
    #[serde(default)]
    pub api_tokens: Vec<ApiToken>,
    /// The repositories to watch.
    pub repositories: Vec<Repository>,
}

/// One API token.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiToken {
    /// Who holds it, e.g. `alice` or `release-bot`.
    pub name: String,
    /// Where its value comes from, e.g. `{ env: GANTRY_TOKEN_ALICE }`.
    pub token: SecretSource,
}

/// One watched repository.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Repository {
    /// The name in URLs: webhooks post to `/hooks/github/<name>` or
    /// `/hooks/azure-devops/<name>`. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The clone URL (`https://`, `ssh://`, `git://`, `file://`).
    pub url: String,
    /// The pipeline manifest's path inside the repository.
    #[serde(default = "default_manifest")]
    pub manifest: String,
    /// The environment a pushed commit runs in first (the head of the
    /// manifest's `promotion:` chain, if it has one). Default `default`.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// How often the repository is polled with `git ls-remote` (`30s`, `5m`),
    /// or `off`. Polling catches pushes whose webhook was lost. Default 60s.
    #[serde(default = "default_poll")]
    pub poll: String,
    /// A newer push to a branch cancels the branch's running run (queued
    /// ones are always superseded).
    #[serde(default)]
    pub cancel_in_progress: bool,
    /// GitHub push webhooks: the secret the hook signs with.
    #[serde(default)]
    pub github: Option<GithubHook>,
    /// Azure DevOps service hooks (`git.push`): basic auth and/or a header.
    #[serde(default)]
    pub azure_devops: Option<AzureDevopsHook>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GithubHook {
    /// Where the webhook secret comes from, e.g. `{ env: GITHUB_WEBHOOK_SECRET }`.
    pub secret: SecretSource,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AzureDevopsHook {
    /// The subscription's basic auth user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Where the basic auth password comes from.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// A header the subscription sends, and where its value comes from.
    #[serde(default)]
    pub header: Option<HookHeader>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HookHeader {
    pub name: String,
    pub value: SecretSource,
}

fn default_listen() -> String {
    "127.0.0.1:8700".into()
}
fn default_max_runs() -> usize {
    4
}
fn default_keep() -> usize {
    20
}
fn default_manifest() -> String {
    "pipeline.yaml".into()
}
fn default_environment() -> String {
    "default".into()
}
fn default_poll() -> String {
    "60s".into()
}

/// A loaded, checked configuration.
#[derive(Debug)]
pub struct Loaded {
    pub config: ServeConfig,
    /// The directory relative paths (data, secret files) are resolved in.
    pub base: PathBuf,
    pub data: PathBuf,
    /// Each repository's poll interval (`None`: off), in the same order.
    pub poll: Vec<Option<Duration>>,
}

impl Loaded {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ManifestErrors(vec![crate::manifest::ManifestError::plain(format!(
                "cannot read {}: {e}",
                path.display()
            ))])
        })?;
        let config: ServeConfig = parse_yaml(path, &Arc::new(source))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self::check(config, base, &path.display().to_string())
    }

    /// Check a configuration built from flags (or parsed), naming `origin`
    /// in errors.
    pub fn check(config: ServeConfig, base: PathBuf, origin: &str) -> Result<Self, ManifestErrors> {
        let mut errors = vec![];
        let mut err = |field: String, message: String| {
            errors.push(crate::manifest::ManifestError::plain(format!(
                "{origin}: {field}: {message}"
            )))
        };
        if config.repositories.is_empty() {
            err(
                "repositories".into(),
                "no repository to watch; add one (name, url, manifest)".into(),
            );
        }
        if let Some(url) = &config.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            err(
                "url".into(),
                format!("`{url}` is not an http:// or https:// address"),
            );
        }
        if config.max_runs == 0 {
            err("max-runs".into(), "must be at least 1".into());
        }
        if config.listen.parse::<std::net::SocketAddr>().is_err() {
            err(
                "listen".into(),
                format!(
                    "`{}` is not an address such as 127.0.0.1:8700",
                    config.listen
                ),
            );
        }
        let mut poll = vec![];
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in config.repositories.iter().enumerate() {
            let at = format!("repositories[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || r.name.starts_with('.')
            {
                err(
                    format!("{at}.name"),
                    format!(
                        "`{}` is not a name of letters, digits, `-`, `_`, `.`",
                        r.name
                    ),
                );
            }
            if !names.insert(r.name.clone()) {
                err(format!("{at}.name"), format!("`{}` is used twice", r.name));
            }
            if let Err(e) = crate::git::check_url(&r.url) {
                err(format!("{at}.url"), e.to_string());
            }
            let m = Path::new(&r.manifest);
            if m.is_absolute()
                || m.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                err(
                    format!("{at}.manifest"),
                    format!(
                        "`{}` must be a relative path inside the repository",
                        r.manifest
                    ),
                );
            }
            poll.push(match r.poll.as_str() {
                "off" => None,
                text => match humantime::parse_duration(text) {
                    Ok(d) if d >= Duration::from_millis(100) => Some(d),
                    Ok(_) => {
                        err(format!("{at}.poll"), "at least 100ms, or `off`".into());
                        None
                    }
                    Err(e) => {
                        err(
                            format!("{at}.poll"),
                            format!("`{text}`: {e} (e.g. `30s`, `5m`, or `off`)"),
                        );
                        None
                    }
                },
            });
            if let Some(ado) = &r.azure_devops {
                if ado.username.is_some() != ado.password.is_some() {
                    err(
                        format!("{at}.azure-devops"),
                        "`username` and `password` go together".into(),
                    );
                }
                if ado.username.is_none() && ado.header.is_none() {
                    err(
                        format!("{at}.azure-devops"),
                        "give `username` + `password` or `header` (or both): Azure DevOps \
                         signs nothing, so an unauthenticated hook would let anyone start runs"
                            .into(),
                    );
                }
            }
        }
        if !errors.is_empty() {
            return Err(ManifestErrors(errors));
        }
        let data = base.join(
            config
                .data
                .clone()
                .unwrap_or_else(|| ".gantry-serve".into()),
        );
        Ok(Loaded {
            config,
            base,
            data,
            poll,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Loaded, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.yaml");
        std::fs::write(&path, yaml).unwrap();
        Loaded::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file_loads_with_its_defaults() {
        let l = load("repositories:\n  - { name: app, url: \"https://git.example/app.git\" }\n")
            .unwrap();
        assert_eq!(l.config.listen, "127.0.0.1:8700");
        assert_eq!(l.config.max_runs, 4);
        let r = &l.config.repositories[0];
        assert_eq!(
            (r.manifest.as_str(), r.environment.as_str()),
            ("pipeline.yaml", "default")
        );
        assert_eq!(l.poll, vec![Some(Duration::from_secs(60))]);
        assert!(l.data.ends_with(".gantry-serve"));
    }

    #[test]
    fn every_mistake_is_named_by_field() {
        let e = load(
            "listen: nowhere\nurl: gantry.example.com\nmax-runs: 0\nrepositories:\n  \
             - { name: \"bad name\", url: \"--upload-pack=x\", manifest: ../up.yaml, poll: soon }\n  \
             - { name: ok, url: \"https://git.example/a.git\", azure-devops: { username: u } }\n  \
             - { name: ok, url: \"https://git.example/b.git\", azure-devops: {} }\n",
        )
        .unwrap_err();
        for needle in [
            "listen: `nowhere`",
            "url: `gantry.example.com` is not an http:// or https:// address",
            "max-runs: must be at least 1",
            "repositories[0].name",
            "repositories[0].url",
            "repositories[0].manifest",
            "repositories[0].poll: `soon`",
            "repositories[1].azure-devops: `username` and `password` go together",
            "repositories[2].name: `ok` is used twice",
            "repositories[2].azure-devops: give `username` + `password` or `header`",
        ] {
            assert!(e.contains(needle), "`{needle}` not in:\n{e}");
        }
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_line() {
        let e = load("repositories:\n  - { name: a, url: \"https://x/a.git\", pol: 5s }\n")
            .unwrap_err();
        assert!(
            e.contains("serve.yaml:2:") && e.contains("unknown field `pol`"),
            "{e}"
        );
    }
}
