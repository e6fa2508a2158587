"""{{name}}: a gantry stage. It reads a file of the workspace, logs what it
found, returns the counts as outputs and, when asked, writes a report that it
hands on as an artifact."""

# componentize-py bundles only the modules it sees imported while it builds the
# component: a module first imported inside a function at run time is missing
# and the stage traps with "wasm `unreachable`". Import everything here, at the
# top (build.sh checks that no function imports anything).
import json

import stats
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, secrets
from wit_world.imports.gantry_pipeline_types import (
    Artifact,
    Capability,
    CapabilityKind,
    Level,
    Outcome,
    StageContext,
    StageError_Failed,
    StageError_InvalidConfig,
    StageInfo,
)

SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "description": "Workspace file to read"},
        "report": {"type": "string", "description": "Write a report here (needs workspace: write)"},
        "secret": {"type": "string", "description": "A granted secret to check is set"},
    },
    "additionalProperties": False,
}


class Plugin(exports.Plugin):
    """componentize-py looks for a class named after the exported interface."""

    def describe(self) -> StageInfo:
        return StageInfo(
            name="{{name}}",
            version="0.1.0",
            description="Counts the lines and words of a workspace file.",
            config_schema=json.dumps(SCHEMA),
            capabilities=[
                Capability(CapabilityKind.WORKSPACE_WRITE, None, "writes the report when `report` is set"),
                Capability(CapabilityKind.SECRET, None, "reads the secret named by `secret`"),
            ],
        )

    def run(self, context: StageContext) -> Outcome:
        config = json.loads(context.config or "{}")
        path = config["file"]
        # Errors are raised as Err(<variant of stage-error>).
        try:
            # The workspace is the current directory (and /workspace).
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise Err(StageError_InvalidConfig(f"file: cannot read {path}: {e}"))
        lines, words = stats.count(text)
        log.log(Level.INFO, f"{path}: {lines} lines, {words} words")
        outputs = [("lines", str(lines)), ("words", str(words))]
        if "secret" in config:
            try:
                value = secrets.get(config["secret"])
            except Err as e:
                # A failed host call raises Err(<variant of host-error>).
                raise Err(StageError_Failed(f"secret {config['secret']}: {e.value.value}"))
            outputs.append(("secret-set", "true" if value else "false"))
        artifacts = []
        if "report" in config:
            with open(config["report"], "w", encoding="utf-8") as f:
                f.write(f"{path}: {lines} lines, {words} words\n")
            artifacts.append(Artifact("report", "text/plain", config["report"], None, None, []))
        return Outcome(artifacts, outputs, f"{lines} lines, {words} words")
