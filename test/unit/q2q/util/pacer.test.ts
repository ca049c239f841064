import { Pacer } from '../../../../q2q/util/pacer';

/** A task that runs until `finish` is called (or fails with `fail`). */
function gate() {
  let finish!: () => void;
  let fail!: (err: Error) => void;
  const done = new Promise<void>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  return { done, finish, fail };
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('Pacer', () => {
  it('runs at most `limit` tasks at once, the rest in the order they came, and tells a task that it waited', async () => {
    const pacer = new Pacer(2);
    const gates = [gate(), gate(), gate(), gate()];
    const started: Array<[number, boolean]> = [];
    gates.forEach((g, i) => pacer.run((waited) => (started.push([i, waited]), g.done)));
    expect(started).toEqual([[0, false], [1, false]]);
    expect([pacer.active, pacer.waiting]).toEqual([2, 2]);
    gates[1]?.finish();
    await turn();
    expect(started).toEqual([[0, false], [1, false], [2, true]]);
    gates[0]?.finish();
    await turn();
    expect(started.map(([i]) => i)).toEqual([0, 1, 2, 3]);
    gates[2]?.finish();
    gates[3]?.finish();
    await turn();
    expect([pacer.active, pacer.waiting]).toEqual([0, 0]);
  });

  it('a task that fails or throws frees its place', async () => {
    const pacer = new Pacer(1);
    const first = gate();
    let ran = 0;
    pacer.run(() => first.done);
    pacer.run(() => {
      throw new Error('thrown');
    });
    pacer.run(async () => {
      ran += 1;
    });
    first.fail(new Error('failed'));
    for (let i = 0; i < 5; i++) await turn();
    expect(ran).toBe(1);
    expect([pacer.active, pacer.waiting]).toEqual([0, 0]);
  });

  it('clear() drops the tasks that have not started', async () => {
    const pacer = new Pacer(1);
    const first = gate();
    let later = 0;
    pacer.run(() => first.done);
    pacer.run(async () => {
      later += 1;
    });
    pacer.clear();
    first.finish();
    await turn();
    expect(later).toBe(0);
    expect([pacer.active, pacer.waiting]).toEqual([0, 0]);
  });
});
