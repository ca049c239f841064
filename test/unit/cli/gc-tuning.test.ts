import { spawnSync } from 'node:child_process';
import { GC_TUNING_FLAGS, tuneGcForBulk } from '../../../cli/gc-tuning';

/** What V8 says on stderr when `flag` is set at runtime in a fresh node (it says nothing for a flag it knows). */
function v8Complaint(flag: string): string {
  const r = spawnSync(process.execPath, ['-e', `require('node:v8').setFlagsFromString(${JSON.stringify(flag)})`], { encoding: 'utf8' });
  return r.stderr;
}

describe('GC tuning for the agent (cli/gc-tuning.ts)', () => {
  it('this Node still knows every flag it sets (a Node upgrade that drops one fails here)', () => {
    for (const flag of GC_TUNING_FLAGS) expect(v8Complaint(flag)).toBe('');
  });

  it('the check above can fail: V8 complains about a flag it does not know', () => {
    expect(v8Complaint('--no-such-vertex-test-flag')).toMatch(/unrecognized flag/);
  });

  it('VERTEX_GC_TUNING=0 leaves V8 alone', () => {
    expect(tuneGcForBulk({ VERTEX_GC_TUNING: '0' })).toBe(false);
  });
});
