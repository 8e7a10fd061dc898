// The Moments page: upload (tus-js-client), live progress (SSE), adaptive playback (hls.js)
// with a rung selector and seek-bar thumbnails, and the voice Q&A (WebSocket + MediaRecorder).
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { token: null, user: null, moment: null, upload: null, hls: null, ws: null, cues: [] };
// what the browser test reads
window.moments = { state, played: 0, audioBytes: 0, sentences: 0, transcript: null, errors: [] };

function show(el, on = true) { $(el).hidden = !on; }
function banner(msg) { $('banner').textContent = msg; show('banner', !!msg); }
function fail(el, msg) { $(el).textContent = msg; show(el, !!msg); if (msg) window.moments.errors.push(msg); }
function fmtTime(s) {
  if (!isFinite(s)) return '0:00';
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
}
function fmtBytes(n) {
  return n > 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} kB`;
}

// ---- auth: a development token (only while the server signs with its local dev key) ----
async function signIn() {
  const saved = JSON.parse(localStorage.getItem('moments.token') || 'null');
  const wanted = params.get('user');
  if (saved && saved.expires > Date.now() + 60_000 && (!wanted || wanted === saved.user)) {
    Object.assign(state, { token: saved.token, user: saved.user });
  } else {
    const user = wanted || `web-${Math.random().toString(36).slice(2, 8)}`;
    const r = await fetch('/ui/dev-token', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const t = prompt(`${body.error || 'No development token'}.\nPaste a token (JWT) to continue:`);
      if (!t) throw new Error('no token: the page cannot upload without one');
      Object.assign(state, { token: t.trim(), user: 'you' });
    } else {
      Object.assign(state, { token: body.token, user: body.user });
      localStorage.setItem('moments.token', JSON.stringify({
        token: body.token, user: body.user, expires: Date.now() + body.expires_in * 1000,
      }));
    }
  }
  $('who').textContent = `signed in as ${state.user} (development token)`;
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${state.token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  if (!r.ok) throw new Error((json && (json.error || json.message)) || `${r.status} ${text.slice(0, 200)}`);
  return json;
}
const ticket = async () => (await api('POST', '/v1/tickets')).ticket;

// ---- upload ----
function startUpload(file) {
  fail('upload-error', '');
  if (state.upload) state.upload.abort();
  if (file.type && !file.type.startsWith('video/')) {
    fail('upload-error', `“${file.name}” is not a video (${file.type}). Choose a video file.`);
    return;
  }
  const started = performance.now();
  let resumedFrom = 0;
  const up = new tus.Upload(file, {
    endpoint: '/files',
    chunkSize: Number(params.get('chunk')) || 8 * 1024 * 1024,
    retryDelays: [0, 1000, 2000, 3000, 5000, 5000, 10000, 10000, 15000, 20000, 30000, 30000],
    metadata: { filename: file.name, filetype: file.type || 'application/octet-stream' },
    headers: { authorization: `Bearer ${state.token}` },
    removeFingerprintOnSuccess: true,
    onProgress(sent, total) {
      $('upload-bar').style.width = `${(100 * sent / total).toFixed(1)}%`;
      const secs = (performance.now() - started) / 1000;
      const rate = secs > 0.2 ? ` · ${fmtBytes((sent - resumedFrom) / secs)}/s` : '';
      $('upload-status').textContent = `Uploading ${fmtBytes(sent)} of ${fmtBytes(total)} (${Math.floor(100 * sent / total)}%)${rate}`;
    },
    onAfterResponse(_req, res) {
      const id = res.getHeader('Moment-Id');
      // watch from the first response: the server transcodes while the upload arrives
      if (id && state.watching !== id) { state.moment = id; watch(id); }
    },
    onShouldRetry(err, attempt) {
      const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
      const retry = status === 0 || status >= 500 || [409, 423, 429].includes(status);
      if (retry) $('upload-status').textContent = `Connection lost — retrying (attempt ${attempt + 1})…`;
      return retry;
    },
    onError(err) {
      const res = err.originalResponse;
      let msg = err.message;
      if (res) {
        const body = res.getBody() || '';
        try { msg = JSON.parse(body).error || body; } catch { msg = body || msg; }
        msg = `The server refused the upload (${res.getStatus()}): ${msg}`;
      }
      fail('upload-error', msg);
      $('upload-status').textContent = 'Upload stopped.';
      $('pause').disabled = true; $('resume').disabled = false;
    },
    onSuccess() {
      $('upload-bar').style.width = '100%';
      $('upload-status').textContent = `Uploaded ${file.name} (${fmtBytes(file.size)}).`;
      $('pause').disabled = true; $('resume').disabled = true;
      if (!state.moment) fail('upload-error', 'The upload finished but the server named no moment.');
      else if (state.watching !== state.moment) watch(state.moment);
    },
  });
  state.upload = up;
  up.findPreviousUploads().then((prev) => {
    if (prev.length) { up.resumeFromPreviousUpload(prev[0]); $('upload-status').textContent = 'Resuming an earlier upload…'; }
    up.start();
    $('pause').disabled = false; $('resume').disabled = true;
  });
}

// ---- moment state (Server-Sent Events with a single-use ticket) ----
function describe(m) {
  const s = (x) => `${(x || 0).toFixed(1)} s`;
  if (m.state === 'uploading' && m.streaming === true) {
    const got = m.received_s != null ? ` of ${s(m.received_s)} received` : '';
    return `Transcoding while it uploads: ${s(m.encoded_s)} encoded${got}.`;
  }
  if (m.streaming === false && m.reason && m.state !== 'ready') return `Transcoding after the last byte: ${m.reason}.`;
  if (m.state === 'transcoding' && m.encoded_s != null) return `${s(m.encoded_s)} encoded.`;
  if (m.state === 'ready') return m.streaming ? 'Ready — transcoded while it uploaded.' : 'Ready.';
  return '';
}

async function watch(id) {
  if (state.watching !== id) $('video').removeAttribute('poster');
  state.watching = id;
  let es;
  try {
    es = new EventSource(`/v1/moments/${id}/events?ticket=${encodeURIComponent(await ticket())}`);
  } catch (e) {
    setTimeout(() => watch(id), 2000);
    return;
  }
  es.addEventListener('moment', (e) => {
    if (state.watching !== id) { es.close(); return; } // a newer upload is being watched
    const m = JSON.parse(e.data);
    const chip = $('state');
    chip.textContent = m.state === 'transcoding' ? `transcoding ${Math.round(100 * (m.progress || 0))}%` : m.state;
    chip.className = `chip ${m.state}`;
    $('transcode-bar').style.width = `${100 * (m.state === 'ready' ? 1 : m.progress || 0)}%`;
    $('transcode-status').textContent = describe(m);
    if (m.poster_url && !$('video').poster) $('video').poster = m.poster_url;
    if (m.state === 'ready') { es.close(); play(m); }
    if (m.state === 'failed') {
      es.close();
      fail('moment-error', `This video could not be processed: ${m.error || 'unknown error'}`);
    }
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) return;
    es.close();
    setTimeout(() => { if (state.watching === id) watch(id); }, 2000); // a new ticket each time
  };
}

// ---- playback ----
function rungName(level) { return level.height ? `${Math.min(level.width, level.height)}p` : `${Math.round(level.bitrate / 1000)}k`; }

function play(m) {
  const video = $('video');
  if (m.poster_url) video.poster = m.poster_url;
  if (window.Hls && Hls.isSupported()) {
    const hls = new Hls({ capLevelToPlayerSize: false });
    state.hls = hls;
    hls.loadSource(m.master_url);
    hls.attachMedia(video);
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      const sel = $('rung');
      sel.innerHTML = '<option value="-1">Auto</option>';
      hls.levels.forEach((l, i) => {
        const o = document.createElement('option');
        o.value = i; o.textContent = `${rungName(l)} · ${Math.round(l.bitrate / 1000)} kbit/s`;
        sel.appendChild(o);
      });
      sel.disabled = false;
    });
    hls.on(Hls.Events.LEVEL_SWITCHED, (_e, d) => { $('current-rung').textContent = rungName(hls.levels[d.level]); });
    hls.on(Hls.Events.ERROR, (_e, d) => { if (d.fatal) fail('moment-error', `Playback error: ${d.details}`); });
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = m.master_url;
  } else {
    fail('moment-error', 'This browser cannot play HLS.');
  }
  $('play').disabled = false; $('seek').disabled = false;
  $('qa-start').disabled = false;
  if (m.thumbnails_url) loadThumbnails(m.thumbnails_url);
}

async function loadThumbnails(url) {
  try {
    const text = await (await fetch(url)).text();
    const base = new URL(url, location.href);
    const ts = (s) => s.split(':').reduce((a, p) => a * 60 + parseFloat(p), 0);
    state.cues = text.split(/\n\n+/).map((block) => {
      const lines = block.trim().split('\n');
      const i = lines.findIndex((l) => l.includes('-->'));
      if (i < 0 || !lines[i + 1]) return null;
      const [a, b] = lines[i].split('-->').map((s) => ts(s.trim()));
      const [file, frag] = lines[i + 1].split('#xywh=');
      const [x, y, w, h] = frag.split(',').map(Number);
      return { start: a, end: b, url: new URL(file, base).href, x, y, w, h };
    }).filter(Boolean);
  } catch { state.cues = []; }
}

function setupPlayer() {
  const video = $('video'), seek = $('seek');
  $('play').onclick = () => (video.paused ? video.play() : video.pause());
  video.onplay = () => { $('play').textContent = '❚❚'; };
  video.onpause = () => { $('play').textContent = '▶'; };
  video.ontimeupdate = () => {
    if (video.duration) seek.value = Math.round(1000 * video.currentTime / video.duration);
    $('time').textContent = `${fmtTime(video.currentTime)} / ${fmtTime(video.duration)}`;
  };
  seek.oninput = () => { if (video.duration) video.currentTime = seek.value / 1000 * video.duration; };
  $('rung').onchange = (e) => { if (state.hls) state.hls.currentLevel = Number(e.target.value); };
  seek.onmousemove = (e) => {
    if (!video.duration || !state.cues.length) return;
    const r = seek.getBoundingClientRect();
    const t = Math.max(0, Math.min(1, (e.clientX - r.left) / r.width)) * video.duration;
    const c = state.cues.find((q) => t >= q.start && t < q.end) || state.cues[state.cues.length - 1];
    const img = $('thumb-img');
    Object.assign(img.style, {
      width: `${c.w}px`, height: `${c.h}px`, backgroundImage: `url("${c.url}")`, backgroundPosition: `-${c.x}px -${c.y}px`,
    });
    $('thumb-time').textContent = fmtTime(t);
    const pr = $('player').getBoundingClientRect();
    $('thumb').style.left = `${Math.max(c.w / 2, Math.min(pr.width - c.w / 2, e.clientX - pr.left))}px`;
    show('thumb');
  };
  seek.onmouseleave = () => show('thumb', false);
}

// ---- voice Q&A ----
const speaker = { queue: [], audio: new Audio(), busy: false };
speaker.audio.onended = () => { speaker.busy = false; window.moments.played += 1; playNext(); };
speaker.audio.onerror = () => { speaker.busy = false; playNext(); };
function playNext() {
  if (speaker.busy || !speaker.queue.length) return;
  const url = speaker.queue.shift();
  speaker.busy = true;
  speaker.audio.src = url;
  speaker.audio.play().catch(() => { speaker.busy = false; });
}
function silence() { speaker.queue = []; speaker.audio.pause(); speaker.busy = false; }

async function startQa() {
  $('qa-start').disabled = true;
  $('qa-status').textContent = 'Connecting…';
  try {
    const s = await api('POST', `/v1/moments/${state.moment}/qa`, { audio: 'ogg' });
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}${s.ws_url}?ticket=${encodeURIComponent(await ticket())}`);
    ws.binaryType = 'arraybuffer';
    state.ws = ws;
    // The server closes a connection that carries no byte for http.idle_timeout_secs (120 s by
    // default) and browsers cannot send WebSocket ping frames: a JSON ping keeps a long pause
    // (a user thinking before answering) from ending the conversation.
    const keepalive = setInterval(() => { if (ws.readyState === WebSocket.OPEN) ws.send('{"type":"ping"}'); }, 30000);
    let chunks = null;
    let spoken = '';
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') {
        if (chunks) chunks.push(e.data);
        window.moments.audioBytes += e.data.byteLength;
        return;
      }
      const m = JSON.parse(e.data);
      switch (m.type) {
        case 'question_delta':
          if (m.writer) { spoken = ''; $('question').textContent = ''; show('question'); show('transcript-box', false); }
          spoken += m.text;
          $('question').textContent = spoken;
          $('qa-status').textContent = 'The question is being spoken…';
          break;
        case 'sentence': window.moments.sentences += 1; break;
        case 'audio_start': chunks = []; break;
        case 'audio_end':
          if (chunks && chunks.length) speaker.queue.push(URL.createObjectURL(new Blob(chunks, { type: 'audio/ogg' })));
          chunks = null;
          playNext();
          break;
        case 'metrics':
          $('qa-metrics').textContent = `question by ${m.writer} · first audio ${m.first_audio_ms} ms · voice ${m.tts_engine}`;
          $('qa-status').textContent = 'Your turn.';
          if (state.noMic) show('text-answer-row'); else show('answer-row');
          break;
        case 'transcript_partial':
          show('transcript-box'); $('transcript').textContent = m.text; $('transcript').className = 'transcript partial';
          break;
        case 'transcript':
          show('transcript-box'); $('transcript').textContent = m.text; $('transcript').className = 'transcript';
          window.moments.transcript = m.text;
          {
            const li = document.createElement('li');
            const q = document.createElement('div'); q.className = 'q'; q.textContent = spoken;
            const a = document.createElement('div'); a.className = 'a'; a.textContent = m.text;
            li.append(q, a);
            $('history').prepend(li);
          }
          $('rec-status').textContent = '';
          show('text-answer-row', false);
          break;
        case 'round_done': $('qa-status').textContent = 'Thanks! Here comes the next question…'; show('answer-row', false); break;
        case 'error': fail('mic-error', m.message); break;
        case 'pong': break;
        default: break;
      }
    };
    ws.onclose = () => {
      clearInterval(keepalive);
      $('qa-status').textContent = 'The conversation is over. Thank you!';
      show('answer-row', false); show('text-answer-row', false);
      $('qa-start').disabled = false;
    };
  } catch (e) {
    $('qa-status').textContent = '';
    fail('mic-error', `Could not start the Q&A: ${e.message}`);
    $('qa-start').disabled = false;
  }
}

let recorder = null;
async function record() {
  fail('mic-error', '');
  let stream;
  try {
    if (!navigator.mediaDevices || !window.MediaRecorder) throw new Error('this browser cannot record audio');
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    fail('mic-error', `The microphone is not available (${e.name === 'NotAllowedError' ? 'permission denied' : e.message}). Type your answer instead.`);
    state.noMic = true;
    show('answer-row', false);
    show('text-answer-row');
    $('text-answer').focus();
    return;
  }
  silence(); // barge-in: the server stops the question too
  const mime = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus'].find((t) => MediaRecorder.isTypeSupported(t));
  const format = mime && mime.startsWith('audio/ogg') ? 'ogg' : 'webm';
  state.ws.send(JSON.stringify({ type: 'answer_start', format }));
  recorder = new MediaRecorder(stream, mime ? { mimeType: mime } : undefined);
  let sending = Promise.resolve();
  recorder.ondataavailable = (e) => {
    if (e.data.size) sending = sending.then(() => e.data.arrayBuffer()).then((b) => state.ws.send(b));
  };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    sending.then(() => state.ws.send(JSON.stringify({ type: 'answer_done' })));
    $('rec-status').textContent = 'Listening to your answer…';
  };
  recorder.start(250);
  show('answer-record', false); show('answer-stop');
  $('rec-status').textContent = '● recording';
}
function stopRecording() {
  if (recorder && recorder.state !== 'inactive') recorder.stop();
  show('answer-stop', false); show('answer-record');
}
function sendText() {
  const text = $('text-answer').value.trim();
  if (!text) return;
  silence();
  state.ws.send(JSON.stringify({ type: 'answer_text', text }));
  $('text-answer').value = '';
}

// ---- start ----
async function main() {
  const missing = [!window.Hls && 'hls.js', !window.tus && 'tus-js-client'].filter(Boolean);
  if (missing.length) {
    banner(`${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} not installed on this server: run deploy/install-web.sh (npm packages into moments/web/node_modules), then reload.`);
  }
  setupPlayer();
  try { await signIn(); } catch (e) { banner(e.message); return; }
  const input = $('file'), drop = $('drop');
  input.onchange = () => input.files[0] && window.tus && startUpload(input.files[0]);
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = (e) => {
    e.preventDefault(); drop.classList.remove('over');
    if (e.dataTransfer.files[0] && window.tus) startUpload(e.dataTransfer.files[0]);
  };
  $('pause').onclick = () => { state.upload.abort(); $('pause').disabled = true; $('resume').disabled = false; $('upload-status').textContent = 'Paused.'; };
  $('resume').onclick = () => { state.upload.start(); $('pause').disabled = false; $('resume').disabled = true; };
  $('qa-start').onclick = startQa;
  $('answer-record').onclick = record;
  $('answer-stop').onclick = stopRecording;
  $('text-answer-send').onclick = sendText;
  $('text-answer').onkeydown = (e) => { if (e.key === 'Enter') sendText(); };
  if (params.get('moment')) { state.moment = params.get('moment'); watch(state.moment); }
}
main();
