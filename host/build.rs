//! Builds the built-in plugins (the `plugins/` workspace) for wasm32-wasip2 and
//! generates the table that embeds them in the gantry binary.

use std::path::PathBuf;

#[path = "build_guests.rs"]
mod guests;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let plugins = root.join("plugins");
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // include_dir! tracks the template files it embeds, but not a file added
    // to a template: a change anywhere below rebuilds the crate.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("templates").display()
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm");
    guests::build(&plugins.join("Cargo.toml"), &target_dir);

    let release = target_dir.join("wasm32-wasip2/release");
    let mut names: Vec<String> = std::fs::read_dir(&plugins)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut table =
        String::from("/// Built-in plugins, by name.\npub static BUILTINS: &[Builtin] = &[\n");
    for name in &names {
        let wasm = release.join(format!("{}.wasm", name.replace('-', "_")));
        let copy = out.join(format!("{name}.wasm"));
        std::fs::copy(&wasm, &copy).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
        table.push_str(&format!(
            "    Builtin {{ name: {name:?}, wasm: include_bytes!({:?}) }},\n",
            copy.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("builtins.rs"), table).unwrap();
}
