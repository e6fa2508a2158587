//! Triggers: the manifest's `on:` section, and the decision whether a push
//! starts a run. Filters follow GitHub Actions: globs where `*` stays inside one
//! path segment and `**` crosses them, `!pattern` excludes what earlier patterns
//! included (the last matching pattern wins), `branches` without `tags` means no
//! tag runs and the other way round, path filters are not applied to tags.

use crate::manifest::{ManifestError, ManifestErrors, ManifestFile};
use crate::webhook::PushEvent;
use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// `on:` as written.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Which pushes start a run. `push: {}` (or `push:` alone) means every
    /// push; without `push`, no push does.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub push: Option<PushTrigger>,
}

/// `on.push` as written. Every list is optional; patterns are globs, `!pattern`
/// excludes.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PushTrigger {
    /// Branch names (without `refs/heads/`) that start a run, e.g. `main`,
    /// `release/**`, `!release/old`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub branches: Option<Vec<Spanned<String>>>,
    /// Branch names that never start a run; not together with `branches`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub branches_ignore: Option<Vec<Spanned<String>>>,
    /// Tag names (without `refs/tags/`) that start a run, e.g. `v*`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub tags: Option<Vec<Spanned<String>>>,
    /// Tag names that never start a run; not together with `tags`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub tags_ignore: Option<Vec<Spanned<String>>>,
    /// A branch push runs only when a changed file matches, e.g. `src/**`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub paths: Option<Vec<Spanned<String>>>,
    /// A branch push does not run when every changed file matches; not
    /// together with `paths`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub paths_ignore: Option<Vec<Spanned<String>>>,
}

/// `push:` with no value is the same as `push: {}`.
fn null_is_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PushTrigger>, D::Error> {
    Ok(Some(
        Option::<PushTrigger>::deserialize(d)?.unwrap_or_default(),
    ))
}

/// One compiled glob list, e.g. `on.push.branches`.
#[derive(Debug)]
struct Patterns {
    field: &'static str,
    globs: Vec<(bool, String, GlobMatcher)>,
}

impl Patterns {
    /// Whether `name` is included: the last pattern matching it decides.
    fn includes(&self, name: &str) -> bool {
        self.globs
            .iter()
            .rev()
            .find(|(_, _, g)| g.is_match(name))
            .is_some_and(|(negated, _, _)| !negated)
    }
}

/// The compiled `on:` of a manifest, ready to judge push events.
#[derive(Debug)]
pub struct PushRules {
    /// `None`: the manifest has `on:` without `push`, so no push runs.
    filters: Option<PushFilters>,
}

#[derive(Debug, Default)]
struct PushFilters {
    branches: Option<Patterns>,
    branches_ignore: Option<Patterns>,
    tags: Option<Patterns>,
    tags_ignore: Option<Patterns>,
    paths: Option<Patterns>,
    paths_ignore: Option<Patterns>,
}

/// Whether a push starts a run, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub run: bool,
    pub reason: String,
}

impl Decision {
    fn run(reason: impl Into<String>) -> Self {
        Decision {
            run: true,
            reason: reason.into(),
        }
    }
    fn skip(reason: impl Into<String>) -> Self {
        Decision {
            run: false,
            reason: format!("skipped: {}", reason.into()),
        }
    }
}

/// Markers in a head commit message that skip the run (GitHub Actions' list,
/// plus Azure Pipelines' `***NO_CI***`).
const SKIP_MARKERS: &[&str] = &[
    "[skip ci]",
    "[ci skip]",
    "[no ci]",
    "[skip actions]",
    "[actions skip]",
    "***NO_CI***",
];

/// Why `message` asks not to run, if it does: a marker, or a
/// `skip-checks: true` trailer line.
pub fn skip_marker(message: &str) -> Option<&'static str> {
    if let Some(m) = SKIP_MARKERS.iter().find(|m| message.contains(**m)) {
        return Some(m);
    }
    message
        .lines()
        .filter_map(|l| l.trim().strip_prefix("skip-checks:"))
        .any(|v| v.trim() == "true")
        .then_some("skip-checks: true")
}

/// Check the `on:` section of `file`, adding every problem to `errors`.
pub fn check(file: &ManifestFile, errors: &mut Vec<ManifestError>) {
    if let Err(mut e) = PushRules::new(file) {
        errors.append(&mut e.0);
    }
}

impl PushRules {
    /// Compile the `on:` of `file`. A manifest without `on:` runs on every push:
    /// pointing `gantry serve` at a repository is the opt-in.
    pub fn new(file: &ManifestFile) -> Result<Self, ManifestErrors> {
        let Some(on) = &file.manifest.on else {
            return Ok(PushRules {
                filters: Some(PushFilters::default()),
            });
        };
        let Some(push) = &on.push else {
            return Ok(PushRules { filters: None });
        };
        let mut errors = vec![];
        let mut compile = |field: &'static str, list: &Option<Vec<Spanned<String>>>| {
            list.as_ref()
                .map(|list| compile_patterns(file, field, list, &mut errors))
        };
        let filters = PushFilters {
            branches: compile("on.push.branches", &push.branches),
            branches_ignore: compile("on.push.branches-ignore", &push.branches_ignore),
            tags: compile("on.push.tags", &push.tags),
            tags_ignore: compile("on.push.tags-ignore", &push.tags_ignore),
            paths: compile("on.push.paths", &push.paths),
            paths_ignore: compile("on.push.paths-ignore", &push.paths_ignore),
        };
        // As in GitHub Actions: one list says it, with `!` for exceptions.
        for (a, b, name) in [
            (&push.branches, &push.branches_ignore, "branches"),
            (&push.tags, &push.tags_ignore, "tags"),
            (&push.paths, &push.paths_ignore, "paths"),
        ] {
            if let (Some(_), Some(ignore)) = (a, b) {
                let at = ignore
                    .first()
                    .map_or(file.manifest.pipeline.referenced, |s| s.referenced);
                errors.push(file.error(
                    &at,
                    &format!("on.push.{name}-ignore"),
                    format!("`{name}` and `{name}-ignore` cannot both be given"),
                    Some(format!(
                        "exclude with `!pattern` in `{name}` instead, e.g. `!release/old`"
                    )),
                ));
            }
        }
        if errors.is_empty() {
            Ok(PushRules {
                filters: Some(filters),
            })
        } else {
            Err(ManifestErrors(errors))
        }
    }

    /// Whether `event` starts a run, with the reason in words.
    pub fn decide(&self, event: &PushEvent) -> Decision {
        let Some(f) = &self.filters else {
            return Decision::skip("the manifest's `on:` has no `push` trigger");
        };
        let r = &event.reference;
        if event.deleted {
            return Decision::skip(format!("{r} was deleted"));
        }
        let (kind, name) = if let Some(b) = r.strip_prefix("refs/heads/") {
            ("branch", b)
        } else if let Some(t) = r.strip_prefix("refs/tags/") {
            ("tag", t)
        } else {
            return Decision::skip(format!("{r} is neither a branch nor a tag"));
        };
        let (only, ignore, other_only, other_ignore) = if kind == "branch" {
            (&f.branches, &f.branches_ignore, &f.tags, &f.tags_ignore)
        } else {
            (&f.tags, &f.tags_ignore, &f.branches, &f.branches_ignore)
        };
        if let Some(p) = only {
            if !p.includes(name) {
                return Decision::skip(format!("{r} matches no {kind} filter of {}", p.field));
            }
        } else if let Some(p) = ignore {
            if p.includes(name) {
                return Decision::skip(format!("{r} matches {}", p.field));
            }
        } else if let Some(p) = other_only.as_ref().or(other_ignore.as_ref()) {
            // Filtering only the other kind of ref means this kind never runs.
            return Decision::skip(format!(
                "{r} is a {kind} and on.push filters only {}",
                p.field.trim_start_matches("on.push.")
            ));
        }
        if let Some(m) = event
            .head_commit
            .as_ref()
            .and_then(|c| skip_marker(&c.message))
        {
            return Decision::skip(format!("{m} in the head commit message"));
        }
        let mut reason = format!("{r} matches on.push");
        if kind == "branch" && (f.paths.is_some() || f.paths_ignore.is_some()) {
            let Some(files) = event.changed_files() else {
                return Decision::run(format!(
                    "{reason}; the push does not list every changed file, so on.push.paths{} cannot be checked",
                    if f.paths.is_some() { "" } else { "-ignore" }
                ));
            };
            if let Some(p) = &f.paths {
                match files.iter().find(|file| p.includes(file)) {
                    Some(file) => reason = format!("{reason}; {file} matches {}", p.field),
                    None => return Decision::skip(format!("no changed file matches {}", p.field)),
                }
            }
            if let Some(p) = &f.paths_ignore {
                match files.iter().find(|file| !p.includes(file)) {
                    Some(file) => reason = format!("{reason}; {file} is outside {}", p.field),
                    None => {
                        return Decision::skip(format!("every changed file matches {}", p.field));
                    }
                }
            }
        }
        Decision::run(reason)
    }
}

/// Compile one list of patterns, reporting each bad one at its line.
fn compile_patterns(
    file: &ManifestFile,
    field: &'static str,
    list: &[Spanned<String>],
    errors: &mut Vec<ManifestError>,
) -> Patterns {
    let mut globs = vec![];
    for (i, p) in list.iter().enumerate() {
        let (negated, glob) = match p.value.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.value.as_str()),
        };
        let problem = if glob.is_empty() {
            Some("an empty pattern matches nothing".to_string())
        } else {
            match GlobBuilder::new(glob)
                // `*` stays within a path segment; `**` crosses segments.
                .literal_separator(true)
                .backslash_escape(true)
                .build()
            {
                Ok(g) => {
                    globs.push((negated, p.value.clone(), g.compile_matcher()));
                    None
                }
                Err(e) => Some(format!("`{}` is not a valid glob: {}", p.value, e.kind())),
            }
        };
        if let Some(message) = problem {
            errors.push(file.error(
                &p.referenced,
                &format!("{field}[{i}]"),
                message,
                Some("globs use `*` (within a `/` segment), `**`, `?`, `[a-z]` and `{a,b}`; `!` in front excludes".into()),
            ));
        }
    }
    // GitHub rejects a list that only excludes: nothing would ever be included.
    if !globs.is_empty() && globs.iter().all(|(negated, _, _)| *negated) {
        errors.push(file.error(
            &list[0].referenced,
            field,
            "every pattern starts with `!`, so nothing is included",
            Some("put an including pattern first, e.g. `'**'`".into()),
        ));
    }
    Patterns { field, globs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{Commit, PushEvent};
    use std::path::Path;

    fn rules(on: &str) -> Result<PushRules, String> {
        let text = format!("pipeline: p\n{on}stages:\n  - name: a\n    uses: noop\n");
        let file =
            ManifestFile::parse(Path::new("pipeline.yaml"), text).map_err(|e| e.to_string())?;
        PushRules::new(&file).map_err(|e| e.to_string())
    }

    fn commit(message: &str, files: Option<&[&str]>) -> Commit {
        let list = files.map(|f| f.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        Commit {
            id: "a".repeat(40),
            message: message.into(),
            added: list.clone(),
            removed: list.as_ref().map(|_| vec![]),
            modified: list.as_ref().map(|_| vec![]),
        }
    }

    fn push(reference: &str, message: &str, files: Option<&[&str]>) -> PushEvent {
        let c = commit(message, files);
        PushEvent {
            repository: "https://example.com/o/r.git".into(),
            reference: reference.into(),
            before: "1".repeat(40),
            after: "a".repeat(40),
            created: false,
            deleted: false,
            forced: false,
            commits: vec![c.clone()],
            commits_truncated: false,
            head_commit: Some(c),
            pusher: "octo".into(),
        }
    }

    const FILTERS: &str = "on:\n  push:\n    branches: [main, \"release/**\", \"!release/old\"]\n    tags: [\"v*\"]\n    paths: [\"src/**\", \"Cargo.*\"]\n";

    #[test]
    fn branches_and_tags_by_glob_with_exclusions() {
        let r = rules(FILTERS).unwrap();
        let d = |reference: &str| r.decide(&push(reference, "fix", Some(&["src/lib.rs"])));
        assert!(d("refs/heads/main").run);
        assert!(d("refs/heads/release/1.0").run);
        assert!(d("refs/heads/release/1.0/hotfix").run, "`**` crosses `/`");
        assert_eq!(
            d("refs/heads/dev").reason,
            "skipped: refs/heads/dev matches no branch filter of on.push.branches"
        );
        assert!(!d("refs/heads/release/old").run, "`!` excludes");
        assert!(d("refs/tags/v1.2").run);
        assert!(!d("refs/tags/1.2").run);
        assert!(!d("refs/notes/x").run);
    }

    #[test]
    fn star_stays_within_a_segment_and_the_last_match_wins() {
        let r = rules(
            "on:\n  push:\n    branches: [\"feature/*\", \"!feature/wip*\", \"feature/wip-ok\"]\n",
        )
        .unwrap();
        let d = |b: &str| r.decide(&push(b, "x", None)).run;
        assert!(d("refs/heads/feature/a"));
        assert!(!d("refs/heads/feature/a/b"));
        assert!(!d("refs/heads/feature/wip-1"));
        assert!(
            d("refs/heads/feature/wip-ok"),
            "re-included by a later pattern"
        );
    }

    #[test]
    fn filtering_one_kind_of_ref_leaves_the_other_out() {
        let r = rules("on:\n  push:\n    tags: [\"v*\"]\n").unwrap();
        let d = r.decide(&push("refs/heads/main", "x", None));
        assert_eq!(
            d.reason,
            "skipped: refs/heads/main is a branch and on.push filters only tags"
        );
        let r = rules("on:\n  push:\n    branches-ignore: [\"dependabot/**\"]\n").unwrap();
        assert!(r.decide(&push("refs/heads/main", "x", None)).run);
        assert!(
            !r.decide(&push("refs/heads/dependabot/npm/x", "x", None))
                .run
        );
        assert!(!r.decide(&push("refs/tags/v1", "x", None)).run);
    }

    #[test]
    fn no_on_section_runs_every_push_and_on_without_push_runs_none() {
        let all = rules("").unwrap();
        assert!(all.decide(&push("refs/tags/anything", "x", None)).run);
        let bare = rules("on:\n  push:\n").unwrap();
        assert!(bare.decide(&push("refs/heads/x", "x", None)).run);
        let none = rules("on: {}\n").unwrap();
        assert_eq!(
            none.decide(&push("refs/heads/main", "x", None)).reason,
            "skipped: the manifest's `on:` has no `push` trigger"
        );
    }

    #[test]
    fn skip_markers_in_the_head_commit_skip_the_run() {
        let r = rules(FILTERS).unwrap();
        for message in [
            "fix typo [skip ci]",
            "[ci skip] docs",
            "x [no ci]",
            "y [skip actions]",
            "z ***NO_CI***",
            "title\n\nbody\nskip-checks: true",
            "title\n\nskip-checks:true",
        ] {
            let d = r.decide(&push("refs/heads/main", message, Some(&["src/a.rs"])));
            assert!(!d.run, "{message:?}");
            assert!(
                d.reason.contains("in the head commit message"),
                "{}",
                d.reason
            );
        }
        let d = r.decide(&push(
            "refs/heads/main",
            "fix [skip ci]",
            Some(&["src/a.rs"]),
        ));
        assert_eq!(d.reason, "skipped: [skip ci] in the head commit message");
        for message in ["skip ci", "skip-checks: false", "[skip-ci]"] {
            assert!(
                r.decide(&push("refs/heads/main", message, Some(&["src/a.rs"])))
                    .run
            );
        }
    }

    #[test]
    fn path_filters_need_a_matching_changed_file() {
        let r = rules(FILTERS).unwrap();
        let d = r.decide(&push(
            "refs/heads/main",
            "docs",
            Some(&["README.md", "docs/x.md"]),
        ));
        assert_eq!(d.reason, "skipped: no changed file matches on.push.paths");
        let d = r.decide(&push(
            "refs/heads/main",
            "dep",
            Some(&["README.md", "Cargo.lock"]),
        ));
        assert!(d.run);
        assert!(
            d.reason.contains("Cargo.lock matches on.push.paths"),
            "{}",
            d.reason
        );
        // Tags are not path-filtered.
        assert!(
            r.decide(&push("refs/tags/v1", "x", Some(&["README.md"])))
                .run
        );

        let r = rules("on:\n  push:\n    paths-ignore: [\"docs/**\", \"*.md\"]\n").unwrap();
        let d = r.decide(&push(
            "refs/heads/main",
            "x",
            Some(&["docs/a.md", "README.md"]),
        ));
        assert_eq!(
            d.reason,
            "skipped: every changed file matches on.push.paths-ignore"
        );
        assert!(
            r.decide(&push(
                "refs/heads/main",
                "x",
                Some(&["docs/a.md", "src/a.rs"])
            ))
            .run
        );
    }

    #[test]
    fn an_incomplete_file_list_runs_and_says_so() {
        let r = rules(FILTERS).unwrap();
        // No file lists at all (Azure DevOps never sends them).
        let d = r.decide(&push("refs/heads/main", "x", None));
        assert!(d.run);
        assert!(d.reason.contains("cannot be checked"), "{}", d.reason);
        // GitHub capped the commit list.
        let mut e = push("refs/heads/main", "x", Some(&["README.md"]));
        e.commits_truncated = true;
        assert!(r.decide(&e).run);
        // A forced push or a new branch lists only some commits.
        let mut e = push("refs/heads/main", "x", Some(&["README.md"]));
        e.forced = true;
        assert!(r.decide(&e).run);
        let mut e = push("refs/heads/main", "x", Some(&["README.md"]));
        e.commits.clear();
        assert!(r.decide(&e).run);
    }

    #[test]
    fn deleted_refs_never_run() {
        let r = rules("").unwrap();
        let mut e = push("refs/heads/main", "x", None);
        e.deleted = true;
        assert_eq!(r.decide(&e).reason, "skipped: refs/heads/main was deleted");
    }

    #[test]
    fn bad_globs_and_keys_are_errors_with_file_line_and_field() {
        let err = rules("on:\n  push:\n    branches: [main, \"release/[abc\"]\n")
            .err()
            .unwrap();
        assert!(
            err.contains(
                "pipeline.yaml:4:22: on.push.branches[1]: `release/[abc` is not a valid glob"
            ),
            "{err}"
        );
        let err = rules("on:\n  push:\n    branch: [main]\n").err().unwrap();
        assert!(
            err.contains("pipeline.yaml:4:5: unknown field `branch`"),
            "{err}"
        );
        assert!(err.contains("did you mean `branches`?"), "{err}");
        let err = rules("on:\n  pull_request: {}\n").err().unwrap();
        assert!(err.contains("unknown field `pull_request`"), "{err}");
        let err = rules("on:\n  push:\n    branches: [main]\n    branches-ignore: [dev]\n")
            .err()
            .unwrap();
        assert!(
            err.contains(
                "on.push.branches-ignore: `branches` and `branches-ignore` cannot both be given"
            ),
            "{err}"
        );
        let err = rules("on:\n  push:\n    paths: [\"!docs/**\", \"\"]\n")
            .err()
            .unwrap();
        assert!(
            err.contains("on.push.paths[1]: an empty pattern matches nothing"),
            "{err}"
        );
        assert!(err.contains("every pattern starts with `!`"), "{err}");
    }
}
