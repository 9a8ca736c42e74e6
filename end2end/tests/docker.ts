// Test containers on the real Docker engine, through the docker CLI (the test bed's, not Porthole's).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export const BASH_IMAGE = process.env.PORTHOLE_TEST_IMAGE_BASH ?? 'porthole-test/bash:2';
export const SH_IMAGE = process.env.PORTHOLE_TEST_IMAGE_SH ?? 'porthole-test/sh:2';

function docker(...args: string[]): string {
  return execFileSync('docker', args, { encoding: 'utf8' }).trim();
}

/** Containers made by this test file; removed by `removeAll` (call it in afterEach/afterAll). */
const made: string[] = [];

export function containerName(what: string): string {
  return `porthole-e2e-${what}-${randomBytes(3).toString('hex')}`;
}

/** Starts a container running `sleep infinity` under docker-init. */
export function startContainer(what: string, image = BASH_IMAGE): string {
  const name = containerName(what);
  made.push(name);
  docker('run', '-d', '--init', '--label', 'porthole.test=e2e', '--name', name, image);
  return name;
}

/** Starts a container the suite's policy (policy.toml) hides from the test user. */
export function startHidden(what: string, image = BASH_IMAGE): string {
  const name = `porthole-hidden-${what}-${randomBytes(3).toString('hex')}`;
  made.push(name);
  docker('run', '-d', '--init', '--label', 'porthole.test=e2e', '--name', name, image);
  return name;
}

export function stopContainer(name: string): void {
  docker('stop', '-t', '1', name);
}

export function createStopped(what: string, image = BASH_IMAGE): string {
  const name = startContainer(what, image);
  stopContainer(name);
  return name;
}

/** Live processes other than init, its `sleep infinity` and the `ps` itself (zombies excluded). */
export function strayProcesses(name: string): string[] {
  const out = docker('exec', name, 'ps', '-o', 'pid,stat,args');
  return out
    .split('\n')
    .slice(1)
    .map((l) => l.trim())
    .filter((l) => {
      const [pid, stat, ...args] = l.split(/\s+/);
      const cmd = args.join(' ');
      return pid !== '1' && !stat.startsWith('Z') && cmd !== 'sleep infinity' && !cmd.startsWith('ps -o');
    });
}

export function removeAll(): void {
  while (made.length) {
    const name = made.pop()!;
    try {
      docker('rm', '-f', name);
    } catch {
      /* already gone */
    }
  }
}
