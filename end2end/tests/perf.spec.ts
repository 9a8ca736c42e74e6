// Measurements for the UI's performance budgets (docs/performance.md). They report figures; they do not
// pass or fail on timings (benchmarks measure, tests check).
import { test, expect, type Page } from '@playwright/test';
import { signIn } from './auth';
import { removeAll, startContainer } from './docker';

test.afterEach(() => removeAll());

const screen = (page: Page, i: number) => page.evaluate((i) => (window as any).porthole.screen(i) ?? '', i);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))];
}

/** Types one character at a time and measures until each shows on tab `i`'s screen. */
async function echoLatencies(page: Page, i: number, n: number): Promise<number[]> {
  const out: number[] = [];
  await page.keyboard.type('echo ');
  for (let k = 0; k < n; k++) {
    const ch = String.fromCharCode(97 + (k % 26));
    const before = (await screen(page, i)).length;
    const t0 = performance.now();
    await page.keyboard.type(ch);
    await expect.poll(async () => (await screen(page, i)).length, { intervals: [2], timeout: 20_000 }).toBeGreaterThan(before);
    out.push(performance.now() - t0);
  }
  await page.keyboard.press('Control+C');
  return out;
}

test('first load: transferred bytes and time to the picker', async ({ page }, info) => {
  const name = startContainer('perf-load');
  // A fresh context has an empty cache: this is a first visit.
  await signIn(page);
  await expect(page.locator(`button.container[data-name="${name}"]`)).toBeVisible();
  const figures = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming;
    const resources = performance.getEntriesByType('resource') as PerformanceResourceTiming[];
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    const assets = resources.filter((r) => !r.name.includes('/socket.io/') && !r.name.includes('/api/'));
    return {
      transferredBytes: nav.transferSize + assets.reduce((s, r) => s + r.transferSize, 0),
      decodedBytes: nav.decodedBodySize + assets.reduce((s, r) => s + r.decodedBodySize, 0),
      firstContentfulPaintMs: fcp ? Math.round(fcp.startTime) : null,
      pickerShownMs: Math.round(performance.now()),
      files: assets.map((r) => ({ file: new URL(r.name).pathname, transferred: r.transferSize, decoded: r.decodedBodySize })),
    };
  });
  console.log('first load:', JSON.stringify(figures, null, 2));
  await info.attach('first-load.json', { body: JSON.stringify(figures, null, 2), contentType: 'application/json' });
  expect(figures.transferredBytes).toBeGreaterThan(0);
});

test('typing latency, alone and while another tab floods output', async ({ page }, info) => {
  const quiet = startContainer('perf-quiet');
  const noisy = startContainer('perf-noisy');
  await signIn(page);
  await page.locator(`button.container[data-name="${quiet}"]`).click();
  await expect.poll(() => screen(page, 0)).toMatch(/[#$]$/m);
  const alone = await echoLatencies(page, 0, 30);

  await page.locator(`button.container[data-name="${noisy}"]`).click();
  await expect.poll(() => screen(page, 1)).toMatch(/[#$]$/m);
  await page.keyboard.type('yes porthole-flood-line\n');
  await expect.poll(() => screen(page, 1)).toContain('porthole-flood-line\nporthole-flood-line');
  // Type in the quiet tab while the other keeps flooding (hidden tabs still parse their output).
  await page.getByTestId('tab').nth(0).click();
  await page.locator('.pane:not([hidden]) .xterm').click();
  const flooded = await echoLatencies(page, 0, 30);

  // Ctrl-C in the flooding tab: how long until its screen stops changing.
  await page.getByTestId('tab').nth(1).click();
  await page.locator('.pane:not([hidden]) .xterm').click();
  const t0 = performance.now();
  await page.keyboard.press('Control+C');
  await expect.poll(() => screen(page, 1), { intervals: [20], timeout: 60_000 }).toMatch(/\^C\s*\n.*[#$]$/);
  const ctrlCStopMs = performance.now() - t0;

  const figures = {
    aloneMs: { p50: median(alone), p95: percentile(alone, 95) },
    whileFloodingMs: { p50: median(flooded), p95: percentile(flooded, 95) },
    ctrlCStopMs: Math.round(ctrlCStopMs),
    note: 'includes Playwright round trips (keyboard.type + screen polling), measured from Node',
  };
  console.log('typing:', JSON.stringify(figures, null, 2));
  await info.attach('typing.json', { body: JSON.stringify(figures, null, 2), contentType: 'application/json' });
});
