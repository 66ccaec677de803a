// Browser test of the demo page (src/demo/index.html) against a real framegate server.
//
// The test starts the framegate binary on a free loopback port with a random HS256 secret
// and mints tokens with `framegate token`. It drives users in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core) on the page as framegate serves it at `GET /`.
// It also serves src/demo/index.html from a small HTTP server of its own on another port,
// so that the page's `?server=` override and its Content-Security-Policy hashes are tested
// against the file in the tree.
//
// Environment:
//   FRAMEGATE_BIN          framegate binary (default ../../target/release/framegate)
//   CHROMIUM_BIN           Chromium binary (default /usr/bin/chromium)
//   FRAMEGATE_SCREENSHOTS  directory to save screenshots of the chat pages into (optional)

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const testDir = dirname(fileURLToPath(import.meta.url));
const repo = resolve(testDir, "..", "..");
const FRAMEGATE_BIN = resolve(process.env.FRAMEGATE_BIN || join(repo, "target/release/framegate"));
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const SCREENSHOTS = process.env.FRAMEGATE_SCREENSHOTS;
const PAGE_PATH = join(repo, "src/demo/index.html");
const DEMO_MODULE = join(repo, "src/demo/mod.rs");

// Maximum wait for one step (server start, a log entry, a status change), in milliseconds.
const STEP_TIMEOUT_MS = 10_000;

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const secret = randomBytes(48).toString("base64");
const state = {
  server: null,
  serverLog: "",
  serverPort: 0,
  adminPort: 0,
  pageServer: null,
  pageOrigin: "",
  context: null,
  userDataDir: null,
  skipReason: null,
};

// Returns a TCP port that was free on 127.0.0.1 a moment ago.
function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolveConnect) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolveConnect(true);
    });
    socket.once("error", () => resolveConnect(false));
  });
}

function sleep(ms) {
  return new Promise((resolveSleep) => setTimeout(resolveSleep, ms));
}

// Starts framegate and waits until its port accepts connections. Returns a skip reason
// when the kernel or sandbox has no io_uring, and throws on any other failure.
async function startFramegate() {
  if (!existsSync(FRAMEGATE_BIN)) {
    throw new Error(`framegate binary not found at ${FRAMEGATE_BIN}: run ` +
      "`cargo build --release --bin framegate` or set FRAMEGATE_BIN");
  }
  state.serverPort = await freePort();
  state.adminPort = await freePort();
  const child = spawn(
    FRAMEGATE_BIN,
    [
      "serve",
      "--listen",
      `127.0.0.1:${state.serverPort}`,
      "--admin-listen",
      `127.0.0.1:${state.adminPort}`,
      "--workers",
      "2",
    ],
    {
      env: { ...process.env, FRAMEGATE_JWT_SECRET: secret, FRAMEGATE_LOG: "info" },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  state.server = child;
  let exited = null;
  child.stdout.on("data", (chunk) => { state.serverLog += chunk; });
  child.stderr.on("data", (chunk) => { state.serverLog += chunk; });
  child.once("exit", (code, signal) => { exited = { code, signal }; });

  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited !== null) {
      if (exited.code === 1 && /io_uring/i.test(state.serverLog)) {
        return `framegate cannot use io_uring here: ${state.serverLog.trim()}`;
      }
      throw new Error(`framegate exited with ${JSON.stringify(exited)}:\n${state.serverLog}`);
    }
    if (await canConnect(state.serverPort)) {
      return null;
    }
    await sleep(50);
  }
  throw new Error(`framegate did not listen on port ${state.serverPort} within ` +
    `${STEP_TIMEOUT_MS} ms:\n${state.serverLog}`);
}

// Mints a token for `sub` with `framegate token`, signed with `key`.
function mintToken(sub, key = secret) {
  return execFileSync(FRAMEGATE_BIN, ["token", "--sub", sub, "--ttl", "10m"], {
    env: { ...process.env, FRAMEGATE_JWT_SECRET: key },
    encoding: "utf8",
  }).trim();
}

// Reads the Content-Security-Policy that src/demo/mod.rs declares for the page.
function declaredPolicy() {
  const source = readFileSync(DEMO_MODULE, "utf8");
  const match = source.match(/CONTENT_SECURITY_POLICY: &str = "([\s\S]*?)";/);
  assert.ok(match, "CONTENT_SECURITY_POLICY not found in src/demo/mod.rs");
  // Rust string continuation: a backslash, the line feed and the next line's indentation.
  return match[1].replace(/\\\n\s*/g, "");
}

// SHA-256 source expression of the text inside the page's only `<tag>` element.
function inlineHash(page, tag) {
  const match = page.match(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`));
  assert.ok(match, `no <${tag}> element in the page`);
  return `'sha256-${createHash("sha256").update(match[1], "utf8").digest("base64")}'`;
}

// Serves the page at / with the declared policy, its connect-src widened to framegate's
// port (the page server is another origin, and 'self' would block the test connection).
function startPageServer() {
  const page = readFileSync(PAGE_PATH);
  const policy = declaredPolicy()
    .replace("connect-src 'self'", `connect-src ws://127.0.0.1:${state.serverPort}`);
  const server = createServer((request, response) => {
    if (request.method !== "GET" || new URL(request.url, "http://x").pathname !== "/") {
      response.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
      return;
    }
    response.writeHead(200, {
      "Content-Type": "text/html; charset=utf-8",
      "Content-Security-Policy": policy,
      "Cache-Control": "no-store",
    });
    response.end(page);
  });
  return new Promise((resolveServer, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      state.pageServer = server;
      state.pageOrigin = `http://127.0.0.1:${server.address().port}`;
      resolveServer();
    });
  });
}

// Opens the demo page and collects script errors and CSP violations. `from` is "framegate"
// for the page framegate serves at / (same origin), or "page-server" for the test's own copy
// of src/demo/index.html, pointed at framegate with ?server=.
async function openChat(from = "framegate") {
  const page = await state.context.newPage();
  page.problems = [];
  page.on("pageerror", (error) => page.problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") {
      page.problems.push(`console error: ${message.text()}`);
    }
  });
  if (from === "framegate") {
    const response = await page.goto(`http://127.0.0.1:${state.serverPort}/`);
    assert.equal(response.status(), 200, "framegate serves the demo page at /");
    const policy = await response.headerValue("content-security-policy");
    assert.equal(policy, declaredPolicy(), "framegate sends the declared policy");
    return page;
  }
  const server = encodeURIComponent(`ws://127.0.0.1:${state.serverPort}/ws`);
  await page.goto(`${state.pageOrigin}/?server=${server}`);
  return page;
}

// Fills in the token, picks how to send it, connects and waits for `state` in #status.
async function connectAs(page, token, mode, expectedState = "open") {
  await page.fill("#token", token);
  await page.check(mode === "protocol" ? "#mode-protocol" : "#mode-query");
  await page.click("#connect");
  await page.locator(`#status[data-state="${expectedState}"]`)
    .waitFor({ timeout: STEP_TIMEOUT_MS });
}

// Waits for the one log entry matching `selector` and returns its text.
async function logEntry(page, selector) {
  const entry = page.locator(`#log li${selector}`);
  await entry.first().waitFor({ timeout: STEP_TIMEOUT_MS });
  return entry.first().textContent();
}

async function screenshot(page, name) {
  if (!SCREENSHOTS) {
    return;
  }
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

function skipIfUnsupported(t) {
  if (state.skipReason) {
    t.skip(state.skipReason);
    return true;
  }
  return false;
}

before(async () => {
  state.skipReason = await startFramegate();
  if (state.skipReason) {
    return;
  }
  await startPageServer();
  state.userDataDir = mkdtempSync(join(tmpdir(), "framegate-chromium-"));
  state.context = await chromium.launchPersistentContext(state.userDataDir, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 900, height: 900 },
  });
});

after(async () => {
  if (state.context) {
    await state.context.close();
  }
  if (state.userDataDir) {
    rmSync(state.userDataDir, { recursive: true, force: true });
  }
  if (state.pageServer) {
    await new Promise((resolveClose) => state.pageServer.close(resolveClose));
  }
  if (state.server && state.server.exitCode === null) {
    const exited = new Promise((resolveExit) => state.server.once("exit", resolveExit));
    state.server.kill("SIGTERM");
    const killTimer = setTimeout(() => state.server.kill("SIGKILL"), 3_000);
    await exited;
    clearTimeout(killTimer);
  }
});

test("page inline script and style match the hashes in the declared CSP", () => {
  const page = readFileSync(PAGE_PATH, "utf8");
  const policy = declaredPolicy();
  for (const tag of ["script", "style"]) {
    const hash = inlineHash(page, tag);
    assert.ok(
      policy.includes(`${tag}-src ${hash}`),
      `CONTENT_SECURITY_POLICY in src/demo/mod.rs must name ${tag}-src ${hash}; ` +
        `it is: ${policy}`,
    );
  }
});

test("two users exchange messages through the relay", async (t) => {
  if (skipIfUnsupported(t)) {
    return;
  }
  const alice = await openChat();
  const bob = await openChat();
  await connectAs(alice, mintToken("alice"), "query");
  await connectAs(bob, mintToken("bob"), "protocol");
  assert.equal(await alice.textContent("#status"), "connected as alice");
  assert.equal(await bob.textContent("#status"), "connected as bob");

  await alice.fill("#to", "bob");
  await alice.fill("#text", "hello bob");
  await alice.click("#send");
  const received = await logEntry(bob, '[data-kind="received"][data-from="alice"]');
  assert.match(received, /alice → you: hello bob$/);
  const sent = await logEntry(alice, '[data-kind="sent"][data-to="bob"]');
  assert.match(sent, /you → bob: hello bob$/);

  // Bob replies with the Enter key.
  await bob.fill("#to", "alice");
  await bob.fill("#text", "hi alice");
  await bob.press("#text", "Enter");
  const reply = await logEntry(alice, '[data-kind="received"][data-from="bob"]');
  assert.match(reply, /bob → you: hi alice$/);
  assert.equal(await bob.inputValue("#text"), "", "the message box is cleared after sending");

  // The admin listener counts what the pages did.
  const metrics = await (await fetch(`http://127.0.0.1:${state.adminPort}/metrics`)).text();
  const sample = (name) => Number(metrics.match(new RegExp(`^${name} (\\S+)$`, "m"))?.[1]);
  assert.ok(sample('framegate_upgrades_total\\{status="101"\\}') >= 2, metrics);
  assert.ok(sample('framegate_messages_total\\{verdict="accepted"\\}') >= 2, metrics);
  assert.ok(sample("framegate_messages_delivered_total") >= 2, metrics);

  await screenshot(alice, "alice");
  await screenshot(bob, "bob");
  assert.deepEqual(alice.problems, []);
  assert.deepEqual(bob.problems, []);
  await alice.close();
  await bob.close();
});

test("page from another origin reaches framegate and shows an error frame", async (t) => {
  if (skipIfUnsupported(t)) {
    return;
  }
  const alice = await openChat("page-server");
  await connectAs(alice, mintToken("alice"), "protocol");
  await alice.fill("#to", "carol");
  await alice.fill("#text", "are you there?");
  await alice.click("#send");
  const error = await logEntry(alice, '[data-kind="error"][data-code="recipient_offline"]');
  assert.match(error, /error recipient_offline: user "carol" has no open connection \(message m1-/);
  assert.equal(await alice.getAttribute("#status", "data-state"), "open", "still connected");
  await screenshot(alice, "offline-recipient");
  assert.deepEqual(alice.problems, []);
  await alice.close();
});

test("rejected tokens show the failed connection", async (t) => {
  if (skipIfUnsupported(t)) {
    return;
  }
  const wrongKey = randomBytes(48).toString("base64");
  const cases = [
    ["garbage token, query parameter", "not-a-jwt", "query"],
    ["token signed with another key, subprotocol", mintToken("mallory", wrongKey), "protocol"],
  ];
  for (const [name, token, mode] of cases) {
    const page = await openChat();
    await connectAs(page, token, mode, "failed");
    const failure = await logEntry(page, '[data-kind="failure"][data-code="1006"]');
    assert.match(failure, /connection failed \(close code 1006\): the server rejected the upgrade/,
      name);
    assert.equal(await page.textContent("#status"), "connection failed", name);
    assert.equal(await page.isDisabled("#send"), true, `${name}: send stays disabled`);
    assert.equal(await page.isEnabled("#connect"), true, `${name}: connect is enabled again`);
    await screenshot(page, `rejected-${mode}`);
    // Chromium reports the failed handshake itself as a console error; nothing else may fail.
    const unexpected = page.problems.filter((problem) => !/WebSocket connection to/.test(problem));
    assert.deepEqual(unexpected, [], name);
    await page.close();
  }
});

test("disconnect closes with code 1000", async (t) => {
  if (skipIfUnsupported(t)) {
    return;
  }
  const page = await openChat();
  await connectAs(page, mintToken("dora"), "query");
  await page.click("#disconnect");
  await page.locator('#status[data-state="closed"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  const closed = await logEntry(page, '[data-kind="closed"][data-code="1000"]');
  assert.match(closed, /closed with code 1000/);
  assert.equal(await page.isEnabled("#connect"), true);
  assert.deepEqual(page.problems, []);
  await page.close();
});

test("server override naming another host is ignored", async (t) => {
  if (skipIfUnsupported(t)) {
    return;
  }
  const page = await state.context.newPage();
  const override = encodeURIComponent("ws://attacker.invalid:9/ws");
  await page.goto(`${state.pageOrigin}/?server=${override}`);
  const own = `ws://${new URL(state.pageOrigin).host}/ws`;
  assert.equal(await page.textContent("#server"), own);
  const warning = await logEntry(page, '[data-kind="failure"]');
  assert.match(warning, /ignored \?server=: the host must be 127\.0\.0\.1/);
  await page.close();
});
