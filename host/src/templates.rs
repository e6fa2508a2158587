//! `gantry plugins new`: a small working plugin project per language, from
//! templates embedded in the binary (host/templates/), with the WIT this
//! binary speaks written beside them by the same code as `gantry wit`.

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

static RUST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates/rust");
static PYTHON: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates/python");
static JS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates/js");

/// The toolchain versions the templates pin: the newest that build against
/// WASI 0.2.12 here. jco above 1.25 fails to read WIT from disk under Node 20;
/// componentize-js 0.19 cannot parse the feature-gated `wasi:clocks/timezone`.
pub const COMPONENTIZE_PY: &str = "0.25.1";
pub const COMPONENTIZE_JS: &str = "0.23.0";
pub const JCO: &str = "1.25.2";
pub const TYPESCRIPT: &str = "5.9.3";
/// The gantry-sdk a Rust project asks for (sdk/Cargo.toml; a test compares).
const SDK_VERSION: &str = "0.1";

/// A template's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    fn dir(self) -> &'static Dir<'static> {
        match self {
            Lang::Rust => &RUST,
            Lang::Python => &PYTHON,
            Lang::Js => &JS,
        }
    }

    /// The name `--lang` takes.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// The one command that builds the project, for the closing hint.
    pub fn build_command(self) -> &'static str {
        match self {
            Lang::Rust => "cargo build --target wasm32-wasip2 --release",
            Lang::Python => "./build.sh",
            Lang::Js => "npm install && npm run build",
        }
    }
}

/// Why a project was not written; nothing was written then.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error(
        "plugin name `{0}` must be lower-case letters, digits and `-`, starting with a letter \
         (it becomes the package and plugin name)"
    )]
    BadName(String),
    #[error("{0} already exists and is not empty; choose another --dir or remove it")]
    NotEmpty(PathBuf),
    #[error("--sdk-path {0}: no Cargo.toml of gantry-sdk there")]
    NotSdk(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `new` takes.
pub struct NewOptions<'a> {
    pub name: &'a str,
    pub lang: Lang,
    pub dir: &'a Path,
    /// A gantry-sdk checkout to depend on by path (Rust only); without it the
    /// project asks for the crates.io version, with a `[patch]` to fill in.
    pub sdk_path: Option<&'a Path>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// Write the project for `opts` into `opts.dir` (made if missing, refused if
/// not empty); returns the files written, relative to it.
pub fn new_project(opts: &NewOptions) -> Result<Vec<PathBuf>, NewError> {
    if !valid_name(opts.name) {
        return Err(NewError::BadName(opts.name.to_string()));
    }
    if std::fs::read_dir(opts.dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(NewError::NotEmpty(opts.dir.to_path_buf()));
    }
    let (sdk_dependency, sdk_note) = match opts.sdk_path {
        Some(path) => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            let is_sdk = std::fs::read_to_string(path.join("Cargo.toml"))
                .is_ok_and(|t| t.contains("name = \"gantry-sdk\""));
            if !is_sdk {
                return Err(NewError::NotSdk(path));
            }
            let path = path.display().to_string().replace('\\', "/");
            (
                format!("gantry-sdk = {{ path = \"{path}\" }}"),
                format!("this project uses the checkout at `{path}`."),
            )
        }
        None => (
            format!(
                "gantry-sdk = \"{SDK_VERSION}\"\n\n\
                 # gantry-sdk is not on crates.io yet: point this at a checkout of the gantry\n\
                 # repository (its `sdk/` directory), or run `gantry plugins new --sdk-path`.\n\
                 # [patch.crates-io]\n\
                 # gantry-sdk = {{ path = \"../gantry/sdk\" }}"
            ),
            "uncomment the `[patch.crates-io]` in Cargo.toml and point it at a checkout's `sdk/` \
             (or create the project with `gantry plugins new --sdk-path DIR`)."
                .to_string(),
        ),
    };
    let vars: [(&str, &str); 8] = [
        ("{{name}}", opts.name),
        ("{{crate}}", &opts.name.replace('-', "_")),
        ("{{sdk_dependency}}", &sdk_dependency),
        ("{{sdk_note}}", &sdk_note),
        ("{{componentize_py}}", COMPONENTIZE_PY),
        ("{{componentize_js}}", COMPONENTIZE_JS),
        ("{{jco}}", JCO),
        ("{{typescript}}", TYPESCRIPT),
    ];
    let write = |rel: &Path, bytes: &[u8]| -> Result<(), NewError> {
        let path = opts.dir.join(rel);
        let err = |source| NewError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        std::fs::write(&path, bytes).map_err(err)?;
        #[cfg(unix)]
        if rel.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
        Ok(())
    };
    let mut written = vec![];
    let mut files = vec![];
    collect(opts.lang.dir(), &mut files);
    for file in files {
        let rel = output_path(file.path());
        let mut text = String::from_utf8_lossy(file.contents()).into_owned();
        for (key, value) in &vars {
            text = text.replace(key, value);
        }
        write(&rel, text.as_bytes())?;
        written.push(rel);
    }
    for (name, text) in crate::wit_files(crate::WIT_VERSION) {
        let rel = Path::new("wit").join(name);
        write(&rel, text.as_bytes())?;
        written.push(rel);
    }
    Ok(written)
}

fn collect<'a>(dir: &'a Dir<'a>, out: &mut Vec<&'a include_dir::File<'a>>) {
    out.extend(dir.files());
    for sub in dir.dirs() {
        collect(sub, out);
    }
}

/// A template file's name in the project: `.tmpl` keeps manifests such as
/// Cargo.toml from being taken for real ones inside this repository, and
/// dot files are stored without their dot.
fn output_path(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    let text = text.strip_suffix(".tmpl").unwrap_or(&text);
    match text {
        "gitignore" => PathBuf::from(".gitignore"),
        other => PathBuf::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["wc", "my-stage", "s3-upload"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "My", "1x", "a_b", "a-", "a b", "../x"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_template_has_a_readme_and_no_placeholder_left() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = tempfile::tempdir().unwrap();
            let files = new_project(&NewOptions {
                name: "my-stage",
                lang,
                dir: dir.path(),
                sdk_path: None,
            })
            .unwrap();
            assert!(files.contains(&PathBuf::from("README.md")), "{lang:?}");
            assert!(
                files.contains(&PathBuf::from("wit/deps/cli.wit")),
                "{lang:?}"
            );
            for rel in files {
                let text = std::fs::read_to_string(dir.path().join(&rel)).unwrap();
                assert!(!text.contains("{{"), "{lang:?} {}", rel.display());
            }
        }
    }

    #[test]
    fn the_sdk_version_asked_for_is_the_sdks() {
        let manifest = include_str!("../../sdk/Cargo.toml");
        assert!(
            manifest.contains(&format!("\nversion = \"{SDK_VERSION}.")),
            "sdk/Cargo.toml's version is not {SDK_VERSION}.x"
        );
    }

    #[test]
    fn a_non_empty_directory_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = new_project(&NewOptions {
            name: "x",
            lang: Lang::Js,
            dir: dir.path(),
            sdk_path: None,
        })
        .unwrap_err();
        assert!(matches!(err, NewError::NotEmpty(_)), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
