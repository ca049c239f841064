// The slow tier (TESTING.md "Tiers"): time bounds and long transfers, run
// one file at a time so that the bounds measure the code, not the other
// tests. `npm run test:slow`; .ci/run runs it after `npm test`.
const base = require('./jest.config');

/** @type {import('jest').Config} */
module.exports = {
  ...base,
  roots: ['<rootDir>/test/slow'],
  testPathIgnorePatterns: ['/node_modules/'],
  testTimeout: 300000,
  maxWorkers: 1,
};
