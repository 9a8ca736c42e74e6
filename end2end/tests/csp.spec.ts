// The Content-Security-Policy: every response carries it, the UI works under it without a single violation,
// and markup that a container or an identity provider controls shows as text (no element, no script, no alert).
import { test, expect, type Page } from '@playwright/test';
import { expectScreen, picker, screen, type } from './terminal';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { signIn } from './auth';
import { BASH_IMAGE, containerName, removeAll, startContainer } from './docker';
import { JwtServer } from './servers';

/** What an attacker would put into a string the UI shows. */
const MARKUP = '<img src=x onerror=alert(1)>';

const jwtPort = Number(process.env.PORTHOLE_E2E_JWT_PORT ?? 7183);

test.afterEach(() => removeAll());

/** The parsed `Content-Security-Policy` header: directive name → its sources. */
function directives(header: string | undefined): Map<string, string[]> {
  expect(header, 'Content-Security-Policy header').toBeTruthy();
  return new Map(
    header!
      .split(';')
      .map((d) => d.trim().split(/\s+/))
      .filter((d) => d[0])
      .map(([name, ...sources]) => [name.toLowerCase(), sources]),
  );
}

/** Everything the page reports that a policy (or an injection) would cause. Call before the first goto. */
async function watch(page: Page) {
  const seen = { cspConsole: [] as string[], dialogs: [] as string[], errors: [] as string[] };
  await page.addInitScript(() => {
    const w = window as any;
    w.__csp = { violations: [] as string[], images: 0 };
    document.addEventListener('securitypolicyviolation', (e) => {
      const what = `${e.effectiveDirective} blocked ${e.blockedURI || '(inline)'}`;
      w.__csp.violations.push(`${what} at ${e.sourceFile}:${e.lineNumber}`);
    });
    // An <img> that exists only for a moment (created, fires onerror, removed) is still counted.
    new MutationObserver((records) => {
      for (const r of records)
        for (const n of r.addedNodes)
          if (n instanceof Element) w.__csp.images += (n.tagName === 'IMG' ? 1 : 0) + n.querySelectorAll('img').length;
    }).observe(document, { childList: true, subtree: true });
  });
  page.on('console', (m) => {
    if (/content.security.policy/i.test(m.text())) seen.cspConsole.push(m.text());
  });
  page.on('dialog', (d) => {
    seen.dialogs.push(`${d.type()}: ${d.message()}`);
    void d.dismiss();
  });
  page.on('pageerror', (e) => seen.errors.push(String(e)));
  return {
    /** Asserts nothing was blocked, no dialog opened and no <img> was ever in the page. */
    async expectClean() {
      const inPage = await page.evaluate(() => (window as any).__csp as { violations: string[]; images: number });
      expect(inPage.violations, 'securitypolicyviolation events').toEqual([]);
      expect(seen.cspConsole, 'console messages about the Content Security Policy').toEqual([]);
      expect(seen.dialogs, 'dialogs (alert/confirm/prompt)').toEqual([]);
      expect(seen.errors, 'uncaught page errors').toEqual([]);
      expect(inPage.images, '<img> elements ever added').toBe(0);
      await expect(page.locator('img')).toHaveCount(0);
    },
  };
}


test('every response carries a strict CSP whose hashes match the page inline scripts', async ({ request }) => {
  const index = await request.get('/');
  const csp = directives(index.headers()['content-security-policy']);
  expect(csp.get('default-src')).toEqual(["'none'"]);
  expect(csp.get('connect-src')).toEqual(["'self'"]);
  expect(csp.get('object-src')).toEqual(["'none'"]);
  expect(csp.get('frame-ancestors')).toEqual(["'none'"]);
  expect(csp.get('base-uri')).toEqual(["'none'"]);
  expect(csp.get('form-action')).toEqual(["'none'"]);
  const scriptSrc = csp.get('script-src')!;
  expect(scriptSrc.slice(0, 2)).toEqual(["'self'", "'wasm-unsafe-eval'"]);
  expect(scriptSrc).not.toContain("'unsafe-inline'");
  expect(scriptSrc).not.toContain("'unsafe-eval'");

  // The hashes are exactly those of the served page's inline scripts (import map, Trunk's loader), computed
  // here independently of build.rs.
  const html = (await index.text()).replace(/\r\n?/g, '\n');
  const inline = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script/gi)]
    .filter(([, attrs]) => !/\bsrc\s*=/i.test(attrs))
    .map(([, , body]) => `'sha256-${createHash('sha256').update(body, 'utf8').digest('base64')}'`);
  expect(inline.length, 'inline scripts in index.html').toBeGreaterThanOrEqual(2);
  expect(scriptSrc.slice(2).sort()).toEqual(inline.sort());

  // Not only the page: scripts, API answers and errors carry the same policy.
  const header = index.headers()['content-security-policy'];
  for (const path of ['/vendor/xterm.mjs', '/healthz', '/api/v1/containers', '/no-such-page']) {
    expect((await request.get(path)).headers()['content-security-policy'], path).toBe(header);
  }
});

test('the UI works under the CSP: a terminal over a same-origin websocket echoes', async ({ page, baseURL }) => {
  const w = await watch(page);
  const name = startContainer('csp-echo');
  // The websocket transport must get through `connect-src 'self'` (ws: on the page's own host and port).
  const frames: string[] = [];
  page.on('websocket', (ws) => {
    if (ws.url().includes('/socket.io/')) ws.on('framereceived', () => frames.push(ws.url()));
  });
  await signIn(page);
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await picker(page, name).click();
  await expectScreen(page, 0, /[#$]$/m);
  await type(page, 'echo csp-$((6*7))');
  await expectScreen(page, 0, /^csp-42$/m);
  await expect.poll(() => frames.length, { message: 'frames over the websocket' }).toBeGreaterThan(0);
  expect(frames[0]).toMatch(new RegExp(`^${baseURL!.replace(/^http/, 'ws')}/socket\\.io/`));
  await w.expectClean();
});

test('markup from a container shows as text: labels, output, terminal title', async ({ page }) => {
  const w = await watch(page);
  const name = containerName('csp-markup');
  // Like docker.ts's startContainer, plus a label holding the markup (removed below, even on failure).
  execFileSync('docker', ['run', '-d', '--init', '--label', 'porthole.test=e2e', '--label', `porthole.note=${MARKUP}`,
    '--name', name, BASH_IMAGE]);
  try {
    await signIn(page);
    await expect(page.getByTestId('connection')).toHaveText('connected');
    // The labels reach the page (the list API) even though the picker does not show them.
    const labels = await page.evaluate(async (n) => {
      const list: { name: string; labels: Record<string, string> }[] = await (await fetch('/api/v1/containers')).json();
      return list.find((c) => c.name === n)?.labels;
    }, name);
    expect(labels?.['porthole.note']).toBe(MARKUP);
    await expect(picker(page, name)).toBeVisible();
    await picker(page, name).click();
    await expectScreen(page, 0, /[#$]$/m);
    // Markup as output, and as the terminal title (OSC 0 and OSC 2), which a shell or program sets at will.
    await type(page, `printf '\\033]0;${MARKUP}\\007\\033]2;${MARKUP}\\007'; echo '${MARKUP}'; echo title-$((1+1))`);
    await expectScreen(page, 0, /^title-2$/m);
    expect((await screen(page, 0)).split('\n')).toContain(MARKUP);
    // The UI shows no terminal titles: the page and the tab keep their own names.
    expect(await page.title()).toBe('Porthole');
    await expect(page.getByTestId('tab').nth(0)).toHaveText(new RegExp(`^${name}`));
    await w.expectClean();
  } finally {
    execFileSync('docker', ['rm', '-f', name]);
  }
});

test('Docker refuses markup in container names and image names, so the picker cannot show any', async () => {
  // What the picker shows besides labels comes from Docker: the name, the image reference, and the state and
  // status words Docker writes itself. Docker validates names and references; if that ever changes, this test
  // fails and the picker's rendering of them needs a test like the ones above.
  const docker = (...args: string[]) => () => execFileSync('docker', args, { stdio: 'pipe' });
  expect(docker('create', '--name', MARKUP, BASH_IMAGE)).toThrow(/Invalid container name/);
  expect(docker('tag', BASH_IMAGE, `porthole-e2e/${MARKUP}:1`)).toThrow(/invalid reference format/);
});

test.describe('a JWT subject with markup', () => {
  const jwt = new JwtServer(jwtPort);

  // The identity provider's user may use the suite's containers, like the shared server's "local".
  test.beforeAll(() =>
    jwt.start(`[[rule]]\nsubjects = [${JSON.stringify(MARKUP)}]\ncontainers = ["porthole-e2e-*"]\ncommands = "any"\n`),
  );
  test.afterAll(() => jwt.stop());

  test('shows in the top bar as text, and its terminals work', async ({ page }) => {
    const w = await watch(page);
    const name = startContainer('csp-jwt');
    const token = jwt.token(MARKUP, [MARKUP]);
    await page.goto(`${jwt.origin}/?token=${encodeURIComponent(token)}`);
    await expect(page).toHaveURL(`${jwt.origin}/`);
    await expect(page.getByTestId('connection')).toHaveText('connected');
    await expect(page.getByTestId('user')).toHaveText(MARKUP);
    await picker(page, name).click();
    await expectScreen(page, 0, /[#$]$/m);
    await type(page, 'echo jwt-$((3*3))');
    await expectScreen(page, 0, /^jwt-9$/m);
    await w.expectClean();
  });
});
