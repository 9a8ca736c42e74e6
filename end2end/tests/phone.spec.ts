// On-call engineers on phones: at 390x844 the picker is a drawer, the terminal gets the whole width, and a key
// bar offers the keys phone keyboards lack.
import { test, expect } from '@playwright/test';
import { expectScreen, picker, screen, type } from './terminal';
import { signIn } from './auth';
import { removeAll, startContainer } from './docker';

test.use({ viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true });
test.afterEach(() => removeAll());

/** `stty size` prints `rows cols`; the columns of its last answer on tab 0. */
async function sttyCols(page: import('@playwright/test').Page): Promise<number> {
  const answers = [...(await screen(page, 0)).matchAll(/^(\d+) (\d+)$/gm)];
  return answers.length ? Number(answers[answers.length - 1][2]) : 0;
}

test('on a phone the picker is a drawer, the terminal gets the width, and the key bar types what the keyboard lacks', async ({ page }, info) => {
  const name = startContainer('phone');
  await signIn(page);
  await expect(page.getByTestId('connection')).toHaveText('connected');

  // One line of top bar, and the picker tucked away behind a button named "Containers".
  const bar = await page.locator('header.topbar').boundingBox();
  expect(bar!.height).toBeLessThan(48);
  const toggle = page.getByRole('button', { name: 'Containers', exact: true });
  const drawer = page.getByTestId('drawer');
  await expect(toggle).toBeVisible();
  await expect(drawer).toBeHidden();
  await toggle.click();
  await expect(drawer).toBeVisible();
  await expect(toggle).toHaveAttribute('aria-expanded', 'true');
  await page.screenshot({ path: info.outputPath('drawer.png') });

  // Picking a container closes the drawer and opens its shell across the whole width.
  await picker(page, name).click();
  await expect(drawer).toBeHidden();
  await expectScreen(page, 0, /[#$]$/m);
  await type(page, 'stty size');
  await expect.poll(() => sttyCols(page), { message: 'stty size shows the columns' }).toBeGreaterThanOrEqual(40);
  const pane = await page.getByTestId('pane').boundingBox();
  expect(pane!.width).toBeGreaterThan(370);

  // The drawer opens and closes: with the button, and by tapping beside it.
  await toggle.click();
  await expect(drawer).toBeVisible();
  await toggle.click();
  await expect(drawer).toBeHidden();
  await toggle.click();
  await expect(drawer).toBeVisible();
  await page.locator('.drawer-scrim').click({ position: { x: 370, y: 400 } });
  await expect(drawer).toBeHidden();

  // The key bar has every key, named for screen readers.
  const keybar = page.getByTestId('keybar');
  for (const key of ['Esc', 'Tab', 'Ctrl', 'Up', 'Down', 'Left', 'Right', '|']) {
    await expect(keybar.getByRole('button', { name: key, exact: true })).toBeVisible();
  }

  // `|` from the key bar.
  await page.keyboard.type('echo pipe-a ');
  await keybar.getByRole('button', { name: '|', exact: true }).click();
  await type(page, " tr a b");
  await expectScreen(page, 0, /^pipe-b$/m);

  // Ctrl (sticky) then `c` interrupts `sleep`, long before it would end.
  await type(page, 'sleep 30; echo slept-through');
  const ctrl = keybar.getByRole('button', { name: 'Ctrl', exact: true });
  await ctrl.click();
  await expect(ctrl).toHaveAttribute('aria-pressed', 'true');
  await page.keyboard.type('c');
  await expect(ctrl).toHaveAttribute('aria-pressed', 'false');
  await expectScreen(page, 0, /\^C/);
  await type(page, 'echo after-$((40+2))');
  await expectScreen(page, 0, /^after-42$/m);
  expect((await screen(page, 0)).match(/^slept-through$/m)).toBeNull();
  await page.screenshot({ path: info.outputPath('phone-terminal.png') });
});
