// Conformance test: drives the Porthole server with the official JavaScript Socket.IO client
// (npm `socket.io-client`), so the wire protocol is proven against a third-party implementation.
//
// Run from this directory:  npm ci && node --test
// Needs: a built server (PORTHOLE_BIN, default ../../../target/debug/porthole), a running Docker daemon,
// and the images porthole-test/bash:2 (busybox + bash) and porthole-test/sh:2 (busybox only).
// PORTHOLE_CONF_LOG=1 streams the server's log (stderr) while the tests run.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';

const execFileP = promisify(execFile);
const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(HERE, process.env.PORTHOLE_BIN ?? '../../../target/debug/porthole');
const IMAGE = process.env.PORTHOLE_CONF_IMAGE ?? 'porthole-test/bash:2';
const WAIT_MS = 20_000; // every single wait: a hang fails instead of blocking
const TEST_MS = 90_000; // every test as a whole
const LOG = process.env.PORTHOLE_CONF_LOG === '1';

let server; // { proc, url, token, printed, exited: Promise<{code, signal}>, log: () => string }
const containers = []; // names to `docker rm -f` in after()
const clients = new Set(); // every Client, to close in after()
let container; // { name, id } of the main container

// ---------------------------------------------------------------------------------------------------------------
// Helpers

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function docker(...args) {
  const { stdout } = await execFileP('docker', args, { timeout: WAIT_MS });
  return stdout.trim();
}

async function startContainer(image = IMAGE) {
  const name = `porthole-conf-${randomBytes(6).toString('hex')}`;
  containers.push(name);
  const id = await docker('run', '-d', '--init', '--name', name, image);
  return { name, id };
}

/** `ps -o pid,args` in the container, as [{pid, args}], without the header and the ps itself. */
async function processes(name) {
  const out = await docker('exec', name, 'ps', '-o', 'pid,args');
  return out
    .split('\n')
    .slice(1)
    .map((line) => line.trim().match(/^(\d+)\s+(.*)$/))
    .filter(Boolean)
    .map(([, pid, args]) => ({ pid: Number(pid), args }))
    .filter((p) => !p.args.startsWith('ps '));
}

function startServer() {
  const proc = spawn(BIN, ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-20_000);
    if (LOG) process.stderr.write(d);
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const listening = new Promise((resolve, reject) => {
    proc.on('error', reject);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (d) => {
      stdout += d;
      // The printed URL carries the generated access token.
      const m = stdout.match(/^Porthole is listening on ((http:\/\/127\.0\.0\.1:\d+\/)\?token=([A-Za-z0-9]+))\n/);
      if (m) resolve({ printed: m[1], url: m[2], token: m[3] });
    });
    exited.then(({ code, signal }) =>
      reject(new Error(`server exited before listening (code ${code}, signal ${signal}); stderr:\n${stderr}`)),
    );
  });
  return withTimeout(listening, WAIT_MS, 'the server to print its port').then(({ printed, url, token }) => ({
    proc,
    url,
    token,
    printed,
    exited,
    stdout: () => stdout,
    log: () => stderr,
  }));
}

/** A Socket.IO client that records everything the server sends. */
class Client {
  constructor(opts = {}) {
    const auth = { token: server.token, ...opts.auth };
    this.socket = io(server.url, { reconnection: false, forceNew: true, autoConnect: false, ...opts, auth });
    this.hellos = [];
    this.outputs = new Map(); // terminalId -> [Buffer]
    this.dataTypes = []; // description of each `output` data seen
    this.exits = new Map(); // terminalId -> exit payload
    this.exitCount = new Map(); // terminalId -> how many exit events
    this.requestErrors = [];
    this.connectErrors = [];
    this.listeners = new Set();
    const s = this.socket;
    s.on('hello', (h) => this.#note(() => this.hellos.push(h)));
    s.on('output', (msg) =>
      this.#note(() => {
        const { terminalId, data } = msg;
        this.dataTypes.push(Buffer.isBuffer(data) ? 'Buffer' : Object.prototype.toString.call(data));
        const chunk = Buffer.isBuffer(data)
          ? data
          : data instanceof ArrayBuffer || ArrayBuffer.isView(data)
            ? Buffer.from(data)
            : Buffer.from(String(data));
        // A pipe terminal's stderr is kept apart (`stream: "stderr"`).
        const key = msg.stream === 'stderr' ? `${terminalId}/stderr` : terminalId;
        if (!this.outputs.has(key)) this.outputs.set(key, []);
        this.outputs.get(key).push(chunk);
      }),
    );
    s.on('exit', (e) =>
      this.#note(() => {
        this.exits.set(e.terminalId, e);
        this.exitCount.set(e.terminalId, (this.exitCount.get(e.terminalId) ?? 0) + 1);
      }),
    );
    s.on('request-error', (e) => this.#note(() => this.requestErrors.push(e)));
    s.on('connect_error', (e) => this.#note(() => this.connectErrors.push(e)));
    clients.add(this);
  }

  #note(record) {
    record();
    for (const l of this.listeners) l();
  }

  /** Resolves with pred()'s value once it is truthy; fails after WAIT_MS with `describe()` in the message. */
  waitFor(what, pred, describe = () => '') {
    return new Promise((resolve, reject) => {
      const check = () => {
        let v;
        try {
          v = pred();
        } catch (e) {
          done();
          reject(e);
          return;
        }
        if (v) {
          done();
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}${describe()}`));
      }, WAIT_MS);
      const done = () => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
      check();
    });
  }

  async connect() {
    this.socket.connect();
    await this.waitFor(
      'connect',
      () => this.socket.connected,
      () => `; connect errors: ${this.connectErrors.map((e) => e.message).join(', ')}`,
    );
    return this.waitFor('hello', () => this.hellos[0]);
  }

  output(terminalId) {
    return Buffer.concat(this.outputs.get(terminalId) ?? []);
  }

  text(terminalId) {
    return this.output(terminalId).toString('utf8');
  }

  waitForText(terminalId, needle) {
    return this.waitFor(
      `output containing ${JSON.stringify(needle)}`,
      () => this.text(terminalId).includes(needle),
      () => `; output so far: ${JSON.stringify(this.text(terminalId).slice(-2000))}`,
    );
  }

  waitForExit(terminalId) {
    return this.waitFor(
      `exit of ${terminalId}`,
      () => this.exits.get(terminalId),
      () => `; output so far: ${JSON.stringify(this.text(terminalId).slice(-500))}`,
    );
  }

  waitForRequestError(what, pred) {
    return this.waitFor(
      `request-error ${what}`,
      () => this.requestErrors.find(pred),
      () => `; request-errors so far: ${JSON.stringify(this.requestErrors)}`,
    );
  }

  emitWithAck(event, payload) {
    return this.socket.timeout(WAIT_MS).emitWithAck(event, payload);
  }

  async start(payload) {
    const ack = await this.emitWithAck('start-terminal', { containerId: container.name, ...payload });
    assert.equal(ack.error, undefined, `start-terminal failed: ${JSON.stringify(ack)}`);
    assert.match(ack.terminalId, /\S/);
    return ack;
  }

  /** Types `line` (plus newline) and waits for `expect` in the output. */
  async run(terminalId, line, expect) {
    this.socket.emit('input', { terminalId, data: `${line}\n` });
    await this.waitForText(terminalId, expect);
  }

  close() {
    clients.delete(this);
    this.socket.disconnect();
  }
}

async function client(opts) {
  const c = new Client(opts);
  await c.connect();
  return c;
}

// ---------------------------------------------------------------------------------------------------------------

describe('Porthole with the official socket.io-client', { timeout: 10 * TEST_MS }, () => {
  before(async () => {
    container = await startContainer();
    server = await startServer();
  });

  after(async () => {
    for (const c of [...clients]) c.close();
    if (server && server.proc.exitCode === null && server.proc.signalCode === null) {
      server.proc.kill('SIGTERM');
      try {
        await withTimeout(server.exited, 30_000, 'the server to exit');
      } catch {
        server.proc.kill('SIGKILL');
        await server.exited;
      }
    }
    if (containers.length) {
      await execFileP('docker', ['rm', '-f', ...containers], { timeout: 60_000 }).catch((e) =>
        console.error(`docker rm -f failed: ${e.message}`),
      );
    }
  });

  for (const [label, opts, transport] of [
    ['websocket', { transports: ['websocket'] }, 'websocket'],
    ['polling', { transports: ['polling'], upgrade: false }, 'polling'],
  ]) {
    test(`${label}: hello, default shell is bash -l, typed string is echoed`, { timeout: TEST_MS }, async () => {
      const c = await client(opts);
      try {
        assert.equal(c.socket.io.engine.transport.name, transport);
        const hello = c.hellos[0];
        assert.equal(hello.protocolVersion, 2);
        assert.equal(hello.negotiatedVersion, 1);
        assert.equal(typeof hello.serverVersion, 'string');
        assert.ok(Number.isInteger(hello.maxTerminalsPerSocket) && hello.maxTerminalsPerSocket >= 1, JSON.stringify(hello));
        assert.ok(Number.isInteger(hello.maxInputBytes) && hello.maxInputBytes >= 1, JSON.stringify(hello));

        const ack = await c.start({});
        assert.deepEqual(ack.command, ['bash', '-l']);
        assert.equal(ack.containerId, container.id);
        assert.equal(ack.containerName, container.name);
        assert.ok(Number.isInteger(ack.cols) && Number.isInteger(ack.rows), JSON.stringify(ack));

        await c.run(ack.terminalId, 'echo js-$((6*7))', 'js-42');
        assert.equal(c.socket.io.engine.transport.name, transport, 'the transport changed mid-test');
      } finally {
        c.close();
      }
    });
  }

  test('binary input (a Buffer attachment) is typed into the terminal', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'] });
    try {
      const { terminalId } = await c.start({});
      c.socket.emit('input', { terminalId, data: Buffer.from('echo bin-$((2+2))\n') });
      await c.waitForText(terminalId, 'bin-4');
      // A Uint8Array is sent as an attachment too, and input may ask for an ack.
      const ack = await c.emitWithAck('input', { terminalId, data: new TextEncoder().encode('echo u8-$((3+4))\n') });
      assert.deepEqual(ack, { terminalId });
      await c.waitForText(terminalId, 'u8-7');
    } finally {
      c.close();
    }
  });

  test('output data arrives as a Buffer (binary attachment), over both transports', { timeout: TEST_MS }, async () => {
    for (const opts of [{ transports: ['websocket'] }, { transports: ['polling'], upgrade: false }]) {
      const c = await client(opts);
      try {
        const { terminalId } = await c.start({});
        await c.run(terminalId, 'echo type-check', 'type-check');
        assert.ok(c.dataTypes.length > 0);
        assert.deepEqual(
          [...new Set(c.dataTypes)],
          ['Buffer'],
          `output data types seen over ${opts.transports[0]}: ${[...new Set(c.dataTypes)]}`,
        );
        for (const chunk of c.outputs.get(terminalId)) assert.ok(Buffer.isBuffer(chunk));
      } finally {
        c.close();
      }
    }
  });

  test('resize: the shell sees the new size', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'] });
    try {
      const ack = await c.start({ cols: 100, rows: 30 });
      assert.equal(ack.cols, 100);
      assert.equal(ack.rows, 30);
      const { terminalId } = ack;
      await c.run(terminalId, 'echo first=$(stty size)', 'first=30 100');

      const resized = await c.emitWithAck('resize', { terminalId, cols: 120, rows: 40 });
      assert.deepEqual(resized, { terminalId });
      await c.run(terminalId, 'echo size=$(stty size)', 'size=40 120');

      // Without an ack, too.
      c.socket.emit('resize', { terminalId, cols: 132, rows: 50 });
      await c.run(terminalId, 'echo again=$(stty size)', 'again=50 132');
      assert.deepEqual(c.requestErrors, []);
    } finally {
      c.close();
    }
  });

  test('errors are reported with their codes, and the terminal keeps working', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'] });
    try {
      const { terminalId } = await c.start({});
      await c.run(terminalId, 'echo before-$((1+1))', 'before-2');

      let ack = await c.emitWithAck('start-terminal', { containerId: 42 });
      assert.equal(ack.error?.code, 'invalid_payload', JSON.stringify(ack));
      assert.equal(typeof ack.error.message, 'string');

      ack = await c.emitWithAck('start-terminal', { containerId: 'no-such-container-xyz' });
      assert.equal(ack.error?.code, 'container_not_found', JSON.stringify(ack));

      ack = await c.emitWithAck('start-terminal', { containerId: container.name, command: ['definitely-not-here'] });
      assert.equal(ack.error?.code, 'command_not_found', JSON.stringify(ack));

      c.socket.emit('input', { terminalId: 't-nope', data: 'echo nothing\n' });
      const inputErr = await c.waitForRequestError('input/unknown_terminal', (e) => e.event === 'input');
      assert.equal(inputErr.error?.code, 'unknown_terminal', JSON.stringify(inputErr));
      assert.equal(inputErr.terminalId, 't-nope', JSON.stringify(inputErr));

      ack = await c.emitWithAck('close-terminal', { terminalId: 't-nope' });
      assert.equal(ack.error?.code, 'unknown_terminal', JSON.stringify(ack));

      c.socket.emit('resize', { terminalId, cols: 0, rows: 40 });
      const resizeErr = await c.waitForRequestError('resize/invalid_payload', (e) => e.event === 'resize');
      assert.equal(resizeErr.error?.code, 'invalid_payload', JSON.stringify(resizeErr));

      // With an ack, a failed input is answered in the ack as well.
      ack = await c.emitWithAck('input', { terminalId: 't-nope', data: 'x' });
      assert.equal(ack.error?.code, 'unknown_terminal', JSON.stringify(ack));

      assert.equal(c.exits.size, 0, `unexpected exit: ${JSON.stringify([...c.exits.values()])}`);
      await c.run(terminalId, 'echo still-$((5*5))', 'still-25');
    } finally {
      c.close();
    }
  });

  test('close-terminal: ack, then exit "closed", and no bash left in the container', { timeout: TEST_MS }, async () => {
    // A container of its own, so "no bash left" is not confused by other tests' shells.
    const own = await startContainer();
    const c = await client({ transports: ['websocket'] });
    try {
      const { terminalId, command } = await c.start({ containerId: own.name });
      assert.deepEqual(command, ['bash', '-l']);
      await c.run(terminalId, 'echo pid=$$ ready', 'ready');
      const before = await processes(own.name);
      assert.ok(
        before.some((p) => /(^|\/)bash\b/.test(p.args)),
        `expected a bash in the container before closing: ${JSON.stringify(before)}`,
      );

      const ack = await c.emitWithAck('close-terminal', { terminalId });
      assert.deepEqual(ack, { terminalId });
      // The ack comes after the processes are gone: look right away, without waiting.
      const left = await processes(own.name);
      assert.deepEqual(
        left.filter((p) => /(^|\/)bash\b/.test(p.args)),
        [],
        `bash still running after the close-terminal ack: ${JSON.stringify(left)}`,
      );

      const exit = await c.waitForExit(terminalId);
      assert.equal(exit.reason, 'closed', JSON.stringify(exit));
      assert.ok(exit.exitCode === null || Number.isInteger(exit.exitCode), JSON.stringify(exit));

      // The terminal is gone: input to it is refused.
      const again = await c.emitWithAck('input', { terminalId, data: 'echo x\n' });
      assert.equal(again.error?.code, 'unknown_terminal', JSON.stringify(again));
      assert.equal(c.exitCount.get(terminalId), 1, 'exactly one exit event');
    } finally {
      c.close();
    }
  });

  test('UTF-8 output is delivered byte for byte', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'] });
    try {
      const { terminalId } = await c.start({
        command: ['sh', '-c', "i=0; while [ $i -lt 5000 ]; do printf 'é€😀'; i=$((i+1)); done"],
      });
      const exit = await c.waitForExit(terminalId);
      assert.equal(exit.reason, 'exited', JSON.stringify(exit));
      assert.equal(exit.exitCode, 0, JSON.stringify(exit));
      const got = c.output(terminalId);
      const want = Buffer.from('é€😀'.repeat(5000));
      assert.equal(got.length, want.length, `byte count (${c.outputs.get(terminalId)?.length ?? 0} chunks)`);
      assert.ok(got.equals(want), 'bytes differ');
    } finally {
      c.close();
    }
  });

  test('REST: healthz, containers, and a terminal by id', { timeout: TEST_MS }, async () => {
    const get = async (p, init) => {
      const headers = { authorization: `Bearer ${server.token}` };
      const res = await fetch(new URL(p, server.url), { ...init, headers, signal: AbortSignal.timeout(WAIT_MS) });
      const body = res.status === 204 ? null : await res.json();
      return { status: res.status, body };
    };
    const health = await get('/healthz');
    assert.equal(health.status, 200);
    assert.equal(health.body.status, 'ok');
    assert.equal(health.body.protocolVersion, 2);

    const list = await get('/api/v1/containers');
    assert.equal(list.status, 200);
    const mine = list.body.find((x) => x.name === container.name);
    assert.ok(mine, `${container.name} not listed`);
    assert.equal(mine.id, container.id);
    assert.equal(mine.state, 'running');

    const c = await client({ transports: ['websocket'] });
    try {
      const { terminalId } = await c.start({});
      const info = await get(`/api/v1/terminals/${encodeURIComponent(terminalId)}`);
      assert.equal(info.status, 200);
      assert.equal(info.body.terminalId, terminalId);
      assert.equal(info.body.containerName, container.name);

      const del = await get(`/api/v1/terminals/${encodeURIComponent(terminalId)}`, { method: 'DELETE' });
      assert.equal(del.status, 204);
      const exit = await c.waitForExit(terminalId);
      assert.equal(exit.reason, 'closed', JSON.stringify(exit));

      const gone = await get(`/api/v1/terminals/${encodeURIComponent(terminalId)}`);
      assert.equal(gone.status, 404);
      assert.equal(gone.body.error?.code, 'unknown_terminal', JSON.stringify(gone.body));
    } finally {
      c.close();
    }
  });

  test('pipe terminal: binary in (Buffer attachments), stdin eof ends cat, stderr apart', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'] });
    const ack = await c.start({ command: ['sh', '-c', 'cat; echo done >&2; exit 7'], tty: false });
    assert.equal(ack.tty, false, JSON.stringify(ack));
    const { terminalId } = ack;
    // Every byte value, 0x1e among them, in events of at most the input limit, each acked once written.
    const bytes = randomBytes(300_000);
    for (let i = 0; i < bytes.length; i += 65536) {
      const a = await c.emitWithAck('input', { terminalId, data: bytes.subarray(i, i + 65536), offset: i });
      assert.deepEqual(a, { terminalId });
    }
    assert.deepEqual(await c.emitWithAck('input', { terminalId, eof: true, offset: bytes.length }), { terminalId });
    const exit = await c.waitForExit(terminalId);
    assert.deepEqual([exit.exitCode, exit.reason], [7, 'exited']);
    assert.ok(c.output(terminalId).equals(bytes), 'stdout is the input, byte for byte');
    assert.equal(c.text(`${terminalId}/stderr`), 'done\n');
    c.close();
  });

  test('pipe terminal: input offsets drop what was accepted; no resize, no eof on a tty', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'] });
    const { terminalId } = await c.start({ command: ['cat'], tty: false });
    assert.deepEqual(await c.emitWithAck('input', { terminalId, data: 'abc', offset: 0 }), { terminalId });
    // A resend overlapping what was accepted adds only the new bytes.
    assert.deepEqual(await c.emitWithAck('input', { terminalId, data: 'bcdef', offset: 1 }), { terminalId });
    const ahead = await c.emitWithAck('input', { terminalId, data: 'x', offset: 99 });
    assert.equal(ahead.error?.code, 'invalid_payload', JSON.stringify(ahead));
    const resize = await c.emitWithAck('resize', { terminalId, cols: 100, rows: 30 });
    assert.equal(resize.error?.code, 'invalid_payload', JSON.stringify(resize));
    const watcher = await client({ transports: ['websocket'] });
    const attached = await watcher.emitWithAck('attach-terminal', { terminalId, since: 0 });
    assert.deepEqual([attached.tty, attached.inputOffset], [false, 6], JSON.stringify(attached));
    watcher.close();
    await c.emitWithAck('input', { terminalId, eof: true, offset: 6 });
    const late = await c.emitWithAck('input', { terminalId, data: 'z' });
    assert.equal(late.error?.code, 'invalid_payload', JSON.stringify(late));
    await c.waitForExit(terminalId);
    assert.equal(c.text(terminalId), 'abcdef');
    const tty = await c.start({});
    const eof = await c.emitWithAck('input', { terminalId: tty.terminalId, eof: true });
    assert.equal(eof.error?.code, 'invalid_payload', JSON.stringify(eof));
    c.close();
  });

  test('auth.encoding "base64": data travels as base64 strings both ways', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'], auth: { encoding: 'base64' } });
    const pieces = [];
    c.socket.on('output', (m) => {
      assert.equal(typeof m.data, 'string');
      pieces.push(Buffer.from(m.data, 'base64'));
    });
    const { terminalId } = await c.start({ command: ['cat'], tty: false });
    // The limit counts the decoded bytes: 64 KiB of them, as 87 KiB of base64.
    const bytes = randomBytes(65_536);
    assert.deepEqual(
      await c.emitWithAck('input', { terminalId, data: bytes.toString('base64'), eof: true }),
      { terminalId },
    );
    await c.waitForExit(terminalId);
    assert.ok(Buffer.concat(pieces).equals(bytes));
    const bad = await c.emitWithAck('input', { terminalId: (await c.start({})).terminalId, data: '%%%' });
    assert.equal(bad.error?.code, 'invalid_payload', JSON.stringify(bad));
    c.close();
    const refused = new Client({ transports: ['websocket'], auth: { encoding: 'hex' } });
    await assert.rejects(refused.connect());
    assert.match(refused.connectErrors[0]?.message ?? '', /^invalid_payload: auth.encoding/);
    refused.close();
  });

  test('SIGTERM: open terminals get exit "server_shutdown", the server exits 0', { timeout: TEST_MS }, async () => {
    const c = await client({ transports: ['websocket'] });
    const { terminalId } = await c.start({});
    await c.run(terminalId, 'echo last-$((8*8))', 'last-64');

    server.proc.kill('SIGTERM');
    const { code, signal } = await withTimeout(server.exited, 30_000, 'the server to exit after SIGTERM');
    assert.equal(signal, null);
    assert.equal(code, 0, `server exit code; log tail:\n${server.log().slice(-4000)}`);
    assert.equal(server.stdout(), `Porthole is listening on ${server.printed}\n`, 'exactly one line on stdout');

    const exit = await c.waitForExit(terminalId);
    assert.equal(exit.reason, 'server_shutdown', JSON.stringify(exit));
    c.close();
  });
});
