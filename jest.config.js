// Unit tests run from TypeScript sources through ts-jest; integration and
// netns tests drive the built CLI in dist/ (npm test builds first).
//
// test/slow/ is the slow tier (jest.slow.config.js, `npm run test:slow`):
// wall-clock bounds and long transfers that only mean something on a quiet
// machine. `npm test` leaves it out; .ci/run runs it after `npm test`.
/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/test/slow/'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  testTimeout: 60000,
  maxWorkers: 2,
};
