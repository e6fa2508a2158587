//! A local Azure Boards for development: the strict stand-in the tests use
//! (PAT basic auth with the empty user, api-version, JSON Patch with
//! `test /rev`, the state workflow, links, comments), seeded with work items
//! 1..=5 (`User Story`, state `New`), printing every update it accepts.
//!
//! ```text
//! cargo run -p gantry-e2e --example boards -- [--port PORT] [--state STATE]
//! ```
//! Listens on 127.0.0.1:8095 by default; point a client at
//! `http://127.0.0.1:8095` instead of `https://dev.azure.com` (any
//! organization and project). The PAT is `$GANTRY_BOARDS_PAT`, `dev-pat` when
//! unset. `--state` seeds the items in another state (e.g. `Active`, from
//! which `Resolved` is a valid transition).

use gantry_e2e::boards::Boards;
use std::time::Duration;

const USAGE: &str = "usage: boards [--port PORT] [--state New|Active|Resolved|Closed|Removed]";
const STATES: [&str; 5] = ["New", "Active", "Resolved", "Closed", "Removed"];

fn fail(message: &str) -> ! {
    eprintln!("boards: {message}\n{USAGE}");
    std::process::exit(2);
}

fn main() {
    let (mut port, mut state) = (8095u16, "New".to_string());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let v = args.next().unwrap_or_else(|| fail("--port needs a value"));
                port = v
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("--port: `{v}` is not a port number")));
            }
            "--state" => {
                state = args.next().unwrap_or_else(|| fail("--state needs a value"));
                if !STATES.contains(&state.as_str()) {
                    fail(&format!("--state: `{state}` is not one of {STATES:?}"));
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument `{other}`")),
        }
    }
    let (pat, from) = match std::env::var("GANTRY_BOARDS_PAT") {
        Ok(p) if !p.is_empty() => (p, "$GANTRY_BOARDS_PAT"),
        _ => (
            "dev-pat".to_string(),
            "the default `dev-pat` (GANTRY_BOARDS_PAT unset)",
        ),
    };
    let addr = format!("127.0.0.1:{port}");
    let boards = Boards::start_on(&addr, &pat).unwrap_or_else(|e| {
        eprintln!("boards: cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    for id in 1..=5 {
        boards.add_item(id, "User Story", &format!("User Story {id}"), &state);
    }
    println!(
        "Azure Boards stand-in on {} (any organization/project); PAT: {from}; work items 1..=5 in state {state}",
        boards.url()
    );
    let (mut patches, mut requests) = (0, 0);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        for (id, ops) in boards.patches().iter().skip(patches) {
            let item = boards.item(*id);
            println!(
                "work item {id} (now rev {}, state {}): {ops}",
                item["rev"], item["fields"]["System.State"]
            );
            patches += 1;
        }
        // Comments come by their own POST, not as patches; refusals are worth seeing too.
        for r in boards.requests().iter().skip(requests) {
            if r.method == "POST" && r.status == 200 {
                println!("comment {}: {}", r.path, r.body);
            } else if r.status >= 400 || r.status == 203 {
                println!("refused {} {} -> {}", r.method, r.path, r.status);
            }
            requests += 1;
        }
    }
}
