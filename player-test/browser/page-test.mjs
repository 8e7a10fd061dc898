// The page at GET / in Debian's Chromium (playwright-core), as a person uses it:
//   1. a file that is not a video, and one that only pretends to be (readable errors);
//   2. a real clip uploaded with tus-js-client — the server is killed mid-upload (this script
//      prints KILL_SERVER and the caller restarts it) and the page resumes on its own;
//   3. ready → hls.js plays past 3 s, a rung is chosen, the seek-bar thumbnail shows;
//   4. the voice Q&A with Chromium's fake microphone playing ANSWER_WAV: the question audio
//      arrives and plays, the transcript comes back;
//   5. a denied microphone: a clear message and a text answer box that works.
// Screenshots go to ARTIFACTS_DIR. Prints one JSON summary line last; exits 1 when a check fails.
//
//   node page-test.mjs PAGE_URL CLIP NOT_VIDEO FAKE_MP4 ANSWER_WAV ARTIFACTS_DIR
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const [url, clip, notVideo, fakeMp4, answerWav, artifacts] = process.argv.slice(2);
if (!artifacts) {
  console.error('usage: node page-test.mjs PAGE_URL CLIP NOT_VIDEO FAKE_MP4 ANSWER_WAV ARTIFACTS_DIR');
  process.exit(2);
}
fs.mkdirSync(artifacts, { recursive: true });
const baseFlags = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required'];
const checks = {};
const check = (name, pass, detail) => { checks[name] = { pass: !!pass, detail }; };
const shot = async (page, name) => page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
const log = (m) => console.error(`page-test: ${m}`);
// the caller answers KILL_SERVER with RESTARTED on stdin once the server is back
const stdin = readline.createInterface({ input: process.stdin });
const restarted = new Promise((resolve) => stdin.on('line', (l) => l.trim() === 'RESTARTED' && resolve()));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [...baseFlags, '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${answerWav}`],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on('console', (m) => m.type() === 'error' && log(`console: ${m.text()}`));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('who').textContent.startsWith('signed in'), null, { timeout: 15000 });
  check('vendor_scripts_loaded', await page.evaluate(() => !!(window.Hls && window.tus)));

  // 1. bad input
  await page.setInputFiles('#file', notVideo);
  await page.waitForSelector('#upload-error:not([hidden])', { timeout: 10000 });
  const e1 = await page.textContent('#upload-error');
  check('non_video_refused_on_the_page', /not a video/.test(e1), e1);
  await shot(page, 'page-1-not-a-video');
  await page.setInputFiles('#file', fakeMp4);
  await page.waitForSelector('#moment-error:not([hidden])', { timeout: 60000 });
  const e2 = await page.textContent('#moment-error');
  check('fake_video_gets_a_readable_error', /could not be processed/.test(e2), e2);
  await shot(page, 'page-2-not-playable');

  // 2. the real clip, slowed to ~2 MB/s so the server can go away mid-upload
  await page.goto(`${url}?chunk=262144`);
  await page.waitForFunction(() => document.getElementById('who').textContent.startsWith('signed in'));
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 5, downloadThroughput: -1, uploadThroughput: 2_000_000 });
  await page.setInputFiles('#file', clip);
  await page.waitForFunction(() => parseFloat(document.getElementById('upload-bar').style.width) > 15, null, { timeout: 30000 });
  console.log('KILL_SERVER');
  await page.waitForFunction(() => /retrying/.test(document.getElementById('upload-status').textContent), null, { timeout: 30000 });
  await shot(page, 'page-3-connection-lost');
  const before = await page.evaluate(() => parseFloat(document.getElementById('upload-bar').style.width));
  await restarted;
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  await page.waitForSelector('#state.ready', { timeout: 180000 });
  check('resumed_after_the_server_came_back', before > 15 && before < 100, `at ${before}%`);

  // 3. playback
  await page.click('#play');
  await page.waitForFunction(() => document.getElementById('video').currentTime > 3, null, { timeout: 30000 });
  const rung = await page.textContent('#current-rung');
  check('plays_past_3s_with_a_rung_shown', /^\d+p$/.test(rung), rung);
  const options = await page.$$eval('#rung option', (os) => os.map((o) => o.textContent));
  check('rung_selector_lists_the_ladder', options.length >= 3, options);
  await page.selectOption('#rung', '0');
  const seek = await page.$('#seek');
  const box = await seek.boundingBox();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2);
  await page.waitForSelector('#thumb:not([hidden])', { timeout: 5000 }).catch(() => {});
  const thumb = await page.evaluate(() => getComputedStyle(document.getElementById('thumb-img')).backgroundImage);
  check('seek_bar_thumbnail', /thumbs\.jpg/.test(thumb), thumb);
  const poster = await page.evaluate(() => document.getElementById('video').poster);
  check('poster_set', /poster\.jpg$/.test(poster), poster);
  await shot(page, 'page-4-playing');
  await page.mouse.move(0, 0);
  await page.click('#play'); // pause

  // 4. voice Q&A with the fake microphone
  await page.click('#qa-start');
  await page.waitForSelector('#answer-row:not([hidden])', { timeout: 60000 });
  await page.waitForFunction(() => window.moments.played >= 1, null, { timeout: 30000 });
  const q = await page.evaluate(() => ({ ...window.moments, state: undefined }));
  check('question_audio_arrived_and_played', q.audioBytes > 1000 && q.played >= 1, q);
  await shot(page, 'page-5-question');
  await page.click('#answer-record');
  await page.waitForTimeout(5000);
  await page.click('#answer-stop');
  await page.waitForFunction(() => window.moments.transcript !== null, null, { timeout: 60000 });
  const transcript = await page.evaluate(() => window.moments.transcript);
  check('transcript_arrived', transcript && transcript.trim().length > 0, transcript);
  await shot(page, 'page-6-answered');
  const { moment, user } = await page.evaluate(() => ({ moment: window.moments.state.moment, user: window.moments.state.user }));

  // 5. a denied microphone
  const denied = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...baseFlags, '--use-fake-device-for-media-stream', '--deny-permission-prompts'] });
  try {
    const p2 = await denied.newPage({ viewport: { width: 1100, height: 900 } });
    await p2.goto(`${url}?user=${user}&moment=${moment}`);
    await p2.waitForSelector('#state.ready', { timeout: 30000 });
    await p2.click('#qa-start');
    await p2.waitForSelector('#answer-row:not([hidden])', { timeout: 60000 });
    await p2.click('#answer-record');
    await p2.waitForSelector('#text-answer-row:not([hidden])', { timeout: 10000 });
    const msg = await p2.textContent('#mic-error');
    check('denied_mic_message', /microphone is not available \(permission denied\)/.test(msg), msg);
    await shot(p2, 'page-7-mic-denied');
    await p2.fill('#text-answer', 'We celebrated my sister birthday');
    await p2.click('#text-answer-send');
    await p2.waitForFunction(() => window.moments.transcript !== null, null, { timeout: 30000 });
    const typed = await p2.evaluate(() => window.moments.transcript);
    check('typed_answer_accepted', typed === 'We celebrated my sister birthday', typed);
  } finally {
    await denied.close();
  }
  for (const [k, v] of Object.entries(checks)) if (!v.pass) { failed = true; log(`FAILED ${k}: ${JSON.stringify(v.detail)}`); }
  console.log(JSON.stringify({ checks, transcript }));
} catch (e) {
  failed = true;
  log(`error: ${e.stack || e}`);
  console.log(JSON.stringify({ checks, error: String(e) }));
} finally {
  await browser.close();
  stdin.close();
}
process.exit(failed ? 1 : 0);
