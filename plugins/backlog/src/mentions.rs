//! Work-item mentions in commit messages, by the rules Azure Boards and GitHub
//! apply to them:
//! - Azure Boards: `AB#123` links item 123; `fix`, `fixes` or `fixed` right
//!   before a mention also resolves that item, and only that one: `Fixes AB#1,
//!   AB#2` resolves 1 and links 2, `Fixes AB#1, Fixes AB#2` resolves both. Azure
//!   Repos also takes a plain `#123` (and `Fixes #123`).
//! - GitHub: `#123` (or `owner/repo#123` naming the configured repository);
//!   `close(s|d)`, `fix(es|ed)`, `resolve(s|d)` right before a mention close it.
//!
//! "Right before" allows whitespace and one optional colon between the keyword
//! and the mention (`Fixes: AB#1`), and is case-insensitive.

use std::collections::BTreeMap;

/// What kind of mention a provider reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Style {
    /// `AB#N`, and plain `#N` when `plain_hash` (Azure Repos).
    AzureBoards { plain_hash: bool },
    /// `#N` and `<repository>#N` (the repository `owner/name`, lower case).
    GitHub,
}

/// One item mentioned somewhere in the range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Item {
    /// A closing keyword stood right before at least one of its mentions.
    pub fixes: bool,
    /// The commits that mention it (full shas, in the order seen; deduplicated).
    pub commits: Vec<String>,
}

const AZURE_KEYWORDS: &[&str] = &["fix", "fixes", "fixed"];
const GITHUB_KEYWORDS: &[&str] = &[
    "close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves", "resolved",
];

/// Every item mentioned in `messages` (commit sha, message), by number.
pub fn scan(
    messages: &[(String, String)],
    style: Style,
    repository: Option<&str>,
) -> BTreeMap<u64, Item> {
    let mut items: BTreeMap<u64, Item> = BTreeMap::new();
    for (sha, text) in messages {
        for (id, fixes) in mentions(text, style, repository) {
            let item = items.entry(id).or_default();
            item.fixes |= fixes;
            if !sha.is_empty() && !item.commits.contains(sha) {
                item.commits.push(sha.clone());
            }
        }
    }
    items
}

/// The mentions in one text, in order: (number, preceded by a closing keyword).
pub fn mentions(text: &str, style: Style, repository: Option<&str>) -> Vec<(u64, bool)> {
    let bytes = text.as_bytes();
    let mut found = vec![];
    let mut i = 0;
    while let Some(off) = text[i..].find('#') {
        let hash = i + off;
        i = hash + 1;
        let digits = bytes[hash + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 18 {
            continue;
        }
        let end = hash + 1 + digits;
        // `#12abc` is not a mention; `#12.` and `#12,` are.
        if bytes
            .get(end)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            continue;
        }
        let Some(start) = prefix_start(text, hash, style, repository) else {
            continue;
        };
        let Ok(id) = text[hash + 1..end].parse::<u64>() else {
            continue;
        };
        let keywords = match style {
            Style::AzureBoards { .. } => AZURE_KEYWORDS,
            Style::GitHub => GITHUB_KEYWORDS,
        };
        found.push((id, keyword_before(text, start, keywords)));
    }
    found
}

/// Where the mention whose `#` is at `hash` starts, if what precedes the `#`
/// makes it one for `style`.
fn prefix_start(text: &str, hash: usize, style: Style, repository: Option<&str>) -> Option<usize> {
    let before = &text[..hash];
    let boundary = |at: usize| {
        text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '/' || c == '#'))
    };
    match style {
        Style::AzureBoards { plain_hash } => {
            let n = before.len();
            if n >= 2 && before[n - 2..].eq_ignore_ascii_case("ab") && boundary(n - 2) {
                return Some(n - 2);
            }
            (plain_hash && boundary(hash)).then_some(hash)
        }
        Style::GitHub => {
            if boundary(hash) {
                return Some(hash);
            }
            // `owner/repo#12`, for the configured repository only.
            let repo = repository?;
            let n = before.len();
            let start = n.checked_sub(repo.len())?;
            (before.is_char_boundary(start)
                && before[start..].eq_ignore_ascii_case(repo)
                && boundary(start))
            .then_some(start)
        }
    }
}

/// Whether one of `keywords` (a whole word) ends right before `start`, with
/// only whitespace and at most one colon in between.
fn keyword_before(text: &str, start: usize, keywords: &[&str]) -> bool {
    let head = text[..start].trim_end();
    if head.len() == start {
        // No whitespace: `fixesAB#1` is not a keyword use.
        return false;
    }
    let head = head.strip_suffix(':').unwrap_or(head);
    let word_start = head
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphabetic())
        .last()
        .map(|(i, _)| i);
    let Some(word_start) = word_start else {
        return false;
    };
    let word = &head[word_start..];
    keywords.iter().any(|k| word.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AB: Style = Style::AzureBoards { plain_hash: false };

    fn m(text: &str, style: Style) -> Vec<(u64, bool)> {
        mentions(text, style, Some("octo/app"))
    }

    #[test]
    fn documented_azure_rules() {
        assert_eq!(m("Add search AB#1", AB), vec![(1, false)]);
        assert_eq!(m("Fixes AB#2, AB#3", AB), vec![(2, true), (3, false)]);
        assert_eq!(m("Fixes AB#4, Fixes AB#5", AB), vec![(4, true), (5, true)]);
        assert_eq!(
            m("fixed ab#6 and FIX: AB#7", AB),
            vec![(6, true), (7, true)]
        );
        assert_eq!(
            m("prefix AB#8", AB),
            vec![(8, false)],
            "`prefix` is not `fix`"
        );
        assert_eq!(m("Fixes the bug in AB#9", AB), vec![(9, false)]);
    }

    #[test]
    fn what_is_not_an_azure_mention() {
        assert!(m("TAB#1 XAB#2 AB#x AB# #3 AB#4a", AB).is_empty());
        assert_eq!(
            m("see #3 and AB#4", Style::AzureBoards { plain_hash: true }),
            vec![(3, false), (4, false)]
        );
        assert_eq!(
            m("Fixes #3", Style::AzureBoards { plain_hash: true }),
            vec![(3, true)]
        );
        assert_eq!(m("Fixes #3", AB), vec![]);
    }

    #[test]
    fn github_rules() {
        let gh = Style::GitHub;
        assert_eq!(
            m("Closes #10, resolves #11", gh),
            vec![(10, true), (11, true)]
        );
        assert_eq!(
            m("Refs #12; fixes octo/app#13", gh),
            vec![(12, false), (13, true)]
        );
        assert_eq!(m("other/repo#14 a#15 #16", gh), vec![(16, false)]);
        assert_eq!(m("Closes #17, #18", gh), vec![(17, true), (18, false)]);
    }

    #[test]
    fn items_across_commits_merge() {
        let msgs = vec![
            ("c1".to_string(), "Start AB#1".to_string()),
            ("c2".to_string(), "Fixes AB#1".to_string()),
            ("c3".to_string(), "no mention".to_string()),
        ];
        let items = scan(&msgs, AB, None);
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[&1],
            Item {
                fixes: true,
                commits: vec!["c1".into(), "c2".into()]
            }
        );
    }
}
