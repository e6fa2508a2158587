//! The pipeline manifest: YAML parsed with source spans, so that every error can
//! name the file, line, column and field and show the offending line.
//!
//! This module only knows the shape of the file. Turning it into something that
//! can run (resolving plugins, checking grants and limits) is [`crate::plan`].

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A manifest as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The pipeline's name, e.g. `hello`.
    #[schemars(with = "String")]
    pub pipeline: Spanned<String>,
    /// What the pipeline does, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// The workspace directory, relative to the manifest; the manifest's directory
    /// when absent.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub workspace: Option<Spanned<String>>,
    /// Aliases for plugins: `name: { path: ./my-stage.wasm }`, `name: { builtin: command }`
    /// or `name: { oci: registry/repo:tag, username-secret: u, password-secret: p,
    /// verify: { key: cosign.pub } }`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, PluginRef>")]
    pub plugins: BTreeMap<String, Spanned<PluginRef>>,
    /// Where secret values come from: `name: { env: VAR }` or `name: { file: path }`.
    /// Values are never written in the manifest.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, SecretSource>")]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,
    /// Variables for expressions (`${{ vars.NAME }}`); environments may override them.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Which pushes start a run under `gantry serve`: `push: { branches, tags,
    /// paths, ... }` with globs. Without `on:`, every push does.
    #[serde(default)]
    pub on: Option<crate::triggers::Triggers>,
    /// The stages. They run as soon as the stages they `need` have succeeded.
    pub stages: Vec<Stage>,
    /// Telemetry sinks that receive the run's events.
    #[serde(default)]
    pub telemetry: Vec<Sink>,
    /// The Kubernetes cluster that stages granted `permissions.cluster` talk to;
    /// environments may name another.
    #[serde(default)]
    pub cluster: Option<ClusterTarget>,
    /// Where stages run: `local` (this process, the default) or
    /// `{ kubernetes: {...} }` (each stage a Kubernetes Job); environments may
    /// choose another.
    #[serde(default)]
    #[schemars(with = "Option<crate::kubernetes::config::Executor>")]
    pub executor: Option<Spanned<crate::kubernetes::config::Executor>>,
    /// Named overlays: per environment, change stages' config or provider,
    /// variables, secret sources and telemetry sinks.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Environment>")]
    pub environments: BTreeMap<String, Spanned<Environment>>,
    /// Continuous deployment: the environments a run's artifacts go through, in
    /// order, and the stages whose results each promotion carries over instead
    /// of running them again (`gantry promote <run> <env>`).
    #[serde(default)]
    #[schemars(with = "Option<Promotion>")]
    pub promotion: Option<Spanned<Promotion>>,
}

/// The promotion chain: a commit's run happens in the first environment;
/// `gantry promote` takes a run that succeeded in one environment into the
/// next, reusing the `reuse` stages' outputs and artifacts (the same bytes are
/// deployed, nothing is rebuilt) and running the other stages with that
/// environment's parameters.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// The stages whose results a promotion carries over (not run again), e.g.
    /// `[test, image, publish]`. A reused stage may only need reused stages.
    #[schemars(with = "Vec<String>")]
    pub reuse: Vec<Spanned<String>>,
    /// The environments in order, at least two: a name, or
    /// `{ name, approval: required }` for one that needs an approval
    /// (`gantry promote` by hand counts as one; the service asks for it).
    #[schemars(with = "Vec<PromotionStepSchema>")]
    pub environments: Vec<Spanned<PromotionStep>>,
}

/// One environment of the promotion chain.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionStep {
    pub name: String,
    pub approval: Approval,
}

/// Whether promoting into an environment needs someone's approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// Promote as soon as the run before succeeded.
    #[default]
    None,
    /// Wait for `gantry approve` (the service), or a `gantry promote` by hand.
    Required,
}

/// `- production` or `- { name: production, approval: required }`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct PromotionStepFull {
    /// The environment's name (under `environments:`, or `default`).
    name: String,
    /// `required`: promoting into it needs an approval; default `none`.
    #[serde(default)]
    approval: Approval,
}

/// The schema of [`PromotionStep`]: a name or the long form.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum PromotionStepSchema {
    Name(String),
    Full(PromotionStepFull),
}

// A string or a map, by hand: an untagged enum would turn a typo inside the
// map into "did not match any variant" instead of naming the field.
impl<'de> Deserialize<'de> for PromotionStep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PromotionStep;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an environment name, or `{ name: NAME, approval: required }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PromotionStep {
                    name: v.to_string(),
                    approval: Approval::None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let full = PromotionStepFull::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(PromotionStep {
                    name: full.name,
                    approval: full.approval,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// An environment: an overlay on the pipeline.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Chosen when `--env` is not given. At most one environment may say so.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// Added to, or replacing, the top-level variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Added to, or replacing, the top-level secret sources.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, SecretSource>")]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,
    /// Per-stage overlays, by stage name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, StageOverlay>")]
    pub stages: BTreeMap<String, Spanned<StageOverlay>>,
    /// Replaces the top-level telemetry sinks.
    #[serde(default)]
    pub telemetry: Option<Vec<Sink>>,
    /// Replaces the top-level cluster.
    #[serde(default)]
    pub cluster: Option<ClusterTarget>,
    /// Replaces the top-level executor: `local`, or `{ kubernetes: {...} }`.
    #[serde(default)]
    #[schemars(with = "Option<crate::kubernetes::config::Executor>")]
    pub executor: Option<Spanned<crate::kubernetes::config::Executor>>,
}

/// A Kubernetes cluster: a kubeconfig and one of its contexts. Its credentials
/// (tokens, client certificates, exec plugins such as kubelogin for AKS) are used
/// by the host only; stages see the namespaces they are granted, nothing else.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTarget {
    /// Path of the kubeconfig file, relative to the manifest. `~/` is the home
    /// directory.
    pub kubeconfig: String,
    /// The context to use; the kubeconfig's `current-context` when absent.
    #[serde(default)]
    pub context: Option<String>,
}

/// What an environment changes in one stage. `with` is merged into the stage's
/// as a JSON merge patch (objects key by key, `null` removes a key, anything else
/// replaced), unless `uses` swaps the provider: then it replaces the stage's
/// `with`. The other fields replace.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageOverlay {
    /// Swap the provider: another plugin behind the same stage.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub uses: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub with: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    pub permissions: Option<Permissions>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub retries: Option<Spanned<u32>>,
    #[serde(default, rename = "if")]
    #[schemars(with = "Option<String>")]
    pub condition: Option<Spanned<String>>,
}

/// Where a plugin alias points: exactly one of `path`, `builtin` or `oci`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginRef {
    /// A local `.wasm` component, relative to the manifest.
    #[serde(default)]
    pub path: Option<String>,
    /// A plugin embedded in gantry.
    #[serde(default)]
    pub builtin: Option<String>,
    /// A component in an OCI registry, in the CNCF Wasm artifact layout (what
    /// `wkg oci push` and `gantry plugins push` write): `registry/repo:tag` or
    /// `registry/repo@sha256:...`, with or without `oci://`. Pinned by digest in
    /// `gantry.lock` next to the manifest.
    #[serde(default)]
    pub oci: Option<String>,
    /// With `oci`: the secret (under `secrets:`) holding the registry user name.
    /// Used for Basic auth, or at the registry's token service.
    #[serde(default)]
    pub username_secret: Option<String>,
    /// With `oci`: the secret holding the registry password or token.
    #[serde(default)]
    pub password_secret: Option<String>,
    /// With `oci`: plain HTTP instead of HTTPS. Only for a registry on this
    /// machine (`localhost`, `127.0.0.0/8`, `[::1]`).
    #[serde(default)]
    pub insecure: bool,
    /// With `oci`: refuse the plugin unless a cosign signature by this key over
    /// its manifest digest verifies (the tag `sha256-<hex>.sig` or an OCI 1.1
    /// referrer), checked before anything is pulled, compiled or run.
    #[serde(default)]
    #[schemars(with = "Option<Verify>")]
    pub verify: Option<Spanned<Verify>>,
}

/// How a plugin pulled by OCI reference must be signed.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// A cosign public key (PEM, ECDSA P-256, as `cosign generate-key-pair`
    /// writes `cosign.pub`), relative to the manifest.
    pub key: String,
}

/// Where a secret's value comes from.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum SecretSource {
    /// A host environment variable.
    Env(String),
    /// A file (relative to the manifest); one trailing newline is dropped.
    File(String),
}

impl SecretSource {
    /// The value, read now; a file path is relative to `base`.
    pub fn read(&self, base: &Path) -> Result<String, String> {
        match self {
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
            }
            SecretSource::File(path) => std::fs::read_to_string(base.join(path))
                .map(|v| v.strip_suffix('\n').unwrap_or(&v).to_string())
                .map_err(|e| format!("cannot read `{path}`: {e}")),
        }
    }
}

/// One stage as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Unique within the pipeline.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// A built-in plugin name, an alias from `plugins:`, a path to a `.wasm`
    /// file, or an OCI reference `oci://registry/repo:tag` (or `@sha256:...`;
    /// anonymous, over HTTPS; use an alias for credentials). May be left to the
    /// environments, each choosing its provider.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub uses: Option<Spanned<String>>,
    /// The plugin's configuration, handed to it as JSON. Strings may hold
    /// `${{ ... }}` expressions.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub with: Option<Spanned<serde_json::Value>>,
    /// Earlier stages that must succeed before this one runs; their outputs and
    /// artifacts are this stage's inputs.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub needs: Vec<Spanned<String>>,
    /// What the stage may do beyond computing.
    #[serde(default)]
    pub permissions: Permissions,
    /// Resource caps.
    #[serde(default)]
    pub limits: Limits,
    /// Wall-clock limit for the whole stage, e.g. `10m`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// How often to retry after a `transient` error, with exponential backoff.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub retries: Option<Spanned<u32>>,
    /// Run the stage only when this expression is true, e.g.
    /// `${{ run.environment == 'production' }}`; otherwise it is skipped.
    #[serde(default, rename = "if")]
    #[schemars(with = "Option<String>")]
    pub condition: Option<Spanned<String>>,
}

/// A telemetry sink as written: like a stage without a name or timeout.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    #[schemars(with = "String")]
    pub uses: Spanned<String>,
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub with: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub limits: Limits,
}

/// Capability grants. Everything absent is denied.
#[derive(Debug, Deserialize, Default, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// `read` (default) or `write`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub workspace: Option<Spanned<String>>,
    /// Host environment variables the stage may see, by name.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub env: Vec<Spanned<String>>,
    /// Programs the stage may run through `exec`, by name.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub exec: Vec<Spanned<String>>,
    /// Paths the programs started through `exec` may read and execute, beyond
    /// the workspace, the system and their own installation (e.g. a toolchain:
    /// `~/.rustup`). `~` and `$VAR` / `${VAR:-default}` are expanded.
    #[serde(default, rename = "exec-read")]
    #[schemars(with = "Vec<String>")]
    pub exec_read: Vec<Spanned<String>>,
    /// Paths the programs started through `exec` may write (e.g. a registry
    /// cache: `${CARGO_HOME:-~/.cargo}/registry`); made as directories when
    /// missing. Expanded like `exec-read`.
    #[serde(default, rename = "exec-write")]
    #[schemars(with = "Vec<String>")]
    pub exec_write: Vec<Spanned<String>>,
    /// Whether the programs started through `exec` may open TCP connections
    /// and listen (e.g. to fetch crates). Without it they have no TCP.
    #[serde(default, rename = "exec-network")]
    #[schemars(with = "Option<bool>")]
    pub exec_network: Option<Spanned<bool>>,
    /// Secrets the stage may read, by name (defined under top-level `secrets:`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub secrets: Vec<Spanned<String>>,
    /// Origins the stage may send HTTP requests to: `scheme://host[:port]`, where
    /// host may start with `*.`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub http: Vec<Spanned<String>>,
    /// The container engine.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub engine: Option<Spanned<bool>>,
    /// Registries the container engine may fetch images from for this stage
    /// (`pull`, and a build's `FROM` / `COPY --from` images): `host[:port]` as in
    /// an image reference (`docker.io` for Docker Hub), or `*.domain`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub registries: Vec<Spanned<String>>,
    /// A Kubernetes cluster, limited to these namespaces.
    #[serde(default)]
    pub cluster: Option<ClusterPermission>,
    /// Host-kept state the stage may read and write through the `state`
    /// interface, by key prefix: `docker-deploy/` grants every key under it.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub state: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterPermission {
    #[schemars(with = "Vec<String>")]
    pub namespaces: Vec<Spanned<String>>,
}

/// Resource caps as written.
#[derive(Debug, Deserialize, Default, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory, e.g. `256MiB`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub memory: Option<Spanned<String>>,
    /// CPU time spent in WebAssembly, e.g. `30s`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub cpu: Option<Spanned<String>>,
    /// Log output (log lines, stdout, stderr, exec output), e.g. `8MiB`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub log: Option<Spanned<String>>,
    /// Telemetry the stage sends (metric and event names and properties), e.g. `4MiB`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub telemetry: Option<Spanned<String>>,
    /// How many metrics and events the stage may send, e.g. `10000`.
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub events: Option<Spanned<u64>>,
    /// The outputs the stage returns (keys and values together), e.g. `1MiB`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub outputs: Option<Spanned<String>>,
    /// The summary the stage returns, e.g. `64KiB`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub summary: Option<Spanned<String>>,
    /// The artifacts the stage returns (every field together), e.g. `1MiB`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub artifacts: Option<Spanned<String>>,
    /// Processes and threads the stage's exec'd programs may have at once,
    /// e.g. `256` (default 1024).
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub processes: Option<Spanned<u64>>,
}

/// A manifest with its source text, for diagnostics.
pub struct ManifestFile {
    pub path: PathBuf,
    pub source: Arc<String>,
    pub manifest: Manifest,
}

impl ManifestFile {
    /// Read and parse a manifest. Syntax and shape errors carry spans.
    pub fn load(path: &Path) -> Result<Self, ManifestErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ManifestErrors(vec![ManifestError::plain(format!(
                "cannot read manifest {}: {e}",
                path.display()
            ))])
        })?;
        Self::parse(path, source)
    }

    /// Parse manifest text that was read from `path`.
    pub fn parse(path: &Path, source: String) -> Result<Self, ManifestErrors> {
        let source = Arc::new(source);
        let manifest = parse_yaml::<Manifest>(path, &source)?;
        Ok(Self {
            path: path.to_path_buf(),
            source,
            manifest,
        })
    }

    /// The directory relative paths in the manifest are resolved against.
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            // Empty, so that joined paths read `x.wasm`, not `./x.wasm`.
            _ => PathBuf::new(),
        }
    }

    /// An error pointing at `at`, with the field path (e.g. `stages[1].uses`).
    pub fn error(
        &self,
        at: &Location,
        field: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) -> ManifestError {
        spanned_error(&self.path, &self.source, at, field, message.into(), help)
    }

    /// An error about the value at JSON pointer `pointer` inside the free-form
    /// value (e.g. a stage's `with:`) that starts at `at`: it points at that
    /// key where the source holds it, else at `at`.
    pub fn error_inside(
        &self,
        at: &Location,
        pointer: &str,
        field: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) -> ManifestError {
        let path = crate::yaml_path::segments(pointer);
        let Some(span) = (!path.is_empty())
            .then(|| crate::yaml_path::locate(&self.source, at.line(), at.column(), &path))
            .flatten()
        else {
            return self.error(at, field, message, help);
        };
        let offset = |m: &granit_parser::Marker| {
            line_column_offset(&self.source, m.line() as u64, m.col() as u64 + 1)
        };
        let (start, end) = (offset(&span.start), offset(&span.end));
        spanned_error_at(
            &self.path,
            &self.source,
            (span.start.line() as u64, span.start.col() as u64 + 1),
            (start, end.saturating_sub(start)),
            field,
            message.into(),
            help,
        )
    }
}

/// Parse YAML read from `path` into `T`; a syntax or shape error names the
/// file, line and column and shows the line (manifests, plugin case files).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    source: &Arc<String>,
) -> Result<T, ManifestErrors> {
    serde_saphyr::from_str::<T>(source).map_err(|err| {
        let mut message = err.without_snippet().to_string();
        // The location leads our message already.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        let help = unknown_field_help(&message);
        let error = match err.location() {
            Some(at) => spanned_error(path, source, &at, "", message, help),
            None => ManifestError::plain(format!("{}: {message}", path.display())),
        };
        ManifestErrors(vec![error])
    })
}

/// An error at `at` in `source` (read from `path`), under manifest field `field`.
fn spanned_error(
    path: &Path,
    source: &Arc<String>,
    at: &Location,
    field: &str,
    message: String,
    help: Option<String>,
) -> ManifestError {
    let offset = location_offset(source, at);
    let len = at.span().byte_len().unwrap_or(0) as usize;
    spanned_error_at(
        path,
        source,
        (at.line(), at.column()),
        (offset, len),
        field,
        message,
        help,
    )
}

/// An error at 1-based (line, column), covering `len` bytes from byte `offset`.
fn spanned_error_at(
    path: &Path,
    source: &Arc<String>,
    (line, column): (u64, u64),
    (offset, len): (usize, usize),
    field: &str,
    message: String,
    help: Option<String>,
) -> ManifestError {
    let len = len.max(1);
    let field = if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    };
    ManifestError::Spanned(Box::new(SpannedError {
        message: format!("{}:{}:{}: {field}{message}", path.display(), line, column),
        src: NamedSource::new(path.display().to_string(), source.clone()),
        span: SourceSpan::new(offset.into(), len.min(source.len().saturating_sub(offset))),
        help,
    }))
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the closest name.
fn unknown_field_help(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let expected = expected.split_once("expected")?.1;
    let names = expected
        .split([',', ' '])
        .map(|n| n.trim_matches(['`', ' ']))
        .filter(|n| !n.is_empty() && *n != "one" && *n != "of" && *n != "or");
    closest(field, names).map(|near| format!("did you mean `{near}`?"))
}

/// Byte offset of a location, from its span when known, else from line and column.
fn location_offset(source: &str, at: &Location) -> usize {
    if let Some(off) = at.span().byte_offset() {
        return (off as usize).min(source.len());
    }
    line_column_offset(source, at.line(), at.column())
}

/// Byte offset of 1-based `line` and `column` (in characters).
fn line_column_offset(source: &str, line: u64, column: u64) -> usize {
    let line_start: usize = source
        .split_inclusive('\n')
        .take(line.saturating_sub(1) as usize)
        .map(str::len)
        .sum();
    let line_start = line_start.min(source.len());
    let col = source[line_start..]
        .char_indices()
        .nth(column.saturating_sub(1) as usize)
        .map_or(source.len() - line_start, |(i, _)| i);
    (line_start + col).min(source.len())
}

/// One problem in a manifest.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ManifestError {
    /// Points into the source.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spanned(Box<SpannedError>),
    /// Has no place in the source (e.g. the file is missing).
    #[error("{0}")]
    Plain(String),
}

impl ManifestError {
    pub fn plain(message: impl Into<String>) -> Self {
        Self::Plain(message.into())
    }

    /// Where in the source the error points, for sorting; 0 when nowhere.
    pub fn offset(&self) -> usize {
        match self {
            ManifestError::Spanned(e) => e.span.offset(),
            _ => 0,
        }
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct SpannedError {
    message: String,
    #[source_code]
    src: NamedSource<Arc<String>>,
    #[label("here")]
    span: SourceSpan,
    #[help]
    help: Option<String>,
}

/// All the problems found in a manifest; checks report every one they find.
#[derive(Debug)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl std::fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", crate::report::render_diagnostic(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// Suggest the closest of `candidates` to `word`, for "did you mean" help.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ManifestFile, ManifestErrors> {
        ManifestFile::parse(Path::new("pipeline.yaml"), text.to_string())
    }

    #[test]
    fn parses_a_full_stage() {
        let m = parse(
            "pipeline: demo\nstages:\n  - name: a\n    uses: command\n    with: {steps: [{run: [cargo, test]}]}\n    permissions:\n      workspace: write\n      exec: [cargo]\n      http: [\"http://127.0.0.1:8080\"]\n    limits: {memory: 64MiB}\n    timeout: 30s\n",
        )
        .unwrap();
        let s = &m.manifest.stages[0];
        assert_eq!(s.name.value, "a");
        assert_eq!(s.uses.as_ref().unwrap().referenced.line(), 4);
        assert_eq!(s.permissions.exec[0].value, "cargo");
        assert_eq!(s.with.as_ref().unwrap().value["steps"][0]["run"][1], "test");
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let err =
            parse("pipeline: demo\nstages:\n  - name: a\n    uses: noop\n    permisions: {}\n")
                .err()
                .unwrap()
                .to_string();
        assert!(
            err.contains("pipeline.yaml:5:5: unknown field `permisions`"),
            "{err}"
        );
        assert!(err.contains("did you mean `permissions`?"), "{err}");
    }

    #[test]
    fn spanned_error_shows_line_and_field() {
        let m = parse("pipeline: demo\nstages:\n  - name: a\n    uses: nope\n").unwrap();
        let at = &m.manifest.stages[0].uses.as_ref().unwrap().referenced;
        let err = ManifestErrors(vec![m.error(
            at,
            "stages[0].uses",
            "unknown plugin `nope`",
            Some("try `noop`".into()),
        )]);
        let text = err.to_string();
        assert!(
            text.contains("pipeline.yaml:4:11: stages[0].uses: unknown plugin `nope`"),
            "{text}"
        );
        assert!(text.contains("uses: nope"), "{text}");
        assert!(text.contains("try `noop`"), "{text}");
    }

    #[test]
    fn closest_suggests_near_names_only() {
        assert_eq!(closest("comand", ["command", "noop"]), Some("command"));
        assert_eq!(closest("zzz", ["command", "noop"]), None);
    }
}

/// The JSON Schema of the manifest format, generated from the types above.
/// Shipped as `schema/gantry-manifest.schema.json` for editors.
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Manifest)).expect("schema is JSON");
    schema["title"] = "gantry pipeline manifest".into();
    schema
}

#[cfg(test)]
mod schema_tests {
    #[test]
    fn the_shipped_schema_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schema/gantry-manifest.schema.json");
        let shipped: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            shipped == super::json_schema(),
            "{} is stale: regenerate it with `cargo run -- schema > schema/gantry-manifest.schema.json`",
            path.display()
        );
    }

    #[test]
    fn the_schema_accepts_the_example_and_rejects_typos() {
        let schema = super::json_schema();
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/hello/pipeline.yaml");
        let file = super::ManifestFile::load(&example).unwrap();
        let as_json: serde_json::Value = serde_saphyr::from_str(&file.source).unwrap();
        assert!(crate::schema::check_config(&schema, &as_json).is_empty());
        let mut typo = as_json.clone();
        typo["stages"][0]["permisions"] = serde_json::json!({});
        let errors = crate::schema::check_config(&schema, &typo);
        assert!(
            errors.iter().any(|e| e.message.contains("permisions")),
            "{errors:?}"
        );
    }
}
