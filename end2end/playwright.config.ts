// Playwright end-to-end suite: Debian Chromium against the release `porthole` binary and the real Docker engine.
// scripts/test.sh sets PORTHOLE_BIN; the server is started here on its own port.
import { defineConfig } from '@playwright/test';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const port = Number(process.env.PORTHOLE_E2E_PORT ?? 7181);
const bin = process.env.PORTHOLE_BIN ?? '../target/release/porthole';
// The shared server's access token (tests sign in with it, see tests/auth.ts) and policy: only containers
// named porthole-e2e-* exist for the test user.
export const TOKEN = process.env.PORTHOLE_E2E_TOKEN ?? 'e2e-access-token-4f1c9a7d2b';
// The server's state (its instance id and sandboxes) outlives a run, so sandboxes a killed run left are
// cleaned up by the next one.
const state = process.env.PORTHOLE_E2E_STATE ?? join(tmpdir(), 'porthole-e2e-state');

export default defineConfig({
  testDir: './tests',
  // Tests share one server and one Docker engine; each uses its own containers. Serial keeps a 2-core
  // machine responsive, which the terminal tests need more than speed.
  workers: 1,
  fullyParallel: false,
  timeout: 60_000,
  expect: { timeout: 15_000 },
  retries: 0,
  reporter: [['list'], ['html', { open: 'never', outputFolder: 'playwright-report' }]],
  outputDir: 'test-results',
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    viewport: { width: 1280, height: 760 },
    screenshot: 'on',
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
    },
  },
  webServer: {
    command: `${bin} --listen 127.0.0.1:${port} --token ${TOKEN} --policy policy.toml --audit-log audit.log --sandboxes sandboxes.toml --state-dir ${state} --recordings-max-age 1d`,
    url: `http://127.0.0.1:${port}/healthz`,
    reuseExistingServer: false,
    timeout: 30_000,
    stdout: 'ignore',
    stderr: 'pipe',
    env: { RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  },
});
