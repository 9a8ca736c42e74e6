// Benchmark client for Porthole driven by the official JavaScript Socket.IO client (npm `socket.io-client`,
// the library the browser UI's protocol is proven against), so the numbers include what a JavaScript client
// pays for Socket.IO framing and binary attachments.
//
//   node bench/js/client.mjs <mode> --url http://127.0.0.1:PORT --token TOKEN --container NAME [options]
//
// Modes (each prints one JSON object on stdout; exit 0 on success, non-zero with a message on stderr):
//   throughput --file PATH   `cat PATH` in a tty, flowControl on, every `output` acked at once with
//                            processed = offset + length. {"bytes","secs","messages","clientCpuSecs"}: secs is
//                            first to last output byte (as the Rust bench measures), clientCpuSecs is this
//                            process's user+system CPU from start-terminal to exit.
//   echo --samples N [--warmup K]
//                            `cat` in a tty; K warm-up keystrokes (default 1), then N keystrokes, each timed
//                            from `input` to the `output` holding its echo. {"samples_ms":[...]}
//   opens --count N          N default shells opened at once on ONE socket (as one browser tab would), each
//                            ready at its start-terminal ack plus first output byte; then all closed at once
//                            with close-terminal acks. {"ready_ms","failed","errors","all_ready_ms","close_ms",
//                            "close_failed"}. 20 s per terminal (and per close).
//
// Connects like the conformance test: websocket transport, auth {token, protocolVersion: 2, clientId}.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { io } from 'socket.io-client';

const WAIT_MS = 60_000; // connect, acks and "no progress" in throughput/echo
const OPEN_TIMEOUT_MS = 20_000; // per terminal in `opens`
const KEYS = 'abcdefghijklmnopqrstuvwxyz';
const MAX_ERRORS = 5;

function usage(msg) {
  if (msg) process.stderr.write(`client.mjs: ${msg}\n`);
  process.stderr.write(
    'usage: node client.mjs <throughput|echo|opens> --url URL --token TOKEN --container NAME\n' +
      '         [--file PATH] [--samples N] [--warmup K] [--count N]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const [mode, ...rest] = argv;
  if (!mode || mode.startsWith('-')) usage('missing mode');
  const opts = {};
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (!a.startsWith('--')) usage(`unexpected argument ${JSON.stringify(a)}`);
    let key = a.slice(2);
    let value;
    const eq = key.indexOf('=');
    if (eq >= 0) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    } else {
      value = rest[++i];
      if (value === undefined) usage(`--${key} needs a value`);
    }
    opts[key] = value;
  }
  for (const k of ['url', 'token', 'container']) if (!opts[k]) usage(`--${k} is required`);
  const int = (k, dflt) => {
    if (opts[k] === undefined) {
      if (dflt === undefined) usage(`--${k} is required for ${mode}`);
      return dflt;
    }
    const n = Number(opts[k]);
    if (!Number.isInteger(n) || n < 0) usage(`--${k} must be a non-negative integer`);
    return n;
  };
  switch (mode) {
    case 'throughput':
      if (!opts.file) usage('--file is required for throughput');
      break;
    case 'echo':
      opts.samples = int('samples');
      opts.warmup = int('warmup', 1);
      break;
    case 'opens':
      opts.count = int('count');
      break;
    default:
      usage(`unknown mode ${JSON.stringify(mode)}`);
  }
  return { mode, opts };
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function ackError(ack) {
  if (ack && ack.error) return `${ack.error.code}: ${ack.error.message}`;
  return null;
}

/** Connects one socket and waits for `hello`. */
async function connect(opts) {
  const socket = io(opts.url, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    autoConnect: false,
    auth: { token: opts.token, protocolVersion: 2, clientId: randomBytes(16).toString('hex') },
  });
  const hello = new Promise((resolve, reject) => {
    socket.once('hello', resolve);
    socket.once('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`)));
    socket.once('disconnect', (reason) => reject(new Error(`disconnected before hello: ${reason}`)));
  });
  socket.connect();
  await withTimeout(hello, WAIT_MS, 'connect and hello');
  return socket;
}

async function startTerminal(socket, opts, extra, timeoutMs = WAIT_MS) {
  const ack = await socket
    .timeout(timeoutMs)
    .emitWithAck('start-terminal', { containerId: opts.container, cols: 200, rows: 50, ...extra });
  const err = ackError(ack);
  if (err) throw new Error(`start-terminal failed: ${err}`);
  if (typeof ack?.terminalId !== 'string') throw new Error(`start-terminal ack without terminalId: ${JSON.stringify(ack)}`);
  return ack;
}

async function closeTerminal(socket, terminalId, timeoutMs = WAIT_MS) {
  const ack = await socket.timeout(timeoutMs).emitWithAck('close-terminal', { terminalId });
  const err = ackError(ack);
  if (err) throw new Error(`close-terminal failed: ${err}`);
}

function failOnRequestError(socket, reject) {
  socket.on('request-error', (e) => reject(new Error(`request-error: ${JSON.stringify(e)}`)));
  socket.on('disconnect', (reason) => reject(new Error(`socket disconnected: ${reason}`)));
}

// ---------------------------------------------------------------------------------------------------------------

async function throughput(opts) {
  const socket = await connect(opts);
  let id = null;
  let bytes = 0;
  let messages = 0;
  let first = null;
  let last = null;
  // Output that socket.io-client hands over before the ack's promise continuation has run (several packets of
  // one TCP read are dispatched synchronously), replayed once the terminal id is known.
  const early = [];
  let started;
  let lastProgress = performance.now();

  const done = new Promise((resolve, reject) => {
    failOnRequestError(socket, reject);
    const onOutput = ({ terminalId, offset, data }) => {
      const now = performance.now();
      if (first === null) first = now;
      last = now;
      lastProgress = now;
      if (offset !== bytes) {
        reject(new Error(`output of ${terminalId} at offset ${offset}, expected ${bytes}`));
        return;
      }
      bytes += data.length;
      messages += 1;
      socket.emit('output-ack', { terminalId, processed: offset + data.length });
    };
    socket.on('output', (msg) => {
      if (id === null) early.push(msg);
      else if (msg.terminalId === id) onOutput(msg);
    });
    socket.on('exit', (e) => {
      if (e.terminalId !== id) return;
      if (e.reason !== 'exited' || (e.exitCode !== null && e.exitCode !== 0)) {
        reject(new Error(`cat ended badly: ${JSON.stringify(e)}`));
      } else resolve();
    });
    const watchdog = setInterval(() => {
      if (performance.now() - lastProgress > WAIT_MS) reject(new Error(`no output for ${WAIT_MS} ms`));
    }, 1000);
    watchdog.unref();
    started = (ack) => {
      id = ack.terminalId;
      for (const msg of early.splice(0)) if (msg.terminalId === id) onOutput(msg);
    };
  });

  const cpu0 = process.cpuUsage();
  const ack = await startTerminal(socket, opts, { command: ['cat', opts.file], flowControl: true });
  if (ack.flowControl !== true) throw new Error(`server did not turn flow control on: ${JSON.stringify(ack)}`);
  started(ack);
  await done;
  const cpu = process.cpuUsage(cpu0);
  socket.disconnect();
  return {
    bytes,
    secs: first === null ? 0 : (last - first) / 1000,
    messages,
    clientCpuSecs: (cpu.user + cpu.system) / 1e6,
  };
}

// ---------------------------------------------------------------------------------------------------------------

async function echo(opts) {
  const socket = await connect(opts);
  let fatal;
  const failed = new Promise((_, reject) => failOnRequestError(socket, reject));
  failed.catch((e) => (fatal = e));
  const ack = await startTerminal(socket, opts, { command: ['cat'] });
  const id = ack.terminalId;
  let waiter = null; // { key, resolve }
  socket.on('output', ({ terminalId, data }) => {
    if (terminalId !== id || waiter === null) return;
    const at = performance.now();
    if (data.includes(waiter.key)) {
      const w = waiter;
      waiter = null;
      w.resolve(at);
    }
  });
  socket.on('exit', (e) => {
    if (e.terminalId === id) fatal ??= new Error(`cat ended: ${JSON.stringify(e)}`);
  });

  const press = async (i) => {
    if (fatal) throw fatal;
    const key = KEYS[i % KEYS.length];
    const echoed = new Promise((resolve) => (waiter = { key: key.charCodeAt(0), resolve }));
    const t0 = performance.now();
    socket.emit('input', { terminalId: id, data: key });
    const at = await withTimeout(Promise.race([echoed, failed]), WAIT_MS, `the echo of ${JSON.stringify(key)}`);
    return at - t0;
  };

  // Ready: the first keystroke's echo proves cat's tty is up (and warms up the JIT and the connection).
  for (let i = 0; i < Math.max(1, opts.warmup); i++) await press(i);
  const samples = [];
  for (let i = 0; i < opts.samples; i++) samples.push(await press(i));
  await closeTerminal(socket, id);
  socket.disconnect();
  return { samples_ms: samples };
}

// ---------------------------------------------------------------------------------------------------------------

async function opens(opts) {
  const socket = await connect(opts);
  const byId = new Map(); // terminalId -> state, once its ack arrived
  const firstOutput = new Map(); // terminalId -> time, for output seen before the ack (should not happen)
  const exited = new Map();
  socket.on('output', ({ terminalId }) => {
    const at = performance.now();
    const st = byId.get(terminalId);
    if (st) st.onOutput(at);
    else if (!firstOutput.has(terminalId)) firstOutput.set(terminalId, at);
  });
  socket.on('exit', (e) => {
    const st = byId.get(e.terminalId);
    if (st) st.onExit(e);
    else exited.set(e.terminalId, e);
  });
  let lost = null;
  socket.on('disconnect', (reason) => (lost = reason));

  const errors = [];
  const note = (msg) => {
    if (errors.length < MAX_ERRORS) errors.push(msg);
  };

  const t0 = performance.now();
  const deadline = t0 + OPEN_TIMEOUT_MS;
  const open = async () => {
    const ack = await startTerminal(socket, opts, {}, OPEN_TIMEOUT_MS);
    const id = ack.terminalId;
    const ready = new Promise((resolve, reject) => {
      const st = {
        onOutput: (at) => {
          st.onOutput = () => {};
          resolve(at);
        },
        onExit: (e) => reject(new Error(`terminal exited before its first output: ${JSON.stringify(e)}`)),
      };
      byId.set(id, st);
      if (firstOutput.has(id)) st.onOutput(firstOutput.get(id));
      if (exited.has(id)) st.onExit(exited.get(id));
    });
    try {
      const left = Math.max(0, deadline - performance.now());
      const at = await withTimeout(ready, left, 'the first output (prompt)');
      return { id, ms: at - t0 };
    } catch (e) {
      e.terminalId = id; // opened, so it must still be closed
      throw e;
    }
  };

  const results = await Promise.allSettled(Array.from({ length: opts.count }, open));
  const readyMs = [];
  const toClose = [];
  let failed = 0;
  for (const r of results) {
    if (r.status === 'fulfilled') {
      readyMs.push(r.value.ms);
      toClose.push(r.value.id);
    } else {
      failed += 1;
      note(r.reason?.message ?? String(r.reason));
      if (r.reason?.terminalId) toClose.push(r.reason.terminalId);
    }
  }
  const allReadyMs = readyMs.length ? Math.max(...readyMs) : null;

  const c0 = performance.now();
  const closes = await Promise.allSettled(toClose.map((id) => closeTerminal(socket, id, OPEN_TIMEOUT_MS)));
  const closeMs = performance.now() - c0;
  let closeFailed = 0;
  for (const r of closes) {
    if (r.status === 'rejected') {
      closeFailed += 1;
      note(r.reason?.message ?? String(r.reason));
    }
  }
  if (lost) note(`socket disconnected: ${lost}`);
  socket.disconnect();
  return {
    ready_ms: readyMs,
    failed,
    errors,
    all_ready_ms: allReadyMs,
    close_ms: closeMs,
    close_failed: closeFailed,
  };
}

// ---------------------------------------------------------------------------------------------------------------

const { mode, opts } = parseArgs(process.argv.slice(2));
const run = { throughput, echo, opens }[mode];
run(opts).then(
  (result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
  },
  (e) => {
    process.stderr.write(`client.mjs ${mode}: ${e?.message ?? e}\n`);
    process.exit(1);
  },
);
