#!/bin/sh
# Build plugin.wasm: ./build.sh (makes .venv with componentize-py on first use).
set -eu
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet -r requirements.txt
fi
# componentize-py bundles only modules imported while it builds; an import
# inside a function is missing at run time ("wasm `unreachable`").
if grep -nE '^[[:space:]]+(import|from)[[:space:]]' app.py stats.py; then
    echo "build.sh: move these imports to the top of the file (see app.py)" >&2
    exit 1
fi
.venv/bin/python -m unittest -q test_stats
.venv/bin/componentize-py -d wit -w stage componentize app -o plugin.wasm
echo "built plugin.wasm ($(wc -c < plugin.wasm) bytes)"
