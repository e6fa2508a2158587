import assert from 'node:assert/strict';
import { test } from 'node:test';
import { count } from './stats.js';

test('counts lines and words', () => {
  assert.deepEqual(count('one two\nthree\n'), { lines: 2, words: 3 });
  assert.deepEqual(count(''), { lines: 0, words: 0 });
});
