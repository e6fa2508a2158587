//! A local Application Insights ingestion endpoint for development: the strict
//! one the tests use (every envelope checked against the documented schema),
//! printing what it accepts and rejects.
//!
//! ```text
//! cargo run -p gantry-e2e --example ingestion -- [ADDR] [INSTRUMENTATION-KEY]
//! ```
//! defaults `127.0.0.1:8089` and `00000000-0000-4000-8000-000000000000`, the
//! connection string examples/hello's `docker` environment uses.

use gantry_e2e::appinsights::Ingestion;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8089".into());
    let ikey = args
        .next()
        .unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".into());
    let ingestion = match Ingestion::start_on(&addr, &ikey) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("ingestion: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("connection string: {}", ingestion.connection_string());
    let (mut accepted, mut rejected) = (0, 0);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        for e in ingestion.accepted().iter().skip(accepted) {
            let data = &e["data"]["baseData"];
            println!(
                "accepted {} {} (operation {})",
                e["data"]["baseType"].as_str().unwrap_or("?"),
                data["name"].as_str().or(data["id"].as_str()).unwrap_or(""),
                e["tags"]["ai.operation.id"].as_str().unwrap_or("")
            );
            accepted += 1;
        }
        for r in ingestion.rejected().iter().skip(rejected) {
            println!("rejected {r:?}");
            rejected += 1;
        }
    }
}
