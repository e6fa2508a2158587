//! Property tests (bounded fuzzing) of everything that reads user input before
//! a run: the manifest loader, the planner and the expression parser must
//! return errors, never panic, whatever the input.

use crate::manifest::ManifestFile;
use crate::plan::Plan;
use proptest::prelude::*;
use std::path::Path;

const VALID: &str = r#"pipeline: fuzz
variables: { v: x }
secrets:
  s: { env: FUZZ_SECRET }
stages:
  - name: a
    uses: command
    with: { steps: [{ run: [echo, "${{ vars.v }}"] }] }
    permissions: { exec: [echo], secrets: [s], http: ["https://*.example.com"] }
    limits: { memory: 64MiB, cpu: 1s, log: 1MiB }
    timeout: 30s
    retries: 1
  - name: b
    uses: command
    needs: [a]
    if: ${{ run.environment == 'prod' && !(vars.v != 'x') }}
    with: { steps: [{ run: [echo, "${{ stages.a.outputs.k }}"] }] }
environments:
  prod:
    default: true
    variables: { v: y }
    stages:
      b: { retries: 2, with: { steps: null } }
"#;

fn load(text: &str) {
    // The manifest's directory does not exist: workspace errors are fine too.
    if let Ok(file) = ManifestFile::parse(
        Path::new("fuzz-nonexistent/pipeline.yaml"),
        text.to_string(),
    ) {
        for env in [None, Some("prod"), Some("nope")] {
            let _ = Plan::new(&file, env).map_err(|e| e.to_string());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(edits in prop::collection::vec((0usize..2000, any::<char>(), 0u8..3), 1..8)) {
        let mut text: Vec<char> = VALID.chars().collect();
        for (pos, c, op) in edits {
            let i = pos % (text.len() + 1);
            match op {
                0 => text.insert(i, c),
                1 if i < text.len() => { text.remove(i); }
                _ if i < text.len() => text[i] = c,
                _ => {}
            }
        }
        load(&text.into_iter().collect::<String>());
    }

    #[test]
    fn yaml_like_noise_never_panics(text in "[a-z:{}\\[\\]\\-\"' \n$.|&!=()]{0,300}") {
        load(&text);
    }

    #[test]
    fn expressions_never_panic(text in "[a-z_.'$={}()!&| ]{0,80}") {
        let _ = crate::expr::parse_template(&text);
        let _ = crate::expr::parse(&text);
    }
}

#[test]
fn the_seed_manifest_is_valid_apart_from_its_workspace() {
    let file = ManifestFile::parse(
        Path::new("fuzz-nonexistent/pipeline.yaml"),
        VALID.to_string(),
    )
    .unwrap();
    let err = Plan::new(&file, None).unwrap_err().to_string();
    assert!(err.contains("workspace fuzz-nonexistent"), "{err}");
    assert_eq!(
        err.matches('×').count(),
        1,
        "only the workspace is wrong: {err}"
    );
}
