//! The commits a deployment delivers: `git log previous..commit` in the
//! workspace (through the granted `git`), or messages the manifest passes in.

use gantry_sdk::StageError;
use gantry_sdk::exec::{Command, run};

/// A cap on the range, so that a first deployment of a long history (or a
/// `previous-commit` from another line of history) stays bounded.
pub const MAX_COMMITS: u32 = 1000;

/// The commits deployed: (full sha, message), newest first.
pub fn delivered(commit: &str, previous: &str) -> Result<Vec<(String, String)>, StageError> {
    let sha = |s: &str| s.len() >= 7 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !sha(commit) {
        return Err(StageError::InvalidConfig(format!(
            "commit: `{commit}` is not a commit sha (set it to ${{{{ run.commit }}}})"
        )));
    }
    if !previous.is_empty() && !sha(previous) {
        return Err(StageError::InvalidConfig(format!(
            "previous-commit: `{previous}` is not a commit sha (set it to ${{{{ run.previous-commit }}}})"
        )));
    }
    // A first deployment delivers the commit itself, not all of history.
    let range = if previous.is_empty() || previous == commit {
        vec![commit.to_string(), "-1".into()]
    } else {
        vec![format!("{previous}..{commit}")]
    };
    let mut args = vec![
        "-c".to_string(),
        "core.quotePath=false".into(),
        "log".into(),
        "--no-color".into(),
        format!("--max-count={MAX_COMMITS}"),
        // Records end with a record separator (a message can hold anything
        // else); each starts `commit <sha>` (the stage log shows the lines).
        "--format=commit %H%n%B%x1e".into(),
    ];
    args.extend(range);
    args.push("--".into());
    let status = run(&Command {
        program: "git".into(),
        args,
        cwd: None,
        env: vec![
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_OPTIONAL_LOCKS".into(), "0".into()),
        ],
        timeout_ms: Some(60_000),
    })
    .map_err(|e| match StageError::from(e) {
        StageError::Denied(m) => StageError::Denied(format!(
            "{m} (the stage reads the deployed commits with git: grant `exec: [git]`, or pass \
             them in with `messages: ${{{{ run.commit-messages }}}}`)"
        )),
        other => other,
    })?;
    if status.code != Some(0) {
        let range = if previous.is_empty() {
            commit.to_string()
        } else {
            format!("{previous}..{commit}")
        };
        return Err(StageError::Failed(format!(
            "git log {range} failed ({}): {}",
            status
                .code
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
            status.stderr.trim()
        )));
    }
    Ok(parse(&status.stdout))
}

/// `commit %H%n%B%x1e` records. A record cut short (the host keeps the
/// last 64 KiB of output) has no full sha and is left out.
pub fn parse(out: &str) -> Vec<(String, String)> {
    out.split('\u{1e}')
        .filter_map(|rec| {
            let rec = rec.trim_start_matches('\n').strip_prefix("commit ")?;
            let (sha, body) = rec.split_once('\n').unwrap_or((rec, ""));
            let full = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
            full.then(|| (sha.to_string(), body.trim_end().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_records_with_any_message() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let out = format!(
            "of a message cut short\n\u{1e}\ncommit {a}\nFix AB#1\n\nbody: commit {b}\n\u{1e}\ncommit {b}\nsecond\u{1e}\n"
        );
        assert_eq!(
            super::parse(&out),
            vec![
                (a.clone(), format!("Fix AB#1\n\nbody: commit {b}")),
                (b.clone(), "second".to_string())
            ]
        );
    }
}
