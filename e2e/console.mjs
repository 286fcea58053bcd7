// The console as a person uses it, in Debian's Chromium driven by playwright-core: log in with
// TOTP, rotate a token through its three stages in the modal while the subscriber table fills
// live, then pass a revocation gate that wants another operator's approval and a fresh code.
// Run by crates/velvet-cli/tests/browser.rs, which starts the server and enrols the operators.
// Screenshots of every step go to $SHOTS.
import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";

const url = process.env.VELVET_URL;
const shots = process.env.SHOTS;
const alice = JSON.parse(process.env.ALICE);
const bob = JSON.parse(process.env.BOB);
mkdirSync(shots, { recursive: true });

// RFC 6238 (SHA-1, 6 digits, 30 s) for the step `offset` steps from now.
function totp(secret, offset = 0) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "")) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30) + offset));
  const mac = createHmac("sha1", key).update(counter).digest();
  const at = mac[19] & 15;
  const n = (mac.readUInt32BE(at) & 0x7fffffff) % 1_000_000;
  return String(n).padStart(6, "0");
}

let step = 0;
async function shot(page, name) {
  step += 1;
  await page.screenshot({ path: `${shots}/${String(step).padStart(2, "0")}-${name}.png`, fullPage: true });
}

function expect(cond, message) {
  if (!cond) throw new Error(`expectation failed: ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const problems = [];
async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  // Refused requests (401, 403) are part of the script; a script error is not.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  return page;
}

async function login(page, who, code) {
  await page.goto(`${url}/console`);
  expect(page.url().endsWith("/console/login"), "signed out, the console asks to log in");
  await page.getByLabel("Operator").fill(who.name);
  await page.getByLabel("Password").fill(who.password);
  await page.getByLabel("TOTP code or backup code").fill(code);
  await page.getByRole("button", { name: "Log in" }).click();
}

async function rotate(page, token) {
  await page.goto(`${url}/console/tokens/${token}`);
  await page.getByRole("button", { name: "Rotate…" }).click();
  const dialog = page.locator("dialog#rotation");
  await dialog.waitFor({ state: "visible" });
  await dialog.getByLabel("Reason").fill("browser drill");
  await dialog.getByRole("button", { name: "Start rotation" }).click();
  await page.waitForSelector('dialog#rotation[data-status="awaiting_confirmation"][data-stage="distribute"]');
  return dialog;
}

try {
  // 1. Log in: a wrong code is refused, the right one lets Alice in.
  const a = await newPage();
  await login(a, alice, "000000");
  expect((await a.locator("[role=alert]").textContent()).includes("not valid"), "a wrong code is refused");
  await shot(a, "login-refused");
  await login(a, alice, totp(alice.secret));
  await a.waitForURL(`${url}/console`);
  await a.getByRole("heading", { name: "Tokens" }).waitFor();
  expect((await a.locator("#attention").textContent()).includes("Nothing needs attention"), "all clear at first");
  await shot(a, "tokens");
  await a.getByLabel("Filter").fill("prod");
  expect(await a.locator("#tokens tbody tr:not([hidden])").count() === 1, "the filter keeps the prod token");
  await a.getByLabel("Filter").fill("");

  // 2. Three stages in the modal; the subscriber table fills without a reload.
  let dialog = await rotate(a, "api");
  await a.evaluate(() => { window.__notReloaded = true; });
  expect((await dialog.locator("ol.stages li.current").textContent()).includes("Distribute"), "stage 2 is current");
  await shot(a, "minted-awaiting-distribute");
  await dialog.getByRole("button", { name: "Proceed to distribute" }).click();
  await a.waitForFunction(() => {
    const cells = [...document.querySelectorAll("#subscribers tbody tr td:nth-child(3)")];
    return cells.length === 4 && cells.some((c) => c.textContent !== "verified");
  }).catch(() => {}); // may already be done on a fast machine
  await shot(a, "distributing");
  await a.waitForSelector('dialog#rotation[data-stage="revoke"][data-status="awaiting_confirmation"]');
  const statuses = await dialog.locator("#subscribers tbody tr td:nth-child(3)").allTextContents();
  expect(statuses.length === 4 && statuses.every((s) => s === "verified"), `every subscriber verified: ${statuses}`);
  expect(await a.evaluate(() => window.__notReloaded === true), "the table updated without a reload");
  expect(await dialog.locator("#timeline rect").count() === 4, "one timeline bar per consumer");
  expect((await dialog.locator("#gate-requires").textContent()).includes("No revocation gate"), "no gate on api");
  await shot(a, "distributed-awaiting-revoke");
  await dialog.getByRole("button", { name: "Revoke previous value" }).click();
  await a.waitForSelector('dialog#rotation[data-status="succeeded"]');
  expect((await dialog.locator("ol.stages li.done").count()) === 3, "all three stages done");
  const summary = await dialog.locator("#job-status").textContent();
  expect(summary.includes("4 of 4 consumer(s) verified") && summary.includes("Reason:"), `a finished job says how it went: ${summary}`);
  await shot(a, "revoked");
  // A reload keeps the timeline: each consumer's start comes with the job, not only live.
  const finishedUrl = a.url();
  await a.goto(finishedUrl); // the job's page opens its modal by itself
  await a.waitForFunction(() => document.querySelectorAll("#timeline rect").length === 4);

  // 3. The gated token: approval by another operator, then a fresh code.
  dialog = await rotate(a, "prod-api");
  await dialog.getByRole("button", { name: "Proceed to distribute" }).click();
  await a.waitForSelector('dialog#rotation[data-stage="revoke"][data-status="awaiting_confirmation"]');
  const requires = await dialog.locator("#gate-requires").textContent();
  expect(requires.includes("production") && requires.includes("1 approval"), `the gate says what it needs: ${requires}`);
  await dialog.getByLabel("Your TOTP code").fill(totp(alice.secret, 1));
  await dialog.getByRole("button", { name: "Revoke previous value" }).click();
  await a.waitForFunction(() => document.querySelector("#rotation-error").textContent.includes("approval"));
  await shot(a, "gate-needs-approval");
  const jobUrl = a.url();
  expect(jobUrl.includes("/console/rotations/rot_"), "the modal's job has its own address");

  // Bob logs in by keyboard alone: the fields are labelled and in order, Enter submits.
  const b = await newPage();
  await b.goto(`${url}/console/login`);
  await b.getByLabel("Operator").focus();
  await b.keyboard.type(bob.name);
  await b.keyboard.press("Tab");
  await b.keyboard.type(bob.password);
  await b.keyboard.press("Tab");
  await b.keyboard.type(bob.backup_code);
  await b.keyboard.press("Enter");
  await b.waitForURL(`${url}/console`);
  // Bob's first screen leads with what needs him: the gated revoke, and what its gate wants.
  const attention = await b.locator("#attention").textContent();
  expect(attention.includes("Awaiting a person (1)") && attention.includes("prod-api"), `the home page leads with the paused job: ${attention}`);
  expect(attention.includes("gate `production`") && attention.includes("1 approval"), `it says what the gate needs: ${attention}`);
  await shot(b, "home-needs-attention");
  await b.goto(jobUrl);
  const bobDialog = b.locator("dialog#rotation");
  await b.waitForSelector('dialog#rotation[data-stage="revoke"]');
  await bobDialog.getByLabel("Your TOTP code").fill(totp(bob.secret));
  await bobDialog.getByRole("button", { name: "Approve" }).click();
  await b.waitForFunction(() => document.querySelector("#gate-requires").textContent.includes("Approvals: bob"));
  await shot(b, "bob-approved");

  // A wrong code is refused; the right one passes.
  const right = totp(alice.secret, 1);
  const wrong = String((Number(right) + 1) % 1_000_000).padStart(6, "0");
  await dialog.getByLabel("Your TOTP code").fill(wrong);
  await dialog.getByRole("button", { name: "Revoke previous value" }).click();
  await a.waitForFunction(() => document.querySelector("#rotation-error").textContent.includes("not valid"));
  await shot(a, "gate-wrong-code");
  await dialog.getByLabel("Your TOTP code").fill(right);
  await dialog.getByRole("button", { name: "Revoke previous value" }).click();
  await a.waitForSelector('dialog#rotation[data-status="succeeded"]');
  await shot(a, "gate-passed");

  // 4. The audit page shows the run and a verified chain.
  await a.goto(`${url}/console/audit`);
  expect((await a.locator("#chain").textContent()).startsWith("Chain verified"), "the chain verifies");
  const audit = await a.locator("#audit").textContent();
  expect(audit.includes("rotation.revoke_approved") && audit.includes("rotation"), "the run is in the audit log");
  expect((await a.locator("#security-events").textContent()).includes("gate_denied"), "refusals are security events");
  await shot(a, "audit");

  // 5. The token's schedule and age, and the rotations history with its filters.
  await a.goto(`${url}/console/tokens/api`);
  expect((await a.locator("#schedule").textContent()).includes("every 30d"), "the token page shows its schedule");
  expect((await a.locator("#age").textContent()).includes("of max_age 90d"), "and its age against max_age");
  const next = await a.locator("#next-start").textContent();
  expect(/in (29|30) d/.test(next), `the next start is 30 days after the rotation: ${next}`);
  expect((await a.locator("#consumers").textContent()).includes("not probed"), "and each consumer's health");
  await shot(a, "token-schedule");
  await a.goto(`${url}/console/rotations`);
  expect(await a.locator("#history tbody tr").count() === 2, "both rotations are in the history");
  await a.getByLabel("Token").fill("prod-api");
  await a.getByLabel("Status").selectOption("succeeded");
  await a.getByRole("button", { name: "Filter" }).click();
  await a.waitForURL(/token=prod-api/);
  const tokens = await a.locator("#history tbody tr td:nth-child(2)").allTextContents();
  expect(tokens.length === 1 && tokens[0] === "prod-api", `the filter keeps prod-api's rotation: ${tokens}`);
  await a.getByLabel("Requested by").fill("scheduler");
  await a.getByRole("button", { name: "Filter" }).click();
  await a.waitForURL(/requested_by=scheduler/);
  expect((await a.locator("#history tbody").textContent()).includes("None yet."), "nobody else's jobs");
  await shot(a, "history-filtered");

  // 6. A phone's width: nothing wider than the screen.
  await a.setViewportSize({ width: 390, height: 844 });
  await a.goto(`${url}/console/tokens/prod-api`);
  const overflow = await a.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow <= 1, `no sideways scrolling at 390 px (${overflow} px over)`);
  await shot(a, "phone-token");

  expect(problems.length === 0, `no script errors: ${problems.join("; ")}`);
  console.log(`ok: ${step} screenshots in ${shots}`);
} finally {
  await browser.close();
}
