//! Built against `gantry:pipeline@0.3.0`, which this host does not support.
wit_bindgen::generate!({ world: "stage", path: "wit" });

struct Future;

impl exports::gantry::pipeline::plugin::Guest for Future {
    fn describe() -> String {
        "future".into()
    }
    fn run(context: String) -> Result<String, String> {
        Ok(context)
    }
}

export!(Future);
