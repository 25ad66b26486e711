// The JSON-lines RPC over stdio that run.mjs (Chromium) and run_firefox.mjs (Firefox ESR)
// serve for tests/browser/driver.py; each gives `serve` its own way to open and close a page.
//
// Each stdin line is a command {id, cmd, ...}; each stdout line answers one:
// {id, ok: true, result} or {id, ok: false, error}. Page console output goes to stderr.
// Commands: open {page, url, width?, height?, touch?}, eval {page, expr},
// wait {page, expr, until?, ms}, fill {page, selector, value}, click {page, selector},
// select {page, selector, value} (a <select>'s option, firing `input` and `change`),
// screenshot {page, path}, close {page}, quit. Each page gets its own browser context
// (its own camera, storage).

import { createInterface } from 'node:readline';

function out(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

// `engine`: {newPage({width, height, touch}) -> page, fill(page, selector, value),
// select(page, selector, value), closePage(page), close()}; pages answer goto, evaluate,
// click, screenshot and on(event).
export async function serve(engine) {
  const pages = new Map();

  function pageOf(name) {
    const page = pages.get(name);
    if (!page) throw new Error(`no page named ${name}`);
    return page;
  }

  const COMMANDS = {
    async open({ page: name, url, width = 1280, height = 800, touch = false }) {
      // `touch`: a phone (touch screen, no hover), where the engine can emulate one.
      const page = await engine.newPage({ width, height, touch: !!touch });
      page.on('console', (msg) => process.stderr.write(`[${name} ${msg.type()}] ${msg.text()}\n`));
      page.on('pageerror', (err) => process.stderr.write(`[${name} pageerror] ${err.stack ?? err}\n`));
      pages.set(name, page);
      await page.goto(url, { timeout: 15_000 });
      return true;
    },
    async eval({ page, expr }) {
      return pageOf(page).evaluate(expr);
    },
    // Poll an expression (it may be a promise: waitForFunction would not await it) until
    // it, or the JS predicate `until` applied to it, is truthy; its value. On timeout the
    // error shows the last value, which says what was still missing.
    async wait({ page, expr, until = 'Boolean', ms = 15_000 }) {
      const deadline = Date.now() + ms;
      const probe = `(async () => { const value = await (${expr}); return { value, ok: !!(${until})(value) }; })()`;
      let last;
      for (;;) {
        try {
          const { value, ok } = await pageOf(page).evaluate(probe);
          last = value;
          if (ok) return value;
        } catch (err) {
          last = `threw ${err.message}`;
        }
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${until} of ${expr}\nlast: ${JSON.stringify(last)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
    async fill({ page, selector, value }) {
      await engine.fill(pageOf(page), selector, value);
      return true;
    },
    async select({ page, selector, value }) {
      await engine.select(pageOf(page), selector, value);
      return true;
    },
    async click({ page, selector }) {
      await pageOf(page).click(selector, { timeout: 5_000 });
      return true;
    },
    async screenshot({ page, path }) {
      await pageOf(page).screenshot({ path, timeout: 10_000 });
      return path;
    },
    async close({ page }) {
      await engine.closePage(pageOf(page));
      pages.delete(page);
      return true;
    },
  };

  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const request = JSON.parse(line);
    if (request.cmd === 'quit') break;
    const command = COMMANDS[request.cmd];
    // Commands run concurrently (a `wait` on one page must not block another page).
    Promise.resolve()
      .then(() => {
        if (!command) throw new Error(`unknown command ${request.cmd}`);
        return command(request);
      })
      .then(
        (result) => out({ id: request.id, ok: true, result: result ?? null }),
        (err) => out({ id: request.id, ok: false, error: String(err?.stack ?? err) }),
      );
  }
  await engine.close();
  process.exit(0);
}
