// Signing in as a user would: with the link the server prints, or by typing a token. This file starts its
// own server (no --token: it makes one up and prints it) with the suite's policy.
import { test, expect, type Page } from '@playwright/test';
import { spawn, type ChildProcess } from 'node:child_process';
import { removeAll, startContainer, startHidden } from './docker';

const bin = process.env.PORTHOLE_BIN ?? '../target/release/porthole';
const port = Number(process.env.PORTHOLE_E2E_AUTH_PORT ?? 7182);
const origin = `http://127.0.0.1:${port}`;
let server: ChildProcess;
let printed = '';

test.beforeAll(async () => {
  server = spawn(bin, ['--listen', `127.0.0.1:${port}`, '--policy', 'policy.toml', '--audit-log', 'audit.log'], {
    stdio: ['ignore', 'pipe', 'ignore'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  printed = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no URL printed; stdout: ${out}`)), 20_000);
    server.stdout!.setEncoding('utf8');
    server.stdout!.on('data', (d: string) => {
      out += d;
      const m = out.match(/^Porthole is listening on (\S+)\n/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    server.on('exit', (code) => reject(new Error(`server exited (${code}) before printing its URL`)));
  });
});

test.afterAll(() => {
  server?.kill('SIGTERM');
});

test.afterEach(() => removeAll());

const picker = (page: Page, name: string) => page.locator(`button.container[data-name="${name}"]`);

test('the printed link signs in with an HttpOnly SameSite=Strict cookie and leaves the address bar', async ({ page, context }) => {
  const allowed = startContainer('login');
  const hidden = startHidden('login');
  expect(printed).toMatch(new RegExp(`^${origin}/\\?token=[A-Za-z0-9]{43}$`));
  const token = new URL(printed).searchParams.get('token')!;

  await page.goto(printed);
  await expect(page).toHaveURL(`${origin}/`);
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await expect(page.getByTestId('user')).toHaveText('local');
  expect(page.url()).not.toContain(token);

  const session = (await context.cookies(origin)).find((c) => c.name === 'porthole_session');
  expect(session, 'session cookie').toBeTruthy();
  expect(session!.httpOnly).toBe(true);
  expect(session!.sameSite).toBe('Strict');
  expect(session!.value).not.toContain(token);
  // Page scripts cannot read it.
  expect(await page.evaluate(() => document.cookie)).not.toContain('porthole_session');

  // The policy hides porthole-hidden-*: not in the picker, not in the API the page can call.
  await expect(picker(page, allowed)).toBeVisible();
  await expect(picker(page, hidden)).toHaveCount(0);
  const names: string[] = await page.evaluate(async () =>
    (await (await fetch('/api/v1/containers')).json()).map((c: { name: string }) => c.name),
  );
  expect(names).toContain(allowed);
  expect(names).not.toContain(hidden);

  // And the session works for terminals.
  await picker(page, allowed).click();
  await expect.poll(() => page.evaluate(() => (window as any).porthole.screen(0) ?? '')).toMatch(/[#$]$/m);
  await page.keyboard.type('echo signed-in-$((40+2))');
  await page.keyboard.press('Enter');
  await expect.poll(() => page.evaluate(() => (window as any).porthole.screen(0) ?? '')).toMatch(/^signed-in-42$/m);
});

test('without the link the page asks for a token, refuses a wrong one and accepts the right one', async ({ page, context }) => {
  await page.goto(`${origin}/`);
  const form = page.getByTestId('signin');
  await expect(form).toBeVisible();
  await expect(page.getByTestId('connection')).toHaveText('signed out');

  await page.getByTestId('token-input').fill('not-the-token-at-all');
  await form.getByRole('button', { name: 'Sign in' }).click();
  await expect(form.getByRole('alert')).toContainText('wrong access token');
  expect((await context.cookies(origin)).find((c) => c.name === 'porthole_session')).toBeFalsy();

  await page.getByTestId('token-input').fill(new URL(printed).searchParams.get('token')!);
  await form.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await expect(form).toHaveCount(0);
  const session = (await context.cookies(origin)).find((c) => c.name === 'porthole_session');
  expect(session?.httpOnly).toBe(true);

  // Signing out ends that session on the server, not just in this browser.
  await page.getByTestId('sign-out').click();
  await expect(page.getByTestId('signin')).toBeVisible();
  expect((await context.cookies(origin)).find((c) => c.name === 'porthole_session')).toBeFalsy();
  const replayed = await fetch(`${origin}/api/v1/whoami`, { headers: { cookie: `porthole_session=${session!.value}` } });
  expect(replayed.status).toBe(401);
});

test('a wrong token in the link is refused with a readable page, and no cookie', async ({ page, context }) => {
  const res = await page.goto(`${origin}/?token=guessing-the-token-0000`);
  expect(res?.status()).toBe(401);
  await expect(page.getByRole('heading')).toHaveText('Sign-in failed');
  expect(await context.cookies(origin)).toHaveLength(0);
});
