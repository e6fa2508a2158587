//! OCI references as gantry accepts them: `[oci://]registry/repo[:tag][@sha256:hex]`.
//! The registry is always explicit (a host with a `.` or a port, or
//! `localhost`): a plugin reference that silently meant Docker Hub would be a
//! supply-chain surprise.

use std::fmt;

/// The scheme that marks an OCI reference in `uses:`.
pub const SCHEME: &str = "oci://";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// The repository, e.g. `plugins/echo`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse a reference, with or without the `oci://` prefix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix(SCHEME).unwrap_or(text);
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => {
                check_digest(d)?;
                (r, Some(d.to_string()))
            }
            None => (rest, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            format!("`{text}` names no repository: write `oci://registry/repository:tag`")
        })?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(format!(
                "`{text}` does not start with a registry host: write it in full, e.g. `oci://ghcr.io/{rest}`"
            ));
        }
        // A `:` after the last `/` starts the tag.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(format!(
                "`{repository}` in `{text}` is not a repository name (lowercase letters, digits, `.`, `_`, `-`, separated by `/`)"
            ));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(format!("`{t}` in `{text}` is not a tag"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// What to ask the registry's manifest endpoint for: the digest when
    /// known (content-addressed), else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository at `digest`.
    pub fn at_digest(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// `oci://registry/repo[:tag]`, without the digest: what to print before
    /// `@digest`.
    pub fn named(&self) -> String {
        let tag = self.tag.as_ref().map_or(String::new(), |t| format!(":{t}"));
        format!("{SCHEME}{}/{}{tag}", self.registry, self.repository)
    }

    /// Whether the registry host is this machine: the only place gantry
    /// speaks plain HTTP to (`insecure`).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn check_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "`{d}` is not a sha256 digest (`sha256:` and 64 lowercase hex digits)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_digests_and_ports() {
        let r = Reference::parse("oci://127.0.0.1:5000/plugins/echo:1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "plugins/echo");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert!(r.is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/o/p@{d}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        assert!(!r.is_loopback());
        assert_eq!(
            Reference::parse("localhost/x").unwrap().tag.as_deref(),
            Some("latest")
        );
        assert_eq!(r.to_string(), format!("ghcr.io/o/p@{d}"));
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        assert!(
            Reference::parse("oci://plugins/echo:1")
                .unwrap_err()
                .contains("registry host")
        );
        assert!(
            Reference::parse("oci://ghcr.io")
                .unwrap_err()
                .contains("no repository")
        );
        assert!(
            Reference::parse("oci://ghcr.io/Echo")
                .unwrap_err()
                .contains("repository name")
        );
        assert!(
            Reference::parse("oci://ghcr.io/e@sha256:12")
                .unwrap_err()
                .contains("sha256 digest")
        );
        assert!(is_loopback_host("[::1]:5000") && is_loopback_host("localhost:1"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
    }
}
