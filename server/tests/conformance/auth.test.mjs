// Conformance of authentication and transport security with the official JavaScript Socket.IO client:
// the refusals a third-party client sees (connect_error `<code>: <message>`), a cross-site origin, and
// Socket.IO over TLS (wss and https polling) with the server's own certificate.
//
// Run from this directory:  npm ci && node --test   (see socketio.test.mjs for what it needs)

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';

const execFileP = promisify(execFile);
const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(HERE, process.env.PORTHOLE_BIN ?? '../../../target/debug/porthole');
const FIXTURES = path.resolve(HERE, '../fixtures');
const IMAGE = process.env.PORTHOLE_CONF_IMAGE ?? 'porthole-test/bash:2';
const WAIT_MS = 20_000;

const servers = [];
const containers = [];

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Starts `porthole` with `args`; resolves with the base URL and the token of the printed link. */
async function startServer(args = []) {
  const proc = spawn(BIN, ['--listen', '127.0.0.1:0', '--audit-log', '/dev/null', ...args], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  servers.push(proc);
  const printed = await withTimeout(
    new Promise((resolve, reject) => {
      let out = '';
      proc.stdout.setEncoding('utf8');
      proc.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/^Porthole is listening on (\S+)\n/);
        if (m) resolve(m[1]);
      });
      proc.on('exit', (code) => reject(new Error(`server exited (${code})`)));
    }),
    WAIT_MS,
    'the server to print its URL',
  );
  const url = new URL(printed);
  return { base: `${url.protocol}//${url.host}`, port: url.port, token: url.searchParams.get('token') };
}

/** Connects; resolves `{ socket, hello }` or rejects with the connect_error. */
function connect(url, opts) {
  const socket = io(url, { reconnection: false, forceNew: true, ...opts });
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.on('hello', (hello) => resolve({ socket, hello }));
      socket.on('connect_error', (e) => {
        socket.close();
        reject(e);
      });
    }),
    WAIT_MS,
    'hello or connect_error',
  );
}

after(async () => {
  for (const p of servers) p.kill('SIGKILL');
  if (containers.length) await execFileP('docker', ['rm', '-f', ...containers]).catch(() => {});
});

describe('authentication with the official socket.io-client', () => {
  test('no token, a wrong token and an expired session are refused with their codes', async () => {
    const { base, token } = await startServer();
    for (const transports of [['websocket'], ['polling']]) {
      await assert.rejects(connect(base, { transports }), (e) => {
        assert.match(e.message, /^unauthenticated: /);
        return true;
      });
      await assert.rejects(connect(base, { transports, auth: { token: 'wrong-token-wrong-token' } }), (e) => {
        assert.equal(e.message, 'unauthenticated: wrong access token');
        return true;
      });
      const { socket, hello } = await connect(base, { transports, auth: { token } });
      assert.equal(hello.protocolVersion, 2);
      socket.close();
    }
  });

  test('a handshake from another site is refused; the served origin is not', async () => {
    const { base, token } = await startServer();
    for (const transports of [['polling'], ['websocket']]) {
      await assert.rejects(
        connect(base, { transports, auth: { token }, extraHeaders: { origin: 'http://evil.example' } }),
        /error/,
      );
      const own = await connect(base, { transports, auth: { token }, extraHeaders: { origin: base } });
      own.socket.close();
    }
  });

  test('TLS: wss and https polling with the server certificate, terminals work', async () => {
    const name = `porthole-conf-tls-${randomBytes(4).toString('hex')}`;
    containers.push(name);
    await execFileP('docker', ['run', '-d', '--init', '--name', name, IMAGE]);
    const { base, port, token } = await startServer([
      '--tls-cert',
      path.join(FIXTURES, 'tls-cert.pem'),
      '--tls-key',
      path.join(FIXTURES, 'tls-key.pem'),
    ]);
    assert.match(base, /^https:/);
    const ca = readFileSync(path.join(FIXTURES, 'tls-cert.pem'));
    const url = `https://localhost:${port}`;
    for (const transports of [['websocket'], ['polling']]) {
      const { socket } = await connect(url, { transports, auth: { token }, ca });
      const started = await socket.timeout(WAIT_MS).emitWithAck('start-terminal', { containerId: name });
      assert.ok(started.terminalId, JSON.stringify(started));
      const seen = new Promise((resolve) => {
        let text = '';
        socket.on('output', ({ data }) => {
          text += Buffer.from(data).toString('utf8');
          if (text.includes('tls-ok-63')) resolve();
        });
      });
      socket.emit('input', { terminalId: started.terminalId, data: 'echo tls-ok-$((7*9))\n' });
      await withTimeout(seen, WAIT_MS, 'output over TLS');
      await socket.timeout(WAIT_MS).emitWithAck('close-terminal', { terminalId: started.terminalId });
      socket.close();
    }
    // Without the certificate the client refuses the server: it really is TLS.
    await assert.rejects(connect(url, { transports: ['websocket'], auth: { token } }));
  });
});
