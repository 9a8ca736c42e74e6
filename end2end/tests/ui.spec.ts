// What a user does with Porthole in a browser, checked on what they would see.
import { test, expect, type Page } from '@playwright/test';
import { expectScreen, picker, screen, type } from './terminal';
import { signIn } from './auth';
import { createStopped, removeAll, startContainer, stopContainer, strayProcesses } from './docker';

test.afterEach(() => removeAll());


async function openTab(page: Page, name: string, index: number) {
  await picker(page, name).click();
  await expect(page.getByTestId('tab')).toHaveCount(index + 1);
  // The shell's prompt shows once the terminal is running.
  await expectScreen(page, index, /[#$]$/m);
}

test.beforeEach(async ({ page }) => {
  await signIn(page);
  await expect(page.getByTestId('connection')).toHaveText('connected');
});

test('picker lists containers, running first, and updates when one starts or stops', async ({ page }, info) => {
  const running = startContainer('listed');
  const stopped = createStopped('listed-stopped');
  await page.reload();
  await expect(picker(page, running)).toBeVisible();
  await expect(picker(page, running)).toHaveAttribute('data-state', 'running');
  await expect(picker(page, running)).toContainText('porthole-test/bash:2');
  await expect(picker(page, stopped)).toHaveAttribute('data-state', 'exited');
  const names = await page.locator('button.container').evaluateAll((els) =>
    els.map((e) => [e.getAttribute('data-name'), e.getAttribute('data-state')]),
  );
  const firstStopped = names.findIndex(([, s]) => s !== 'running');
  expect(names.slice(firstStopped).every(([, s]) => s !== 'running')).toBe(true);

  // A container started now appears by itself (Docker events pushed over the socket).
  const late = startContainer('late');
  await expect(picker(page, late)).toHaveAttribute('data-state', 'running');
  stopContainer(late);
  await expect(picker(page, late)).toHaveAttribute('data-state', 'exited');

  // The filter box narrows the list.
  await page.getByLabel('Filter containers').fill(running);
  await expect(page.locator('button.container')).toHaveCount(1);
  await page.screenshot({ path: info.outputPath('picker.png') });
});

test('a terminal echoes what is typed, on screen', async ({ page }, info) => {
  const name = startContainer('echo');
  await page.reload();
  await openTab(page, name, 0);
  await expect(page.getByTestId('tab')).toContainText(name);
  await type(page, 'echo e2e-$((6*7))');
  await expectScreen(page, 0, /^e2e-42$/m);
  // UTF-8 and wide characters reach the screen intact.
  await type(page, "printf 'h\\303\\251llo \\344\\275\\240\\345\\245\\275 \\360\\237\\230\\200\\n'");
  await expectScreen(page, 0, /héllo 你好 😀/);
  await page.screenshot({ path: info.outputPath('terminal.png') });
});

test('two tabs are independent and keep their screens when switching', async ({ page }, info) => {
  const a = startContainer('tab-a');
  const b = startContainer('tab-b');
  await page.reload();
  await openTab(page, a, 0);
  await type(page, 'V=alpha; echo first-$V');
  await expectScreen(page, 0, /^first-alpha$/m);
  await openTab(page, b, 1);
  await type(page, 'echo second-${V:-unset}');
  await expectScreen(page, 1, /^second-unset$/m);
  // Back to the first tab by click: its screen is still there and its shell state too.
  await page.getByTestId('tab').nth(0).click();
  await expect(page.getByTestId('tab').nth(0)).toHaveAttribute('aria-selected', 'true');
  await type(page, 'echo again-$V');
  await expectScreen(page, 0, /^again-alpha$/m);
  expect(await screen(page, 0)).toContain('first-alpha');
  expect(await screen(page, 1)).not.toContain('alpha');
  // Keyboard: Alt+] next tab, Alt+T new tab in the same container, Alt+W closes it.
  await page.keyboard.press('Alt+]');
  await expect(page.getByTestId('tab').nth(1)).toHaveAttribute('aria-selected', 'true');
  await page.keyboard.press('Alt+t');
  await expect(page.getByTestId('tab')).toHaveCount(3);
  await expect(page.getByTestId('tab').nth(2)).toContainText(b);
  await expectScreen(page, 2, /[#$]$/m);
  await page.keyboard.press('Alt+w');
  await expect(page.getByTestId('tab')).toHaveCount(2);
  await page.screenshot({ path: info.outputPath('two-tabs.png') });
});

test('the terminal fits its pane: stty size follows the window', async ({ page }) => {
  const name = startContainer('fit');
  await page.reload();
  await openTab(page, name, 0);
  const size = async () => (await page.evaluate(() => (window as any).porthole.size(0))) as [number, number];
  const check = async () => {
    const [cols, rows] = await size();
    await type(page, 'echo size=$(stty size)');
    await expectScreen(page, 0, new RegExp(`^size=${rows} ${cols}$`, 'm'));
    return [cols, rows];
  };
  const [c1, r1] = await check();
  await page.setViewportSize({ width: 900, height: 520 });
  await expect.poll(size).not.toEqual([c1, r1]);
  const [c2, r2] = await check();
  expect(c2).toBeLessThan(c1);
  expect(r2).toBeLessThan(r1);
});

test('closing a tab ends its session and leaves no process in the container', async ({ page }) => {
  const name = startContainer('close');
  await page.reload();
  await openTab(page, name, 0);
  await type(page, 'sleep 4242 & echo bg-$((1+1))');
  await expectScreen(page, 0, /^bg-2$/m);
  expect(strayProcesses(name).join('\n')).toContain('sleep 4242');
  await page.getByTestId('tab').nth(0).getByRole('button', { name: 'Close tab' }).click();
  await expect(page.getByTestId('tab')).toHaveCount(0);
  await expect.poll(() => strayProcesses(name)).toEqual([]);
});

test('a stopped container says why it cannot be opened', async ({ page }, info) => {
  const name = createStopped('stopped');
  await page.reload();
  await picker(page, name).click();
  await expect(page.getByTestId('notice')).toContainText(`container ${name} is exited`);
  await expect(page.getByTestId('tab')).toHaveCount(0);
  await page.screenshot({ path: info.outputPath('stopped.png') });
});

test('an ended terminal says how and offers to reopen', async ({ page }) => {
  const name = startContainer('ended');
  await page.reload();
  await openTab(page, name, 0);
  await type(page, 'exit 3');
  await expect(page.getByTestId('tab').nth(0)).toContainText('exit 3');
  await expect(page.getByTestId('ended')).toContainText('exited with code 3');
  await page.getByTestId('ended').getByRole('button', { name: 'Reopen' }).click();
  await expect(page.getByTestId('ended')).toHaveCount(0);
  await page.locator('.pane:not([hidden]) .xterm').click();
  await type(page, 'echo reopened-$((2+2))');
  await expectScreen(page, 0, /^reopened-4$/m);
});

test('keys typed while a tab is still opening reach its shell', async ({ page }) => {
  const name = startContainer('early');
  await page.reload();
  await picker(page, name).click();
  // No wait for the prompt: the first keys arrive while the terminal is being started.
  await type(page, 'echo early-$((6*7))');
  await expectScreen(page, 0, /^early-42$/m);
});

test('reloading the page brings its tabs back with their recent output, same shell', async ({ page }, info) => {
  const name = startContainer('reload');
  await page.reload();
  await openTab(page, name, 0);
  await type(page, 'MARK=still-here; echo before-reload-$((2*3))');
  await expectScreen(page, 0, /^before-reload-6$/m);
  await page.reload();
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await expect(page.getByTestId('tab')).toHaveCount(1);
  await expect(page.getByTestId('tab').nth(0)).toContainText(name);
  // The recent output is on screen again, and it is the same shell.
  await expectScreen(page, 0, /^before-reload-6$/m);
  await page.locator('.pane:not([hidden]) .xterm').click();
  await type(page, 'echo $MARK-$((5+5))');
  await expectScreen(page, 0, /^still-here-10$/m);
  await page.screenshot({ path: info.outputPath('after-reload.png') });
  // Closing the tab still ends the session.
  await page.keyboard.press('Alt+w');
  await expect(page.getByTestId('tab')).toHaveCount(0);
  await expect.poll(() => strayProcesses(name)).toEqual([]);
});

test('going offline while the container prints loses no line', async ({ page, context }) => {
  const name = startContainer('offline-output');
  await page.reload();
  await openTab(page, name, 0);
  await type(page, 'for i in $(seq 1 40); do echo tick-$i; sleep 0.05; done; echo ticks-$((40))-done');
  await expectScreen(page, 0, /^tick-3$/m);
  await context.setOffline(true);
  await page.waitForTimeout(2500);
  await context.setOffline(false);
  await expect(page.getByTestId('connection')).toHaveText('connected', { timeout: 30_000 });
  await expectScreen(page, 0, /^ticks-40-done$/m);
  const lines = (await screen(page, 0)).split('\n');
  for (let i = 1; i <= 40; i++) {
    expect(lines.filter((l) => l === `tick-${i}`), `tick-${i} exactly once`).toHaveLength(1);
  }
});

test('a second window shares the terminal and shows how many follow it', async ({ page, context }) => {
  const name = startContainer('shared');
  await page.reload();
  await openTab(page, name, 0);
  await type(page, 'echo first-window-$((1+1))');
  await expectScreen(page, 0, /^first-window-2$/m);
  const second = await context.newPage();
  await second.goto('/');
  await expect(second.getByTestId('tab')).toHaveCount(1);
  await expectScreen(second, 0, /^first-window-2$/m);
  await expect(page.getByTestId('viewers')).toHaveText('👥 2');
  await expect(second.getByTestId('viewers')).toHaveText('👥 2');
  await second.locator('.pane:not([hidden]) .xterm').click();
  await type(second, 'echo second-window-$((2+2))');
  await expectScreen(page, 0, /^second-window-4$/m);
  await second.close();
  await expect(page.getByTestId('viewers')).toHaveCount(0);
});

/** Page coordinates of the middle of cell (col, row) in the visible terminal. */
async function cell(page: Page, i: number, col: number, row: number): Promise<[number, number]> {
  const box = (await page.locator('.pane:not([hidden]) .xterm-screen').boundingBox())!;
  const [cols, rows] = (await page.evaluate((i) => (window as any).porthole.size(i), i)) as [number, number];
  return [box.x + (box.width / cols) * (col + 0.5), box.y + (box.height / rows) * (row + 0.5)];
}

test('selecting copies to the clipboard, pasting types into the terminal', async ({ page, context }) => {
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);
  const name = startContainer('clip');
  await page.reload();
  await openTab(page, name, 0);
  await type(page, 'echo copyme-$((1+1))');
  await expectScreen(page, 0, /^copyme-2$/m);
  const row = (await screen(page, 0)).split('\n').indexOf('copyme-2');
  const [x, y] = await cell(page, 0, 3, row);
  await page.mouse.dblclick(x, y);
  await expect.poll(() => page.evaluate(() => navigator.clipboard.readText())).toBe('copyme-2');

  // A paste (what Ctrl+Shift+V or the context menu delivers) reaches the shell.
  await page.evaluate(() => {
    const target = document.querySelector('.pane:not([hidden]) textarea')!;
    const data = new DataTransfer();
    data.setData('text/plain', 'echo pasted-$((5+5))');
    target.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
  });
  await page.keyboard.press('Enter');
  await expectScreen(page, 0, /^pasted-10$/m);
});

test('links in the terminal are clickable', async ({ page, baseURL }) => {
  const name = startContainer('links');
  await page.reload();
  await openTab(page, name, 0);
  const url = `${baseURL}/healthz`;
  await type(page, `echo ${url}`);
  await expectScreen(page, 0, new RegExp(`^${url.replace(/[.]/g, '\\.')}$`, 'm'));
  const row = (await screen(page, 0)).split('\n').indexOf(url);
  const [x, y] = await cell(page, 0, 5, row);
  await page.mouse.move(x, y);
  const [popup] = await Promise.all([page.context().waitForEvent('page'), page.mouse.click(x, y)]);
  await popup.waitForURL(url);
  await expect(popup.locator('body')).toContainText('"status":"ok"');
});

test('the theme follows the system: light and dark', async ({ page }, info) => {
  const a = startContainer('theme-api');
  const b = startContainer('theme-db', 'porthole-test/sh:2');
  for (const scheme of ['light', 'dark'] as const) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.reload();
    await expect(page.getByTestId('connection')).toHaveText('connected');
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const [r, g, bl] = background.match(/\d+/g)!.map(Number);
    const luminance = (0.2126 * r + 0.7152 * g + 0.0722 * bl) / 255;
    if (scheme === 'dark') expect(luminance).toBeLessThan(0.2);
    else expect(luminance).toBeGreaterThan(0.8);
    await openTab(page, b, 0);
    await openTab(page, a, 1);
    await type(page, "printf '\\033[1;32m%s\\033[0m \\033[34m%s\\033[0m\\n' ok \"$(uname -sm)\"; ls -l /");
    await expectScreen(page, 1, /^ok Linux/m);
    await page.screenshot({ path: info.outputPath(`theme-${scheme}.png`) });
    for (let k = 0; k < 2; k++) await page.keyboard.press('Alt+w');
    await expect(page.getByTestId('tab')).toHaveCount(0);
    // The next reload resumes whatever the server still runs: wait for both closes to be done there.
    await expect
      .poll(async () => {
        const list: { containerName: string; state: string }[] = await (await page.request.get('/api/v1/terminals')).json();
        return list.filter((t) => [a, b].includes(t.containerName) && t.state !== 'exited').length;
      })
      .toBe(0);
  }
});

test('a tab whose container stops says so; a tab switch refits the terminal', async ({ page }) => {
  const a = startContainer('refit-a');
  const b = startContainer('refit-b');
  await page.reload();
  await openTab(page, a, 0);
  await openTab(page, b, 1);
  // Resize while tab 0 is hidden; switching to it must fit it to the new pane and tell the server.
  const before = await page.evaluate(() => (window as any).porthole.size(0));
  await page.setViewportSize({ width: 1000, height: 560 });
  await page.getByTestId('tab').nth(0).click();
  await expect.poll(() => page.evaluate(() => (window as any).porthole.size(0))).not.toEqual(before);
  const [cols, rows] = await page.evaluate(() => (window as any).porthole.size(0));
  await type(page, 'echo size=$(stty size)');
  await expectScreen(page, 0, new RegExp(`^size=${rows} ${cols}$`, 'm'));

  stopContainer(a);
  await expect(page.getByTestId('tab').nth(0)).toContainText('stopped');
  await expect(page.getByTestId('ended')).toContainText('The container stopped.');
});

test('the connection badge follows the network and the UI recovers', async ({ page, context }) => {
  const name = startContainer('offline');
  await page.reload();
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await context.setOffline(true);
  await expect(page.getByTestId('connection')).toHaveText(/offline|reconnecting/);
  await context.setOffline(false);
  await expect(page.getByTestId('connection')).toHaveText('connected', { timeout: 30_000 });
  await openTab(page, name, 0);
  await type(page, 'echo online-$((4*4))');
  await expectScreen(page, 0, /^online-16$/m);
});

test('the binary serves its own UI with the right types, compression and caching', async ({ request }) => {
  const index = await request.get('/');
  expect(index.headers()['content-type']).toContain('text/html');
  const html = await index.text();
  const wasm = html.match(/\/frontend-[0-9a-f]+_bg\.wasm/)![0];
  const res = await request.get(wasm, { headers: { 'accept-encoding': 'br, gzip' } });
  expect(res.status()).toBe(200);
  expect(res.headers()['content-type']).toBe('application/wasm');
  expect(res.headers()['content-encoding']).toBe('br');
  const etag = res.headers()['etag'];
  expect(etag).toBeTruthy();
  const again = await request.get(wasm, { headers: { 'if-none-match': etag } });
  expect(again.status()).toBe(304);
  const gz = await request.get('/vendor/xterm.mjs', { headers: { 'accept-encoding': 'gzip' } });
  expect(gz.headers()['content-encoding']).toBe('gzip');
  expect(gz.headers()['content-type']).toMatch(/javascript/);
});
