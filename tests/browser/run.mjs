// Drives the system Chromium for tests/test_browser.py over the JSON-lines RPC of serve.mjs.
//
// The browser is the Debian `chromium` (no Playwright download): set STAGECAST_CHROMIUM to
// use another binary. The flags below make WebRTC work headless on loopback: fake camera and
// microphone, no permission prompts, loopback ICE candidates, no mDNS obfuscation of them.

import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const executablePath = process.env.STAGECAST_CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--autoplay-policy=no-user-gesture-required',
  '--no-sandbox',
  '--disable-dev-shm-usage',
];

const browser = await chromium.launch({ executablePath, args: ARGS, headless: true, timeout: 30_000 });

await serve({
  async newPage({ width, height, touch }) {
    // `touch`: a phone (touch screen, no hover), as Chromium's mobile emulation gives.
    const context = await browser.newContext({ viewport: { width, height }, isMobile: touch, hasTouch: touch });
    return context.newPage();
  },
  fill: (page, selector, value) => page.fill(selector, value, { timeout: 5_000 }),
  select: (page, selector, value) => page.selectOption(selector, value, { timeout: 5_000 }),
  closePage: (page) => page.context().close(),
  close: () => browser.close(),
});
