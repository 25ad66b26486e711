// The Stagecast demo page: join a room, put speakers on a video grid, show the live
// audience count, and let a host page through the audience and invite viewers on stage.
// Built only on the public browser SDK (./stagecast.js); `window.demo` exposes the room for
// tinkering in the console (and for the browser tests).

import * as Stagecast from './stagecast.js';

const DEV = document.body.dataset.dev === 'true';
const AUDIENCE_PAGE = 10;

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
};

const demo = {
  room: null, token: null, tiles: new Map(), hands: new Map(), audienceCursor: null,
  audienceLoading: false, audienceStale: false,
};
window.demo = demo;

// ------------------------------------------------------------------------------ joining

function setUpForm() {
  $('token-field').hidden = DEV;
  $('dev-hint').hidden = !DEV;
  const params = new URLSearchParams(location.search);
  if (params.get('room')) $('join-room').value = params.get('room');
  if (params.get('name')) $('join-name').value = params.get('name');
  const role = params.get('role');
  if (role) {
    for (const input of document.querySelectorAll('input[name=role]')) input.checked = input.value === role;
  }
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    joinFromForm().catch((err) => showJoinError(err));
  });
}

async function joinFromForm() {
  const form = new FormData($('join-form'));
  const roomId = String(form.get('room')).trim();
  const name = String(form.get('name')).trim();
  const role = String(form.get('role'));
  $('join-error').textContent = '';
  $('join-button').disabled = true;
  try {
    let token = String(form.get('token') ?? '').trim();
    if (DEV) {
      token = await devToken({ room: roomId, name, viewer: role === 'viewer', host: role === 'host' });
    }
    if (!token) throw new Error('an access token is needed to join');
    const room = await Stagecast.join({ token, roomId, name });
    demo.token = token;
    enterRoom(room);
  } finally {
    $('join-button').disabled = false;
  }
}

async function devToken(body) {
  const response = await fetch('/dev/token', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  const reply = await response.json();
  if (!response.ok) throw new Error(reply.message ?? `dev token: HTTP ${response.status}`);
  return reply.token;
}

// A StagecastError as "CODE: detail"; anything else by its message.
function describe(err) {
  if (err?.code) return err.detail ? `${err.code}: ${err.detail}` : err.code;
  return String(err?.message ?? err);
}

function showJoinError(err) {
  console.error(err);
  $('join-error').textContent = describe(err);
}

// ------------------------------------------------------------------------------ the room

function enterRoom(room) {
  demo.room = room;
  $('join-view').hidden = true;
  $('room-view').hidden = false;
  $('watching').hidden = false;
  $('state').hidden = false;
  $('room-title').hidden = false;
  $('room-title').replaceChildren('Room ', el('strong', { textContent: room.id }));
  setState('connected');
  renderCounts(room.counts);

  room.on('participant-count-changed', renderCounts);
  room.on('active-speakers-changed', renderSpeaking);
  room.on('participant-joined', addRemoteTile);
  room.on('participant-left', (p) => removeTile(p.id));
  room.on('tier-changed', onTierChanged);
  room.on('hand-raised', (p) => { demo.hands.set(p.id, p); renderHands(); });
  room.on('hand-lowered', (p) => { demo.hands.delete(p.id); renderHands(); });
  room.on('audience-changed', () => refreshAudience());
  room.on('reconnecting', () => setState('reconnecting…', true));
  room.on('reconnected', () => setState('connected'));
  room.on('disconnected', onDisconnected);
  room.registerTextStreamHandler('transcription', showTranscript);

  renderLocal();
  if (room.localParticipant.grant.canModerate) {
    $('host-panel').hidden = false;
    loadAudience(true);
  }
}

// An agent's live transcript (text streams on topic `transcription`): appended as it comes,
// the last 200 lines kept.
async function showTranscript(reader) {
  $('transcript-panel').hidden = false;
  const log = $('transcript');
  try {
    for await (const text of reader) {
      log.textContent = (log.textContent + text).split('\n').slice(-200).join('\n');
      log.scrollTop = log.scrollHeight;
    }
  } catch (err) {
    log.textContent += `\n(${err.code ?? err.message})\n`;
  }
}

// The speaking tiles get a highlight (the loudest first in `speakers`).
function renderSpeaking(speakers) {
  const talking = new Set(speakers.map((p) => p.id));
  for (const [id, tile] of demo.tiles) {
    tile.node.classList.toggle('speaking', talking.has(id));
    tile.node.dataset.speaking = String(talking.has(id));
  }
}

function setState(text, bad = false) {
  $('state').textContent = text;
  $('state').classList.toggle('bad', bad);
}

function notice(text) { $('notice').textContent = text; }

function renderCounts(counts) {
  const badge = $('watching');
  badge.dataset.total = counts.total;
  badge.dataset.speakers = counts.speaker;
  badge.dataset.viewers = counts.viewer;
  $('watching-total').textContent = counts.total.toLocaleString();
  const n = (x) => x.toLocaleString();
  $('watching-breakdown').textContent = `${n(counts.speaker)} on stage · ${n(counts.viewer)} in the audience`;
  $('audience-total').textContent = `(${counts.viewer.toLocaleString()})`;
}

function onDisconnected(reason) {
  for (const id of [...demo.tiles.keys()]) removeTile(id);
  demo.hands.clear();
  demo.room = null;
  $('room-view').hidden = true;
  $('host-panel').hidden = true;
  $('watching').hidden = true;
  $('state').hidden = true;
  $('room-title').hidden = true;
  $('join-view').hidden = false;
  $('join-error').textContent = reason === 'CLIENT_LEFT' ? '' : `Disconnected: ${reason}`;
  notice('');
}

// ------------------------------------------------------------------------------ tiles

function initials(name) {
  return (name || '?').split(/\s+/).map((w) => w[0]).join('').slice(0, 2).toUpperCase();
}

function makeTile(id, name, local) {
  const video = el('video', { autoplay: true, playsInline: true, muted: true });
  const audio = el('audio', { autoplay: true });
  const avatar = el('div', { className: 'avatar' }, el('span', { textContent: initials(name) }));
  const flags = el('span', { className: 'flags' });
  const title = el('span', { className: 'name', textContent: local ? `${name} (you)` : name });
  const label = el('div', { className: 'label' }, title, flags);
  const actions = el('div', { className: 'tile-actions' });
  const node = el('div', { className: `tile${local ? ' local' : ''}` }, video, avatar, label, actions);
  node.dataset.identity = id;
  video.hidden = true;
  const tile = { id, node, video, audio, avatar, flags, actions, name };
  demo.tiles.set(id, tile);
  $('stage').append(node);
  $('stage-empty').hidden = true;
  return tile;
}

function removeTile(id) {
  const tile = demo.tiles.get(id);
  if (!tile) return;
  tile.video.srcObject = null;
  tile.audio.srcObject = null;
  tile.node.remove();
  demo.tiles.delete(id);
  $('stage-empty').hidden = demo.tiles.size > 0;
}

function showVideo(tile, stream) {
  tile.video.srcObject = stream;
  tile.video.hidden = !stream;
  tile.avatar.hidden = !!stream;
  if (stream) tile.video.play().catch(() => {});
}

// Flags: microphone muted or absent, camera off, hand raised, and what this browser cannot
// play (`failed`: kind -> its `track-subscription-failed`, e.g. H.264 in Debian's Firefox).
function renderFlags(tile, { audio, video, hand, failed }) {
  const flag = (text, title, className) => el('span', { textContent: text, title, className });
  const out = [];
  if (hand) out.push(flag('hand', 'hand raised', 'hand-pill'));
  if (!audio) out.push(flag('mic off', 'no microphone', 'muted'));
  else if (audio.muted) out.push(flag('muted', 'microphone muted', 'muted'));
  if (video?.muted) out.push(flag('cam off', 'camera off', 'muted'));
  for (const failure of failed.values()) {
    const codecs = failure.codecs.map((c) => c.split('/').pop()).join(', ');
    out.push(flag(`can't play ${failure.kind} (${codecs})`, failure.message, 'muted'));
  }
  tile.flags.replaceChildren(...out);
  tile.node.dataset.audioMuted = String(!audio || audio.muted);
  tile.node.dataset.videoMuted = String(!video || video.muted);
  tile.node.dataset.cannotPlay = [...failed.keys()].sort().join(' ');
}

function addRemoteTile(participant) {
  removeTile(participant.id);
  const tile = makeTile(participant.id, participant.name || participant.id, false);
  const failed = new Map();
  const refresh = () => renderFlags(tile, {
    audio: participant.tracks.get('audio'),
    video: participant.tracks.get('video'),
    hand: participant.attributes.hand === 'raised',
    failed,
  });
  refresh();
  const changes = ['stream-published', 'track-muted', 'track-unmuted', 'attributes-changed'];
  for (const event of changes) participant.on(event, refresh);
  participant.on('stream-unpublished', (event) => {
    failed.delete(event.kind);
    refresh();
  });
  participant.on('track-subscription-failed', (failure) => {
    failed.set(failure.kind, failure);
    refresh();
  });
  const quality = qualityControls(tile, participant);
  participant.on('stream-subscribed', (sub) => {
    if (failed.delete(sub.kind)) refresh();
    if (sub.kind === 'video') {
      showVideo(tile, sub.stream);
      quality.subscribed(sub);
    } else {
      tile.audio.srcObject = sub.stream;
      tile.audio.play().catch(() => {});
    }
  });
  participant.on('stream-unsubscribed', (sub) => {
    if (sub.kind === 'video') {
      showVideo(tile, null);
      quality.subscribed(null);
    } else tile.audio.srcObject = null;
  });
  if (demo.room.localParticipant.grant.canModerate && DEV) {
    tile.actions.append(el('button', {
      className: 'small',
      textContent: 'Move to audience',
      onclick: () => moveTier(participant.id, true).catch((err) => notice(describe(err))),
    }));
  }
}

const QUALITY_CHOICES = [['auto', 'Auto'], ['high', 'High'], ['medium', 'Medium'], ['low', 'Low']];

// A remote tile's video quality: a menu (Auto is adaptive stream, the tile's size decides;
// High, Medium, Low cap the quality whatever the size) and a label of what arrives: the
// simulcast layer the forwarder says it sends (q, h, f) and the size of the decoded frames.
function qualityControls(tile, participant) {
  const menu = el('select', { className: 'quality-menu', title: 'Video quality' },
    ...QUALITY_CHOICES.map(([value, textContent]) => el('option', { value, textContent })));
  const label = el('span', { className: 'layer', title: 'Layer received · frame size' });
  const box = el('div', { className: 'quality' }, label, menu);
  box.hidden = true;
  tile.node.append(box);
  let subscription = null;
  const render = () => {
    const layer = participant.publications.get(subscription?.trackSid)?.videoLayer ?? null;
    const width = subscription ? tile.video.videoWidth : 0;
    const size = width ? `${width}×${tile.video.videoHeight}` : '';
    label.textContent = [layer, size].filter(Boolean).join(' · ') || '…';
    tile.node.dataset.layer = layer ?? '';
    tile.node.dataset.frameWidth = String(width);
    box.hidden = !subscription;
  };
  const apply = async () => {
    if (!subscription) return;
    if (menu.value === 'auto') {
      subscription.observeElement(tile.video); // no layer larger than the tile shows
      await subscription.setVideoQuality('high');
    } else {
      await subscription.setVideoQuality(menu.value);
      subscription.observeElement(null); // a fixed choice: the tile's size no longer limits it
    }
  };
  menu.addEventListener('change', () => apply().catch((err) => notice(describe(err))));
  tile.video.addEventListener('resize', render);
  participant.on('video-layer-changed', render);
  return {
    subscribed(sub) {
      subscription = sub;
      render();
      apply().catch((err) => notice(describe(err)));
    },
  };
}

// The local participant's tile and controls follow its tier (a viewer can be promoted).
function renderLocal() {
  const local = demo.room.localParticipant;
  for (const node of document.querySelectorAll('[data-speaker]')) node.hidden = local.isViewer;
  for (const node of document.querySelectorAll('[data-viewer]')) node.hidden = !local.isViewer;
  if (local.isViewer) {
    removeTile('local');
    renderHandButton();
    return;
  }
  let tile = demo.tiles.get('local');
  if (!tile) tile = makeTile('local', local.name || local.id, true);
  const camera = local.tracks.get('video');
  const mic = local.tracks.get('audio');
  showVideo(tile, camera && !camera.muted ? new MediaStream([camera.track]) : null);
  renderFlags(tile, { audio: mic, video: camera, hand: local.handRaised, failed: new Map() });
  $('btn-camera').textContent = !camera ? 'Start camera' : camera.muted ? 'Turn camera on' : 'Turn camera off';
  $('btn-camera').classList.toggle('on', !!camera && !camera.muted);
  $('btn-mic').textContent = !mic ? 'Start microphone' : mic.muted ? 'Unmute' : 'Mute';
  $('btn-mic').classList.toggle('on', !!mic && !mic.muted);
  if (camera && mic && $('notice').textContent === ON_STAGE) notice('');
}

function renderHandButton() {
  const raised = demo.room?.localParticipant.handRaised;
  $('btn-hand').textContent = raised ? 'Lower hand' : 'Raise hand';
  $('btn-hand').classList.toggle('on', !!raised);
}

const ON_STAGE = 'You are on stage: start your camera and microphone.';

function onTierChanged(local) {
  renderLocal();
  notice(local.isViewer
    ? 'You are in the audience now.'
    : ON_STAGE);
}

// Run a control's action with the button disabled; errors go to the notice line.
function action(button, run) {
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await run();
    } catch (err) {
      console.error(err);
      notice(describe(err));
    } finally {
      button.disabled = false;
    }
  });
}

async function toggleTrack(kind) {
  const local = demo.room.localParticipant;
  const publication = local.tracks.get(kind);
  if (!publication) {
    if (kind === 'video') await local.publishCamera({ width: 640, height: 360 });
    else await local.publishMicrophone();
  } else if (publication.muted) await publication.unmute();
  else await publication.mute();
  renderLocal();
}

function setUpControls() {
  action($('btn-camera'), () => toggleTrack('video'));
  action($('btn-mic'), () => toggleTrack('audio'));
  action($('btn-hand'), async () => {
    const local = demo.room.localParticipant;
    if (local.handRaised) await local.lowerHand();
    else await local.raiseHand();
    renderHandButton();
  });
  action($('btn-leave'), () => demo.room.leave());
  action($('btn-audience-refresh'), () => loadAudience(true));
  action($('btn-audience-more'), () => loadAudience(false));
}

// ------------------------------------------------------------------------------ host view

function personRow(participant, extra) {
  const raised = participant.attributes.hand === 'raised';
  const hand = raised ? el('span', { className: 'hand-pill', textContent: 'hand' }) : '';
  const who = el('span', { className: 'who', title: participant.id }, hand, participant.name || participant.id);
  const row = el('li', {}, who);
  row.dataset.identity = participant.id;
  if (extra) row.append(extra);
  return row;
}

function promoteButton(participant) {
  if (!DEV) {
    // Outside dev mode promotion is the application backend's call (RoomService).
    return el('span', { className: 'muted', textContent: 'viewer', title: 'RoomService.update_participant' });
  }
  return el('button', {
    className: 'small',
    textContent: 'Invite on stage',
    onclick: () => moveTier(participant.id, false).catch((err) => notice(describe(err))),
  });
}

function renderHands() {
  const onStage = () => el('span', { className: 'muted', textContent: 'on stage' });
  const rows = [...demo.hands.values()].map((p) => personRow(p, p.isViewer ? promoteButton(p) : onStage()));
  const none = el('li', { className: 'muted', textContent: 'No hands raised.' });
  $('hands').replaceChildren(...(rows.length ? rows : [none]));
}

// One page of the audience (cursor pagination: `fresh` starts over at a new snapshot).
async function loadAudience(fresh) {
  const room = demo.room;
  if (!room) return;
  const cursor = fresh ? null : demo.audienceCursor;
  const page = await room.getParticipants({ tier: 'viewer', limit: AUDIENCE_PAGE, cursor });
  demo.audienceCursor = page.nextCursor;
  const rows = page.participants.map((p) => personRow(p, promoteButton(p)));
  if (fresh) $('audience').replaceChildren();
  $('audience').append(...rows);
  if (!$('audience').children.length) {
    $('audience').append(el('li', { className: 'muted', textContent: 'Nobody in the audience.' }));
  }
  $('btn-audience-more').hidden = !page.nextCursor;
}

// The audience changed (at most four signals a second): reload the first page, one load
// at a time, and once more if another signal came meanwhile.
async function refreshAudience() {
  if (demo.audienceLoading) {
    demo.audienceStale = true;
    return;
  }
  demo.audienceLoading = true;
  try {
    do {
      demo.audienceStale = false;
      await loadAudience(true);
    } while (demo.audienceStale);
  } catch (err) {
    notice(describe(err));
  } finally {
    demo.audienceLoading = false;
  }
}

// Dev mode: the edge moves the participant for us, checking our moderator token.
async function moveTier(identity, viewer) {
  const response = await fetch('/dev/promote', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${demo.token}` },
    body: JSON.stringify({ room: demo.room.id, identity, viewer }),
  });
  const reply = await response.json();
  if (!response.ok) throw new Error(`${reply.code}: ${reply.message}`);
  demo.hands.delete(identity);
  renderHands();
  await loadAudience(true);
  return reply;
}

setUpForm();
setUpControls();
