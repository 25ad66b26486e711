// Drives Debian's Firefox ESR for tests/test_firefox.py over the JSON-lines RPC of serve.mjs,
// through npm puppeteer-core and WebDriver BiDi (no browser download).
//
// STAGECAST_FIREFOX names another binary. The preferences below make WebRTC work headless on
// loopback: Firefox's fake camera and microphone, no permission prompts, loopback ICE
// candidates without mDNS obfuscation, and media that plays without a user gesture.

import puppeteer from 'puppeteer-core';
import { serve } from './serve.mjs';

const executablePath = process.env.STAGECAST_FIREFOX || '/usr/bin/firefox-esr';
const PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
};

const browser = await puppeteer.launch({
  browser: 'firefox',
  protocol: 'webDriverBiDi',
  executablePath,
  headless: true,
  extraPrefsFirefox: PREFS,
  timeout: 30_000,
});

await serve({
  async newPage({ width, height }) {
    // Firefox has no mobile emulation over BiDi: `touch` only sizes the window.
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    await page.setViewport({ width, height });
    return page;
  },
  fill: (page, selector, value) => page.locator(selector).setTimeout(5_000).fill(value),
  select: (page, selector, value) => page.select(selector, value),
  closePage: (page) => page.browserContext().close(),
  close: () => browser.close(),
});
