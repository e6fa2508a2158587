//! `cargo bench -p gantry --bench exec_confinement`
//!
//! What confinement adds to each program a stage starts: `true` run 1000
//! times through the exec capability
//!
//! 1. plain: as exec did before confinement (tokio's Command: cleared
//!    environment, own process group, piped output, killed on drop);
//! 2. guard only: the exec capability with Landlock opted out
//!    (GANTRY_UNCONFINED_EXEC), i.e. clone into a PID namespace, the stage's
//!    pids cgroup, parent-death signal;
//! 3. confined: the exec capability as it runs by default, (2) plus the
//!    stage's Landlock ruleset (built once per stage, applied per program).
//!
//! Same machine, same run, interleaved in rounds so that drift hits all three
//! alike. Prints medians and the added cost per exec; asserts nothing.

use gantry::capabilities::Subject;
use gantry::capabilities::exec::{ExecGrant, ExecState};
use gantry::capabilities::log::StageLog;
use gantry::report::Silent;
use gantry::runtime::bindings::exec::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXECS: usize = 1000;
const ROUNDS: usize = 10;

fn state(workspace: &std::path::Path) -> ExecState {
    let subject = Subject::new("bench", "stages[0]");
    let log = Arc::new(StageLog::new(
        subject.clone(),
        Arc::new(Silent),
        Default::default(),
        1 << 30,
        None,
    ));
    let grant = ExecGrant {
        programs: vec!["true".into()],
        ..ExecGrant::default()
    };
    ExecState::new(
        grant,
        subject,
        workspace.to_path_buf(),
        false,
        vec![],
        log,
        format!("bench-{}", std::process::id()),
        1024,
    )
}

fn command() -> Command {
    Command {
        program: "true".into(),
        args: vec![],
        cwd: None,
        env: vec![],
        timeout_ms: None,
    }
}

async fn plain(exe: &std::path::Path, workspace: &std::path::Path) -> Duration {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .current_dir(workspace)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (mut a, mut b) = (vec![], vec![]);
    use tokio::io::AsyncReadExt;
    let (_, _, status) = tokio::join!(
        out.read_to_end(&mut a),
        err.read_to_end(&mut b),
        child.wait()
    );
    assert!(status.unwrap().success());
    start.elapsed()
}

async fn through_exec(state: &ExecState) -> Duration {
    let start = Instant::now();
    let status = state.run(command()).await.unwrap();
    assert_eq!(status.code, Some(0));
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn main() {
    let support = gantry::sandbox::Support::get();
    println!("exec confinement here: {}", support.describe());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let workspace = workspace.path().canonicalize().unwrap();
    let exe = gantry::sandbox::loader::find_on_path("true", &std::env::var_os("PATH").unwrap())
        .expect("`true` on PATH");
    rt.block_on(async {
        let confined_state = state(&workspace);
        let (mut p, mut c, mut g) = (vec![], vec![], vec![]);
        // Warm up: page cache, the ruleset and cgroup made on first use.
        for _ in 0..50 {
            plain(&exe, &workspace).await;
            through_exec(&confined_state).await;
        }
        let per_round = EXECS / ROUNDS;
        for _ in 0..ROUNDS {
            for _ in 0..per_round {
                p.push(plain(&exe, &workspace).await);
            }
            for _ in 0..per_round {
                c.push(through_exec(&confined_state).await);
            }
        }
        drop(confined_state);
        // Landlock off from here on (the opt-out is process-wide).
        gantry::sandbox::opt_into_unconfined();
        let guard_state = state(&workspace);
        for _ in 0..50 {
            through_exec(&guard_state).await;
        }
        for _ in 0..EXECS {
            g.push(through_exec(&guard_state).await);
        }
        let (p, g, c) = (median(p), median(g), median(c));
        println!("exec of `true`, {EXECS} times each, median:");
        println!("  plain (tokio Command, process group)      {:>10}", us(p));
        println!("  guard only (PID namespace, cgroup)        {:>10}", us(g));
        println!("  confined (guard + Landlock)               {:>10}", us(c));
        println!(
            "  added per exec by confinement             {:>10}",
            if c > p {
                us(c - p)
            } else {
                format!("-{}", us(p - c))
            }
        );
    });
}
