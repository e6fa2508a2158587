//! Azure Pipelines logging commands (`##vso[...]`), emitted when `TF_BUILD` is
//! set so that a gantry run inside an Azure Pipelines job shows its errors,
//! warnings and outputs in the job's UI.

use crate::pipeline::RunResult;

/// Whether we run inside Azure Pipelines.
pub fn enabled() -> bool {
    std::env::var_os("TF_BUILD").is_some()
}

/// Escape a property value: `%`, CR, LF, `]` and `;`.
fn property(v: &str) -> String {
    v.replace('%', "%AZP25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
        .replace(']', "%5D")
        .replace(';', "%3B")
}

/// Escape a message: only `%`, CR and LF.
fn message(v: &str) -> String {
    v.replace('%', "%AZP25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The logging commands for a finished run, one per line.
pub fn commands(result: &RunResult) -> Vec<String> {
    let mut out = vec![];
    for s in &result.stages {
        for d in &s.denials {
            out.push(format!("##vso[task.logissue type=warning]{}", message(d)));
        }
        if !s.ok() {
            out.push(format!(
                "##vso[task.logissue type=error;code={}]stage {}: {}",
                property(&s.status),
                s.name,
                message(&s.detail)
            ));
        }
        for (k, v) in &s.outputs {
            out.push(format!(
                "##vso[task.setvariable variable={};isoutput=true]{}",
                property(&format!("{}.{k}", s.name)),
                message(v)
            ));
        }
    }
    let verdict = if result.succeeded() {
        "Succeeded"
    } else {
        "Failed"
    };
    out.push(format!(
        "##vso[task.complete result={verdict}]gantry run {}",
        result.run_id
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::StageResult;

    #[test]
    fn escapes_and_reports_failures_and_outputs() {
        let stage =
            |name: &str, status: &str, detail: &str, outputs: Vec<(String, String)>| StageResult {
                name: name.into(),
                uses: "x".into(),
                status: status.into(),
                detail: detail.into(),
                duration_ms: 1,
                outputs,
                denials: vec![],
                artifacts: vec![],
                reused_from: None,
            };
        let result = RunResult {
            run_id: "r1".into(),
            pipeline: "p".into(),
            environment: "e".into(),
            dir: String::new(),
            status: "failed",
            duration_ms: 2,
            cancelled: false,
            exec_unconfined: false,
            signal: None,
            promoted_from: None,
            stages: vec![
                stage(
                    "build",
                    "succeeded",
                    "ok",
                    vec![("image".into(), "reg/app@sha256:1".into())],
                ),
                stage("test", "failed", "2 failed;\n100% sure]", vec![]),
            ],
        };
        let c = commands(&result);
        assert_eq!(
            c[0],
            "##vso[task.setvariable variable=build.image;isoutput=true]reg/app@sha256:1"
        );
        assert_eq!(
            c[1],
            "##vso[task.logissue type=error;code=failed]stage test: 2 failed;%0A100%AZP25 sure]"
        );
        assert_eq!(c[2], "##vso[task.complete result=Failed]gantry run r1");
        assert_eq!(property("a;b]c"), "a%3Bb%5Dc");
    }
}
