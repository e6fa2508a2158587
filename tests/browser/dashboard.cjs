// The dashboard's browser scenarios (tests/tests/dashboard.rs runs them):
// headless Chromium through playwright-core. Arguments come as JSON in
// argv[2]; a failed check exits non-zero with the reason; the answer is the
// last line of output, as JSON.
"use strict";
const { chromium } = require("playwright-core");

const args = JSON.parse(process.argv[2]);
const WAIT = 90_000;

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function signIn(page) {
  await page.goto(`${args.base}/runs`);
  // Not signed in: the page sends the browser to the sign-in form.
  check(page.url().includes("/login"), `expected the sign-in form, got ${page.url()}`);
  if (args.scenario === "runs") await shot(page, "login");
  await page.fill("#token", args.token);
  await Promise.all([page.waitForURL(/\/runs$/), page.click("button[type=submit]")]);
}

async function shot(page, name) {
  await page.screenshot({ path: `${args.screenshots}/${name}.png`, fullPage: true });
}

const lines = (text) => text.split("\n").filter((l) => l.trim() !== "");

const scenarios = {
  // The runs list shows a run that just finished.
  async runs(page) {
    await signIn(page);
    const row = page.locator(`tr[data-run="${args.run}"]`);
    await row.waitFor({ timeout: WAIT });
    const text = await row.innerText();
    check(text.includes(args.status), `run ${args.run}'s row says: ${text}`);
    await shot(page, "runs");
    return { row: text };
  },

  // A running stage's log grows on the page without a reload.
  async liveLog(page) {
    await signIn(page);
    await page.goto(`${args.base}/runs/${args.run}`);
    const selector = `#log-${args.stage} pre`;
    const pre = page.locator(selector);
    check(
      (await pre.getAttribute("data-log-src")) !== null,
      "the running stage's log has no live source"
    );
    // Set on this document only: a reload would lose it.
    await page.evaluate(() => (window.__samePage = true));
    const before = lines(await pre.innerText()).length;
    await page.waitForFunction(
      ([sel, n]) =>
        window.__samePage === true &&
        document.querySelector(sel).textContent.split("\n").filter((l) => l.trim() !== "").length >= n + 3,
      [selector, before],
      { timeout: WAIT, polling: 100 }
    );
    const after = lines(await pre.innerText());
    check(await page.evaluate(() => window.__samePage === true), "the page was reloaded");
    await shot(page, "run-live");
    return { before, after: after.length, last: after[after.length - 1] };
  },

  // The approve button decides a pending promotion; the environments page
  // then shows what it deployed.
  async approve(page) {
    await signIn(page);
    await page.goto(`${args.base}/environments`);
    const pending = page.locator(`.pending-approval[data-run="${args.run}"]`);
    await pending.waitFor({ timeout: WAIT });
    await pending.locator("input[name=comment]").fill("looks good");
    const [answer] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/runs/${args.run}/approve`)),
      pending.locator("button.approve").click(),
    ]);
    await page.waitForLoadState("load");
    check(
      new RegExp(`/runs/${args.run}$`).test(page.url()),
      `approving answered ${answer.status()} and led to ${page.url()}: ${await page.innerText("body")}`
    );
    const approval = await page.locator("section.approval").innerText();
    check(/approved/.test(approval) && approval.includes(args.user), `approval: ${approval}`);
    const deadline = Date.now() + WAIT;
    let shown = "";
    for (;;) {
      await page.goto(`${args.base}/environments`);
      const digest = page.locator(`[id="env-${args.pipeline}-${args.environment}"] code.digest`);
      shown = (await digest.count()) ? await digest.innerText() : "";
      if (shown === args.digest) break;
      check(Date.now() < deadline, `${args.environment} shows digest "${shown}", not ${args.digest}`);
      await page.waitForTimeout(500);
    }
    await shot(page, "environments");
    return { approval, digest: shown };
  },

  // An attempt at script injection through a stage's summary shows as text.
  async xss(page) {
    await signIn(page);
    await page.goto(`${args.base}/runs/${args.run}`);
    await page.waitForLoadState("load");
    const summary = page.locator(`[id="stage-${args.stage}"] td.summary`);
    const text = await summary.innerText();
    check(text.includes(args.text), `the summary shows: ${text}`);
    check(await summary.isVisible(), "the summary is not visible");
    check((await page.evaluate(() => window.__xss)) === undefined, "injected script ran");
    const scripts = await page.evaluate(() =>
      Array.from(document.querySelectorAll("script")).map((s) => s.getAttribute("src"))
    );
    check(
      scripts.length === 1 && scripts[0] === "/assets/dashboard.js",
      `scripts on the page: ${JSON.stringify(scripts)}`
    );
    await shot(page, "run");
    return { summary: text };
  },

  // A pipeline's chart.
  async pipeline(page) {
    await signIn(page);
    await page.goto(`${args.base}/pipelines/${args.pipeline}`);
    const bars = await page.locator("svg.chart rect.bar").count();
    check(bars >= args.runs, `${bars} bars for ${args.runs} runs`);
    await shot(page, "pipeline");
    return { bars };
  },

  // The report opens from a file with the network off, loads nothing else,
  // shows every stage, and shows the injection attempt as text.
  async report(page, context) {
    await context.setOffline(true);
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    await page.goto(`file://${args.file}`);
    await page.waitForLoadState("load");
    for (const stage of args.stages) {
      const row = page.locator(`[id="stage-${stage}"]`);
      check(await row.isVisible(), `stage ${stage} is not shown`);
    }
    const summary = await page.locator(`[id="stage-${args.stage}"] td.summary`).innerText();
    check(summary.includes(args.text), `the summary shows: ${summary}`);
    check((await page.evaluate(() => window.__xss)) === undefined, "injected script ran");
    check((await page.evaluate(() => document.scripts.length)) === 0, "the report has a script");
    const others = requests.filter((u) => u !== `file://${args.file}`);
    check(others.length === 0, `the report fetched: ${others.join(", ")}`);
    await shot(page, "report");
    return { requests };
  },
};

(async () => {
  const browser = await chromium.launch({
    executablePath: args.chromium,
    // Tests run as root in CI, where Chromium's sandbox cannot start.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  const dialogs = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on("dialog", async (d) => {
      dialogs.push(d.message());
      await d.dismiss();
    });
    const run = scenarios[args.scenario];
    check(run, `no scenario ${args.scenario}`);
    const answer = await run(page, context);
    check(dialogs.length === 0, `dialogs opened: ${JSON.stringify(dialogs)}`);
    console.log(JSON.stringify(answer ?? {}));
  } catch (e) {
    console.error(e && e.stack ? e.stack : String(e));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
