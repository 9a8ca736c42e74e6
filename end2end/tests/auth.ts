// Signing the browser in to the shared test server.
import type { Page } from '@playwright/test';
import { TOKEN } from '../playwright.config';

/** Opens the app signed in: the token link sets the session cookie and redirects to `path` without it. */
export async function signIn(page: Page, path = '/'): Promise<void> {
  await page.goto(`${path}?token=${TOKEN}`);
}
