// A second Porthole server for one spec, signing users in with HS256 JWTs (node's crypto only), with its
// own policy: for tests that need users other than the shared server's "local".
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const bin = process.env.PORTHOLE_BIN ?? '../target/release/porthole';

/** An HS256 JWT (RFC 7519) signed with `secret`. */
export function hs256(claims: Record<string, unknown>, secret: Buffer): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

export class JwtServer {
  readonly origin: string;
  readonly dir: string;
  private readonly secret = randomBytes(48);
  private server?: ChildProcess;

  constructor(readonly port: number) {
    this.origin = `http://127.0.0.1:${port}`;
    this.dir = mkdtempSync(join(tmpdir(), 'porthole-jwt-'));
  }

  /** A token for `sub`, valid for ten minutes. */
  token(sub: string, groups: string[] = []): string {
    return hs256({ sub, groups, exp: Math.floor(Date.now() / 1000) + 600 }, this.secret);
  }

  /** Starts the server with `policy` (TOML) and `extra` flags; resolves once it answers /healthz. */
  async start(policy: string, extra: string[] = []): Promise<void> {
    // A server left by an interrupted run would answer /healthz below and refuse this one's tokens.
    const taken = await fetch(`${this.origin}/healthz`).then(
      () => true,
      () => false,
    );
    if (taken) throw new Error(`${this.origin} is already served by another process (left by an earlier run?)`);
    writeFileSync(join(this.dir, 'secret'), this.secret, { mode: 0o600 });
    writeFileSync(join(this.dir, 'policy.toml'), policy);
    this.server = spawn(
      bin,
      [
        ...['--listen', `127.0.0.1:${this.port}`, '--jwt-secret-file', join(this.dir, 'secret')],
        ...['--policy', join(this.dir, 'policy.toml'), '--audit-log', join(this.dir, 'audit.log')],
        ...['--state-dir', join(this.dir, 'state')],
        ...extra,
      ],
      { stdio: 'ignore', env: { ...process.env, RUST_LOG: 'warn' } },
    );
    const exited = new Promise<never>((_, reject) =>
      this.server!.on('exit', (code) => reject(new Error(`the JWT server exited (${code})`))),
    );
    // Only a start-up failure counts; the exit at stop() must not become an unhandled rejection.
    exited.catch(() => {});
    const up = (async () => {
      // Started within this bound on a loaded 2-core machine, or the test fails.
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        try {
          if ((await fetch(`${this.origin}/healthz`)).ok) return;
        } catch {
          /* not listening yet */
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`the JWT server did not answer on ${this.origin}/healthz`);
    })();
    await Promise.race([up, exited]);
  }

  stop(): void {
    this.server?.kill('SIGTERM');
    rmSync(this.dir, { recursive: true, force: true });
  }
}
