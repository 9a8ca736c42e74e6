// Three Porthole nodes (cluster mode, a redis-server of this spec's own) behind nginx configured as
// docs/deploy.md says: the page's socket is on a node that does not own its terminal, that node is killed,
// and the screen keeps going, every line once; and a recording made on one node is searched and played
// through another.
import { test, expect } from '@playwright/test';
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TOKEN } from '../playwright.config';
import { expectScreen, picker, screen, type } from './terminal';
import { removeAll, startContainer } from './docker';

const bin = process.env.PORTHOLE_BIN ?? '../target/release/porthole';
// scripts/test.sh clears these ports of servers an interrupted run left.
const REDIS = 7179;
const NODES = [7185, 7186, 7187];
const NGINX = 7188;
const NGINX_BY_ADDRESS = 7189;
const origin = `http://127.0.0.1:${NGINX}`;

const dir = mkdtempSync(join(tmpdir(), 'porthole-e2e-cluster-'));
const children: ChildProcess[] = [];
const nodes = new Map<number, ChildProcess>();

function run(cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: 'ignore', env: { ...process.env, RUST_LOG: 'warn' } });
  children.push(child);
  return child;
}

/** Resolves once something accepts TCP connections on `port`. */
async function listening(port: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on ${port}`);
}

async function answers(url: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    try {
      await fetch(url);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${url} does not answer`);
}

/** The two `nginx` blocks of docs/deploy.md, with this spec's addresses and ports. */
function nginxConf(): string {
  const doc = readFileSync(new URL('../../docs/deploy.md', import.meta.url), 'utf8');
  const blocks = doc.split('```nginx\n').slice(1).map((b) => b.split('```')[0]);
  const include = join(dir, 'porthole_proxy.conf');
  writeFileSync(include, blocks[1]);
  let site = blocks[0]
    .replace('listen 80;', `listen 127.0.0.1:${NGINX};`)
    .replace('listen 81;', `listen 127.0.0.1:${NGINX_BY_ADDRESS};`)
    .replaceAll('/etc/nginx/porthole_proxy.conf', include);
  ['10.0.0.11:7070', '10.0.0.12:7070', '10.0.0.13:7070'].forEach((doc, i) => {
    site = site.replaceAll(doc, `127.0.0.1:${NODES[i]}`);
  });
  const temps = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${dir}/${t};`).join(' ');
  return `daemon off; worker_processes 1; pid ${dir}/nginx.pid; error_log ${dir}/nginx-error.log;
events {}
http { access_log ${dir}/access.log; ${temps}
${site}
}
`;
}

test.beforeAll(async () => {
  run('redis-server', ['--port', `${REDIS}`, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  const secret = join(dir, 'secret');
  writeFileSync(secret, randomBytes(48).toString('base64'), { mode: 0o600 });
  await listening(REDIS);
  NODES.forEach((port, i) => {
    const node = run(bin, [
      ...['--listen', `127.0.0.1:${port}`, '--token', TOKEN, '--policy', 'policy.toml'],
      ...['--audit-log', join(dir, `audit-${i}.log`), '--state-dir', join(dir, `state-${i}`)],
      ...['--cluster-redis', `redis://127.0.0.1:${REDIS}/`, '--node-id', `n${i + 1}`],
      ...['--advertise', `127.0.0.1:${port}`, '--cluster-secret-file', secret, '--cluster-lease-ttl', '3'],
    ]);
    nodes.set(port, node);
  });
  for (const port of NODES) await answers(`http://127.0.0.1:${port}/healthz`);
  writeFileSync(join(dir, 'nginx.conf'), nginxConf());
  run('nginx', ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'nginx-error.log')]);
  await answers(`${origin}/healthz`);
});

test.afterAll(() => {
  removeAll();
  for (const c of children) c.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

/** Pins this browser to the node on `port` (the cookie nginx routes by). */
async function pinTo(context: import('@playwright/test').BrowserContext, port: number) {
  await context.addCookies([{ name: 'porthole_node', value: `127.0.0.1:${port}`, url: origin }]);
}

test('the node the page is on dies; the page goes on through another, every line once', async ({ page, context }, info) => {
  const name = startContainer('cluster');
  // Signed in and the terminal opened on the first node: it owns the terminal.
  await pinTo(context, NODES[0]);
  await page.goto(`${origin}/?token=${TOKEN}`);
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await picker(page, name).click();
  await expect(page.getByTestId('tab')).toHaveCount(1);
  await expectScreen(page, 0, /[#$]$/m);
  await type(page, 'MARK=owned-by-n1; echo opened-$((6*7))');
  await expectScreen(page, 0, /^opened-42$/m);

  // The page comes back on the second node, which relays to the owner: same tab, same shell.
  await pinTo(context, NODES[1]);
  await page.reload();
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await expect(page.getByTestId('tab')).toHaveCount(1);
  await expectScreen(page, 0, /^opened-42$/m);
  await page.locator('.pane:not([hidden]) .xterm').click();
  await type(page, 'echo $MARK-$((2+3))');
  await expectScreen(page, 0, /^owned-by-n1-5$/m);

  // Output flows while the page's node is killed; the page reconnects through nginx to a live node.
  await type(page, 'for i in $(seq 1 40); do echo tick-$i; sleep 0.2; done; echo ticks-done');
  await expectScreen(page, 0, /^tick-5$/m);
  // The page's socket is on the second node (it audits its own sockets' connects), not on the owner.
  expect(readFileSync(join(dir, 'audit-1.log'), 'utf8')).toContain('"action":"connect"');
  const victim = nodes.get(NODES[1])!;
  victim.kill('SIGKILL');
  await expect.poll(() => victim.signalCode).toBe('SIGKILL');
  await expectScreen(page, 0, /^ticks-done$/m);
  await expect(page.getByTestId('connection')).toHaveText('connected');
  const lines = (await screen(page, 0)).split('\n').map((l) => l.trimEnd());
  for (let i = 1; i <= 40; i++) {
    expect(lines.filter((l) => l === `tick-${i}`), `tick-${i} once`).toHaveLength(1);
  }
  await type(page, 'echo $MARK-$((3+4))');
  await expectScreen(page, 0, /^owned-by-n1-7$/m);
  await page.screenshot({ path: info.outputPath('after-node-loss.png') });
});

test('a recording made on one node is found, searched and played through another', async ({ page, context }) => {
  const name = startContainer('cluster-rec');
  // Recorded on the first node, which owns the terminal.
  await pinTo(context, NODES[0]);
  await page.goto(`${origin}/?token=${TOKEN}`);
  await expect(page.getByTestId('connection')).toHaveText('connected');
  await picker(page, name).click();
  await expectScreen(page, 0, /[#$]$/m);
  await type(page, 'echo recorded-on-n1-$((6*7)); sleep 1; echo after-$((2+3)); exit');
  await expectScreen(page, 0, /^recorded-on-n1-42$/m);

  // From here on every request goes to the third node.
  await pinTo(context, NODES[2]);
  let id = '';
  await expect
    .poll(async () => {
      const list = await (await page.request.get(`${origin}/api/v1/recordings?container=${name}`)).json();
      id = list[0]?.state === 'finished' ? list[0].id : '';
      return id === '' ? '' : list[0].node;
    }, { message: 'the recording, finished, listed on n3' })
    .toBe('n1');
  const list = await context.newPage();
  await list.goto(`${origin}/#/recordings`);
  await list.getByTestId('recording-search').fill('recorded-on-n1-42');
  await list.getByTestId('recording-search-go').click();
  const item = list.locator(`[data-testid="recording"][data-id="${id}"]`);
  await expect(item.getByTestId('recording-node')).toHaveText('n1');
  await expect(list.getByTestId('recordings-partial')).toHaveCount(0);
  await item.getByTestId('hit').filter({ hasText: 'recorded-on-n1-42' }).first().click();
  await list.getByTestId('speed').selectOption('4');
  await list.locator('[data-testid="player"] .ap-playback-button').click();
  await expect
    .poll(() => list.locator('[data-testid="player"] .ap-term').innerText(), { message: 'the player plays', timeout: 20_000 })
    .toContain('after-5');
  // The third node served it (and audited the read, naming the node that keeps the file).
  const reads = readFileSync(join(dir, 'audit-2.log'), 'utf8')
    .split('\n')
    .filter((l) => l.includes('"action":"recording.read"') && l.includes(id));
  expect(reads.length).toBeGreaterThan(0);
  expect(reads.every((l) => l.includes('"owner_node":"n1"') && l.includes('"node":"n3"'))).toBe(true);
});
