// {{name}}: a gantry stage. It reads a file of the workspace, logs what it
// found, returns the counts as outputs and, when asked, writes a report that
// it hands on as an artifact. Types: types/ (written by `npm run types`).
// @ts-check

import { log, progress } from 'gantry:pipeline/log@0.2.0';
import { get as getSecret } from 'gantry:pipeline/secrets@0.2.0';
// There is no `node:fs` here: files are reached through wasi:filesystem, which
// the world imports (the workspace is preopened as /workspace).
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';
import { count } from './stats.js';

const SCHEMA = {
  type: 'object',
  required: ['file'],
  properties: {
    file: { type: 'string', description: 'Workspace file to read' },
    report: { type: 'string', description: 'Write a report here (needs workspace: write)' },
    secret: { type: 'string', description: 'A granted secret to check is set' },
  },
  additionalProperties: false,
};

function workspace() {
  const found = getDirectories().find(([, path]) => path === '/workspace');
  if (!found) throw { tag: 'failed', val: 'no /workspace preopen' };
  return found[0];
}

/** @param {string} path */
function readText(path) {
  const file = workspace().openAt({}, path, {}, { read: true });
  const [bytes] = file.read(file.stat().size, 0n); // u64 values are BigInts
  return new TextDecoder().decode(bytes);
}

/** @param {string} path @param {string} text */
function writeText(path, text) {
  const file = workspace().openAt({}, path, { create: true, truncate: true }, { write: true });
  file.write(new TextEncoder().encode(text), 0n);
}

/** @type {typeof import('gantry:pipeline/plugin@0.2.0')} */
export const plugin = {
  describe() {
    return {
      name: '{{name}}',
      version: '0.1.0',
      description: 'Counts the lines and words of a workspace file.',
      configSchema: JSON.stringify(SCHEMA),
      capabilities: [
        { kind: 'workspace-write', target: undefined, reason: 'writes the report when `report` is set' },
        { kind: 'secret', target: undefined, reason: 'reads the secret named by `secret`' },
      ],
    };
  },

  run(context) {
    const config = JSON.parse(context.config || '{}');
    let text;
    try {
      text = readText(config.file);
    } catch (e) {
      // Errors are thrown as a stage-error variant: {tag, val}.
      throw { tag: 'invalid-config', val: `file: cannot read ${config.file}: ${e.payload ?? e}` };
    }
    const { lines, words } = count(text);
    log('info', `${config.file}: ${lines} lines, ${words} words`);
    progress(1n, 1n, 'counted');
    /** @type {[string, string][]} */
    const outputs = [['lines', String(lines)], ['words', String(words)]];
    if (config.secret) {
      try {
        outputs.push(['secret-set', String(getSecret(config.secret) !== '')]);
      } catch (e) {
        // A failed host call throws an Error whose `payload` is the host-error.
        throw { tag: 'failed', val: `secret ${config.secret}: ${e.payload?.val ?? e}` };
      }
    }
    const artifacts = [];
    if (config.report) {
      writeText(config.report, `${config.file}: ${lines} lines, ${words} words\n`);
      artifacts.push({
        name: 'report',
        mediaType: 'text/plain',
        path: config.report,
        reference: undefined,
        digest: undefined,
        annotations: [],
      });
    }
    return { artifacts, outputs, summary: `${lines} lines, ${words} words` };
  },
};
