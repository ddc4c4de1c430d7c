// Drives the web console in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core, which never downloads a browser of its own) for tests/console.rs.
//
// Usage: node console.js HTTP_URL MQTT_PORT KEY_ID SECRET SCREENSHOT
// Publishes with mosquitto_pub (as the key: anonymous clients may only read), checks what the
// page shows after each step, prints one line per step passed, exits 1 on the first failure.
'use strict';

const { execFile } = require('node:child_process');
const { chromium } = require('playwright-core');

const [url, port, keyId, secret, screenshot] = process.argv.slice(2);
const TOPIC = 'sensors/kitchen/temperature';
const WAIT = 10000;

function pub(args) {
  return new Promise((resolve) => {
    const all = ['-p', port, '-u', keyId, '-P', secret, ...args];
    execFile('mosquitto_pub', all, { timeout: WAIT }, (err, stdout, stderr) => resolve({ err, stderr }));
  });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const external = [];
    page.on('request', (r) => { if (!r.url().startsWith(url)) external.push(r.url()); });
    page.on('requestfailed', (r) => console.error('request failed: ' + r.method() + ' ' + r.url() + ' ' + r.failure().errorText));
    page.on('response', (r) => { if (r.request().method() !== 'GET') console.error('answer: ' + r.status() + ' ' + r.url()); });
    page.on('console', (m) => console.error('page console: ' + m.text()));
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url + '/');
    await page.locator('#status', { hasText: 'live' }).waitFor({ timeout: WAIT });
    console.log('live');

    const value = page.locator(`#state tr[data-topic="${TOPIC}"] td.value`);
    await pub(['-t', TOPIC, '-r', '-q', '1', '-m', '{"celsius": 21.5, "ts": 1767225600000}']);
    await value.filter({ hasText: '21.5' }).waitFor({ timeout: WAIT });
    const badge = await page.locator(`#state tr[data-topic="${TOPIC}"] td.schema`).textContent();
    console.log('shows ' + (await value.textContent()) + ' badge ' + badge);

    await pub(['-t', TOPIC, '-r', '-q', '1', '-m', '{"celsius": 22, "ts": 1767225660000}']);
    await value.filter({ hasText: '"celsius":22' }).waitFor({ timeout: WAIT });
    console.log('updates ' + (await value.textContent()));

    await pub(['-V', 'mqttv5', '-t', TOPIC, '-r', '-q', '1', '-m', '{"celsius": "warm", "ts": 1767225720000}']);
    const rejection = page.locator('#rejections tbody tr', { hasText: '/celsius' });
    await rejection.first().waitFor({ timeout: WAIT });
    const cells = await rejection.first().locator('td').allTextContents();
    console.log('rejection ' + cells.slice(1).join(' | '));

    // Writing without a key is refused in the page; with the key it goes through.
    await page.fill('#publish-topic', 'sensors/hall/temperature');
    await page.fill('#publish-value', '{"celsius": 19, "ts": 1767225780000}');
    await page.click('#publish-form button');
    await page.locator('#publish-result.err').waitFor({ timeout: WAIT });
    console.log('anonymous write: ' + (await page.textContent('#publish-result')));
    await page.fill('#key', keyId + ':' + secret);
    await page.click('#key-form button[type=submit]');
    await page.locator('#status', { hasText: 'live' }).waitFor({ timeout: WAIT });
    await page.click('#publish-form button');
    await page.locator('#publish-result.ok, #publish-result.err').waitFor({ timeout: WAIT });
    if (await page.locator('#publish-result.err').count()) {
      throw new Error('keyed write refused: ' + (await page.textContent('#publish-result')));
    }
    const hall = page.locator('#state tr[data-topic="sensors/hall/temperature"] td.value');
    await hall.filter({ hasText: '19' }).waitFor({ timeout: WAIT });
    console.log('keyed write: ' + (await hall.textContent()));

    // Registering a schema through the page (the key has the admin role): sensors/+ wants an
    // object, so the retained "here" of the test's subscriber (sensors/console-watcher) is one
    // value it would reject.
    await page.fill('#schema-filter', 'sensors/+');
    await page.fill('#schema-document', '{"type": "object"}');
    await page.click('#schema-form button');
    await page.locator('#schema-result.ok, #schema-result.err').waitFor({ timeout: WAIT });
    console.log('schema write: ' + (await page.textContent('#schema-result')));
    const rejects = page.locator('#schemas tr[data-filter="sensors/+"] td.invalid');
    await rejects.filter({ hasText: '1' }).waitFor({ timeout: WAIT });
    console.log('schema sensors/+ rejects ' + (await rejects.textContent()));

    await page.locator('#clients tbody tr').first().waitFor({ timeout: WAIT });
    console.log('clients listed');
    await page.screenshot({ path: screenshot, fullPage: true });
    if (external.length) throw new Error('requests left the broker: ' + external.join(', '));
    if (errors.length) throw new Error('page errors: ' + errors.join('; '));
    console.log('done');
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
