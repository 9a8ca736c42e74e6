// The Recordings page: search a transcript, open the player at the hit's moment (asciinema-player: play,
// speed, idle-time compression), follow a live terminal, and never see other users' recordings.
import { test, expect, type Page } from '@playwright/test';
import { expectScreen, picker, type } from './terminal';
import { signIn } from './auth';
import { removeAll, startContainer } from './docker';
import { JwtServer } from './servers';

test.afterEach(() => removeAll());

/** The shared server's recording of the newest terminal in container `name`, once it is in the index. */
async function recordingOf(page: Page, name: string, origin = ''): Promise<any> {
  let found: any;
  await expect
    .poll(async () => {
      const list = await (await page.request.get(`${origin}/api/v1/recordings?container=${name}`)).json();
      found = list[0];
      return found?.id ?? '';
    }, { message: `a recording of ${name}` })
    .not.toBe('');
  return found;
}

async function finished(page: Page, id: string): Promise<void> {
  await expect
    .poll(async () => (await (await page.request.get(`/api/v1/recordings/${id}`)).json()).state, {
      message: `recording ${id} finished`,
    })
    .toBe('finished');
}

/** The text the player shows now. */
const playerText = (page: Page) => page.locator('[data-testid="player"] .ap-term').innerText();

test('a search hit opens the player at its moment, and the player plays the rest', async ({ page }) => {
  const name = startContainer('rec-search');
  await signIn(page);
  await picker(page, name).click();
  await expectScreen(page, 0, /[#$]$/m);
  // A command typed with mistakes corrected by Backspace, as a person types, then later output.
  await page.keyboard.type('echo porthole-e2e-hellp');
  await page.keyboard.press('Backspace');
  await page.keyboard.type('o wrld');
  for (let i = 0; i < 3; i++) await page.keyboard.press('Backspace');
  await page.keyboard.type('orld');
  await page.keyboard.press('Enter');
  await expectScreen(page, 0, /^porthole-e2e-hello world$/m);
  await type(page, 'sleep 3; echo LATER-$((40+2)); exit');
  await expectScreen(page, 0, /^LATER-42$/m);
  const rec = await recordingOf(page, name);
  await finished(page, rec.id);

  const list = await page.context().newPage();
  await list.goto('/#/recordings');
  await list.getByTestId('recording-search').fill('porthole-e2e-hello world');
  await list.getByTestId('recording-search-go').click();
  const hit = list.locator(`[data-testid="recording"][data-id="${rec.id}"] [data-testid="hit"]`).filter({
    hasText: 'echo porthole-e2e-hello world',
  });
  await expect(hit).toHaveCount(1);
  // The corrected spelling is what was on the screen; the typo is not in the transcript.
  await list.getByTestId('recording-search').fill('porthole-e2e-hellp');
  await list.getByTestId('recording-search-go').click();
  await expect(list.getByTestId('recordings-empty')).toBeVisible();
  await list.goBack();
  await hit.click();
  await expect(list).toHaveURL(new RegExp(`#/recordings/${rec.id}\\?t=`));
  // At that moment the command line is complete and the later output has not appeared yet.
  await expect.poll(() => playerText(list), { message: 'the player shows the command line' }).toContain(
    'echo porthole-e2e-hello world',
  );
  expect(await playerText(list)).not.toContain('LATER-42');
  // Faster, with idle time compressed, then play to the end.
  await list.getByTestId('speed').selectOption('4');
  await list.getByTestId('idle').selectOption('1');
  await list.locator('[data-testid="player"] .ap-playback-button').click();
  await expect.poll(() => playerText(list), { message: 'the player plays on', timeout: 20_000 }).toContain('LATER-42');
});

test('a running terminal is followed live from its recording page', async ({ page }) => {
  const name = startContainer('rec-live');
  await signIn(page);
  await picker(page, name).click();
  await expectScreen(page, 0, /[#$]$/m);
  await type(page, 'for i in 1 2 3 4 5 6 7 8 9 10; do echo tick-$i; sleep 1; done');
  const rec = await recordingOf(page, name);
  expect(rec.state).toBe('recording');
  const live = await page.context().newPage();
  await live.goto(`/#/recordings/${rec.id}`);
  await expect(live.getByTestId('live')).toContainText('Live');
  const text = () => live.locator('[data-testid="live-term"] .xterm-rows').innerText();
  await expect.poll(text, { message: 'the live view shows what already ran' }).toContain('tick-1');
  await expect.poll(text, { message: 'and goes on with the terminal', timeout: 20_000 }).toContain('tick-6');
  await type(page, 'exit');
  await expect(live.getByTestId('live')).toContainText('ended', { timeout: 20_000 });
});

test.describe("other users' recordings", () => {
  const jwt = new JwtServer(Number(process.env.PORTHOLE_E2E_REC_PORT ?? 7184));
  test.beforeAll(() =>
    jwt.start(
      '[[rule]]\nsubjects = ["alice", "bob"]\ncontainers = ["porthole-e2e-*"]\ncommands = "any"\nrecord = "output"\n',
    ),
  );
  test.afterAll(() => jwt.stop());

  test('are invisible in the UI: not listed, not found, not played', async ({ browser }) => {
    const name = startContainer('rec-private');
    const alice = await browser.newPage();
    await alice.goto(`${jwt.origin}/?token=${encodeURIComponent(jwt.token('alice'))}`);
    await picker(alice, name).click();
    await expectScreen(alice, 0, /[#$]$/m);
    await type(alice, 'echo alice-private-$((5*5))');
    await expectScreen(alice, 0, /^alice-private-25$/m);
    const rec = await recordingOf(alice, name, jwt.origin);
    await alice.goto(`${jwt.origin}/#/recordings`);
    await expect(alice.locator(`[data-testid="recording"][data-id="${rec.id}"]`)).toBeVisible();

    const bob = await browser.newPage();
    await bob.goto(`${jwt.origin}/?token=${encodeURIComponent(jwt.token('bob'))}`);
    await bob.goto(`${jwt.origin}/#/recordings`);
    await expect(bob.getByTestId('recordings-empty')).toBeVisible();
    await bob.getByTestId('recording-search').fill('alice-private-25');
    await bob.getByTestId('recording-search-go').click();
    await expect(bob.getByTestId('recordings-empty')).toHaveText('No recording matches.');
    await bob.goto(`${jwt.origin}/#/recordings/${rec.id}`);
    await expect(bob.getByTestId('recordings-error')).toContainText(`no recording ${rec.id} exists for you`);
    await expect(bob.getByTestId('player')).toHaveCount(0);
  });
});
