//! Builds the test plugins (tests/plugins, a wasm32-wasip2 workspace) and tells
//! the tests where they are through `GANTRY_TEST_PLUGINS`.

use std::path::PathBuf;

#[path = "../host/build_guests.rs"]
mod guests;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = dir.parent().unwrap();
    for watched in ["tests/plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm");
    guests::build(&dir.join("plugins/Cargo.toml"), &target_dir);
    println!(
        "cargo:rustc-env=GANTRY_TEST_PLUGINS={}",
        target_dir.join("wasm32-wasip2/release").display()
    );
}
