//! A plugin whose describe() never returns: gantry must stop it within the
//! describe budget and say so in words, without a wasm backtrace.
use gantry_sdk::{Guest, Outcome, StageContext, StageError, StageInfo};
use std::hint::black_box;

struct DescribeLoop;

impl Guest for DescribeLoop {
    fn describe() -> StageInfo {
        let mut n = 0u64;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }

    fn run(_: StageContext) -> Result<Outcome, StageError> {
        Err(StageError::Failed("never reached".into()))
    }
}

gantry_sdk::export_stage!(DescribeLoop);
