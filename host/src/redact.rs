//! Masks secret values in every text gantry prints or writes.

use std::sync::Arc;

/// What a secret value is replaced with.
pub const MASK: &str = "***";

/// Replaces known secret values with [`MASK`]. Cheap to clone and share.
#[derive(Clone, Default)]
pub struct Redactor {
    // Longest first, so that a secret containing another is masked whole.
    secrets: Arc<Vec<String>>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self {
            secrets: Arc::new(secrets),
        }
    }

    /// `text` with every secret value masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let r = Redactor::new(["abc".to_string(), "abcdef".to_string(), String::new()]);
        assert_eq!(r.redact("x abcdef y abc z"), "x *** y *** z");
        assert_eq!(r.redact("nothing here"), "nothing here");
    }
}
