// Sandboxes and container management in the browser: make a sandbox, work in it, see it in the picker with
// its badge, profile and time left, remove it; start, stop and restart a container.
import { test, expect } from '@playwright/test';
import { execFileSync } from 'node:child_process';
import { expectScreen, picker, type } from './terminal';
import { signIn } from './auth';
import { removeAll, startContainer } from './docker';

test.afterEach(() => removeAll());

test.beforeEach(async ({ page }) => {
  await signIn(page);
  await expect(page.getByTestId('connection')).toHaveText('connected');
});

const inspect = (name: string, format: string) =>
  execFileSync('docker', ['inspect', '-f', format, name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
const exists = (name: string) => {
  try {
    inspect(name, '{{.Id}}');
    return true;
  } catch {
    return false;
  }
};

test('a new sandbox opens in a tab, shows in the picker with its badge, and goes when removed', async ({ page }, info) => {
  const control = page.getByTestId('new-sandbox');
  await expect(control.getByTestId('profile')).toContainText('e2e (porthole-test/bash:2)');
  await control.getByTestId('create-sandbox').click();
  const tab = page.getByTestId('tab');
  await expect(tab).toHaveCount(1);
  await expect(tab).toContainText(/sandbox-e2e-/);
  const name = (await tab.locator('.title').textContent())!.trim();
  await expectScreen(page, 0, /[#$]$/m);
  await type(page, 'echo "uid=$(id -u) home=$HOME"');
  await expectScreen(page, 0, /uid=65534 home=\/home\/sandbox/);
  expect(inspect(name, '{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}')).toBe('134217728 134217728');

  // In the picker: a badge, its profile, the time it has left.
  const row = page.locator(`li.container-row[data-name="${name}"]`);
  await expect(row.getByTestId('sandbox-badge')).toHaveText('sandbox');
  await expect(picker(page, name)).toContainText(/e2e · (59m|1h 0m) left · Up/);
  await page.screenshot({ path: info.outputPath('sandbox.png') });

  await row.getByTestId('remove').click();
  await expect(page.getByTestId('ended')).toContainText('Its sandbox was removed.');
  await expect(tab).toContainText('sandbox removed');
  await expect(row).toHaveCount(0);
  expect(exists(name)).toBe(false);
});

test('start, stop and restart buttons manage a container the policy lets the user manage', async ({ page }) => {
  const name = startContainer('managed');
  await page.reload();
  const row = page.locator(`li.container-row[data-name="${name}"]`);
  await expect(picker(page, name)).toHaveAttribute('data-state', 'running');
  await expect(row.getByTestId('start')).toBeDisabled();
  await row.getByTestId('stop').click();
  await expect(picker(page, name)).toHaveAttribute('data-state', 'exited');
  expect(inspect(name, '{{.State.Running}}')).toBe('false');
  await row.getByTestId('start').click();
  await expect(picker(page, name)).toHaveAttribute('data-state', 'running');
  const started = inspect(name, '{{.State.StartedAt}}');
  await row.getByTestId('restart').click();
  await expect.poll(() => inspect(name, '{{.State.StartedAt}}')).not.toBe(started);
  await expect(picker(page, name)).toHaveAttribute('data-state', 'running');
  // No remove button on an ordinary container.
  await expect(row.getByTestId('remove')).toHaveCount(0);
});
