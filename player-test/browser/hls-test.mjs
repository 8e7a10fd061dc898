// Plays an HLS master playlist with hls.js in Debian's Chromium (driven by playwright-core),
// like a viewer's browser does: playback must start and pass 5 s with no fatal hls.js error,
// and capping the bandwidth must make hls.js switch down a level. Screenshots go to the
// artifacts directory. Prints a JSON summary; exits non-zero when a check fails.
//
//   node hls-test.mjs MASTER_URL ARTIFACTS_DIR
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [master, artifacts] = process.argv.slice(2);
if (!master || !artifacts) {
  console.error('usage: node hls-test.mjs MASTER_URL ARTIFACTS_DIR');
  process.exit(2);
}
fs.mkdirSync(artifacts, { recursive: true });
const here = path.dirname(fileURLToPath(import.meta.url));
const hlsJs = fs.readFileSync(path.join(here, 'node_modules/hls.js/dist/hls.min.js'));

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>Moments hls.js check</title>
<style>
  body { margin: 0; background: #111; color: #eee; font: 14px system-ui, sans-serif; }
  video { width: 960px; height: 540px; background: #000; display: block; }
  #status { padding: 8px 12px; }
</style></head>
<body><video id="v" muted playsinline controls></video><div id="status">loading…</div>
<script src="/hls.js"></script>
<script>
  window.events = { levels: [], switches: [], errors: [], fatal: null };
  const video = document.getElementById('v');
  const status = document.getElementById('status');
  const hls = new Hls({ maxBufferLength: 6, maxMaxBufferLength: 10, abrEwmaDefaultEstimate: 5e6,
                        startLevel: -1, capLevelToPlayerSize: false });
  window.hls = hls;
  hls.on(Hls.Events.MANIFEST_PARSED, (_, d) => {
    window.events.levels = d.levels.map(l => ({ height: l.height, width: l.width, bitrate: l.bitrate, codecs: l.codecs }));
    video.play().catch(e => window.events.errors.push('play(): ' + e));
  });
  hls.on(Hls.Events.LEVEL_SWITCHED, (_, d) => {
    window.events.switches.push({ t: video.currentTime, level: d.level });
  });
  hls.on(Hls.Events.ERROR, (_, d) => {
    window.events.errors.push(d.type + ': ' + d.details + (d.fatal ? ' (fatal)' : ''));
    if (d.fatal) window.events.fatal = d.details;
  });
  setInterval(() => {
    const l = hls.levels[hls.currentLevel];
    status.textContent = 'time ' + video.currentTime.toFixed(1) + ' s · level ' + hls.currentLevel +
      (l ? ' (' + l.width + 'x' + l.height + ', ' + Math.round(l.bitrate / 1000) + ' kbit/s)' : '');
  }, 250);
  hls.loadSource(${JSON.stringify(master)});
  hls.attachMedia(video);
</script></body></html>`;

const server = http.createServer((req, res) => {
  if (req.url === '/hls.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    res.end(hlsJs);
  } else {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
  }
});
await new Promise(r => server.listen(0, '127.0.0.1', r));
const origin = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
});
const result = { master, checks: {}, events: null };
let ok = true;
const check = (name, pass, detail) => { result.checks[name] = { pass, detail }; if (!pass) ok = false; };
try {
  const context = await browser.newContext({ viewport: { width: 960, height: 600 } });
  const tab = await context.newPage();
  tab.on('console', m => { if (m.type() === 'error') (result.console ??= []).push(m.text()); });
  await tab.goto(origin);
  const mse = await tab.evaluate(() => MediaSource.isTypeSupported('video/mp4; codecs="avc1.64001f,mp4a.40.2"'));
  check('mse_h264', mse, 'MediaSource supports H.264/AAC');

  // playback starts and passes 5 s
  let t = 0;
  const deadline = Date.now() + 45000;
  while (Date.now() < deadline) {
    t = await tab.evaluate(() => document.getElementById('v').currentTime);
    const fatal = await tab.evaluate(() => window.events.fatal);
    if (fatal || t > 5) break;
    await new Promise(r => setTimeout(r, 250));
  }
  await tab.screenshot({ path: path.join(artifacts, 'hls-playing.png') });
  check('plays_past_5s', t > 5, `currentTime ${t.toFixed(2)} s`);

  // then the bandwidth is capped: hls.js must switch down
  const before = await tab.evaluate(() => hls.currentLevel);
  const cdp = await context.newCDPSession(tab);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 40, downloadThroughput: 150000, uploadThroughput: 150000,
  });
  // hls.js first decides (the next fragment comes from a lower level), then plays it
  let decided = false, switchedDown = false;
  const capDeadline = Date.now() + 60000;
  while (Date.now() < capDeadline) {
    const now = await tab.evaluate(() => ({ level: hls.currentLevel, next: hls.nextLoadLevel, fatal: window.events.fatal }));
    if (now.fatal) break;
    if (now.next >= 0 && now.next < before) decided = true;
    if (now.level >= 0 && now.level < before) { switchedDown = true; break; }
    await new Promise(r => setTimeout(r, 250));
  }
  result.decided_down = decided;
  await new Promise(r => setTimeout(r, 1000)); // let the status line catch up
  await tab.screenshot({ path: path.join(artifacts, 'hls-after-cap.png') });
  check('switches_down_when_capped', before > 0 && switchedDown,
        `level before cap ${before}, after ${await tab.evaluate(() => hls.currentLevel)}`);
  result.events = await tab.evaluate(() => window.events);
  check('no_fatal_error', !result.events.fatal, result.events.fatal ?? 'none');
} catch (e) {
  check('harness', false, String(e));
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(result, null, 2));
process.exit(ok ? 0 : 1);
