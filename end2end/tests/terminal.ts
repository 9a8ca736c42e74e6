// Helpers for driving a terminal tab the way a user does, and reading what it shows.
import { expect, type Page } from '@playwright/test';

/** The picker's button for the container `name`. */
export const picker = (page: Page, name: string) => page.locator(`button.container[data-name="${name}"]`);

/** Text on tab `i`'s terminal (scrollback included), read from xterm's buffer. */
export async function screen(page: Page, i: number): Promise<string> {
  return page.evaluate((i) => (window as any).porthole.screen(i) ?? '', i);
}

export async function expectScreen(page: Page, i: number, text: string | RegExp) {
  await expect.poll(() => screen(page, i), { message: `tab ${i} shows ${text}` }).toMatch(text);
}

/** Types a command into the focused terminal. */
export async function type(page: Page, line: string) {
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}
