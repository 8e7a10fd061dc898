// Plays an HLS master playlist with hls.js in Debian's Chromium (playwright-core) and reads
// its captions as a viewer's browser shows them: hls.js must list the subtitle rendition, the
// video element must get a text track with cues once it is selected, and a cue must be on
// screen while playing. Screenshots (one with a caption showing) go to the artifacts
// directory. Prints a JSON summary (the tracks hls.js lists, the cues the browser holds);
// exits non-zero when a check fails.
//
//   node captions-test.mjs MASTER_URL ARTIFACTS_DIR
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [master, artifacts] = process.argv.slice(2);
if (!master || !artifacts) {
  console.error('usage: node captions-test.mjs MASTER_URL ARTIFACTS_DIR');
  process.exit(2);
}
fs.mkdirSync(artifacts, { recursive: true });
const here = path.dirname(fileURLToPath(import.meta.url));
const hlsJs = fs.readFileSync(path.join(here, 'node_modules/hls.js/dist/hls.min.js'));

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>Moments captions check</title>
<style>
  body { margin: 0; background: #111; color: #eee; font: 14px system-ui, sans-serif; }
  video { width: 960px; height: 540px; background: #000; display: block; }
  video::cue { font-size: 28px; }
  #status { padding: 8px 12px; }
</style></head>
<body><video id="v" muted playsinline controls></video><div id="status">loading…</div>
<script src="/hls.js"></script>
<script>
  window.events = { tracks: [], errors: [], fatal: null };
  const video = document.getElementById('v');
  const status = document.getElementById('status');
  const hls = new Hls({ renderTextTracksNatively: true, subtitleDisplay: true });
  window.hls = hls;
  hls.on(Hls.Events.SUBTITLE_TRACKS_UPDATED, (_, d) => {
    window.events.tracks = d.subtitleTracks.map(t => ({ name: t.name, lang: t.lang, url: t.url }));
    if (d.subtitleTracks.length) hls.subtitleTrack = 0;
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    video.play().catch(e => window.events.errors.push('play(): ' + e));
  });
  hls.on(Hls.Events.ERROR, (_, d) => {
    window.events.errors.push(d.type + ': ' + d.details + (d.fatal ? ' (fatal)' : ''));
    if (d.fatal) window.events.fatal = d.details;
  });
  window.textTracks = () => Array.from(video.textTracks).map(t => ({
    kind: t.kind, label: t.label, language: t.language, mode: t.mode,
    cues: Array.from(t.cues || []).map(c => ({ start: c.startTime, end: c.endTime, text: c.text })),
    active: Array.from(t.activeCues || []).map(c => c.text),
  }));
  setInterval(() => {
    const shown = window.textTracks().flatMap(t => t.active);
    status.textContent = 'time ' + video.currentTime.toFixed(1) + ' s · captions: ' +
      (shown.length ? shown.join(' / ') : '(none now)');
  }, 200);
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
const result = { master, checks: {}, tracks: [], text_tracks: [], events: null };
let ok = true;
const check = (name, pass, detail) => { result.checks[name] = { pass, detail }; if (!pass) ok = false; };
try {
  const context = await browser.newContext({ viewport: { width: 960, height: 600 } });
  const tab = await context.newPage();
  tab.on('console', m => { if (m.type() === 'error') (result.console ??= []).push(m.text()); });
  await tab.goto(origin);

  // the rendition is listed, and its cues reach the video element
  let tracks = [], cues = 0;
  const deadline = Date.now() + 45000;
  while (Date.now() < deadline) {
    tracks = await tab.evaluate(() => window.events.tracks);
    cues = await tab.evaluate(() => window.textTracks().reduce((n, t) => n + t.cues.length, 0));
    const fatal = await tab.evaluate(() => window.events.fatal);
    if (fatal || (tracks.length && cues)) break;
    await new Promise(r => setTimeout(r, 250));
  }
  result.tracks = tracks;
  check('subtitle_track_listed', tracks.length > 0, JSON.stringify(tracks));
  check('cues_loaded', cues > 0, `${cues} cues`);

  // a cue is on screen while playing: wait for one to be active, then take the picture
  let shown = [];
  const showDeadline = Date.now() + 30000;
  while (Date.now() < showDeadline) {
    shown = await tab.evaluate(() => window.textTracks().flatMap(t => t.active));
    if (shown.length) break;
    await new Promise(r => setTimeout(r, 100));
  }
  await new Promise(r => setTimeout(r, 300)); // the status line and the cue box catch up
  await tab.screenshot({ path: path.join(artifacts, 'hls-captions.png') });
  check('cue_shown_while_playing', shown.length > 0, JSON.stringify(shown));
  result.text_tracks = await tab.evaluate(() => window.textTracks());
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
