"""One browser scenario, run inside a private network namespace by tests/test_browser.py.

``python -m tests.browser.driver SCENARIO OUT_DIR`` starts a private stack (nats-server,
statekeeper, edge in dev mode, forwarder), Chromium through `run.mjs`, and whatever
Python SDK peers the scenario needs; the scenario's findings go to ``OUT_DIR/result.json``
(``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``) for the test to judge. Only
loopback exists in the namespace, so WebRTC candidates are 127.0.0.1 and nothing leaks.
`tests/browser/firefox.py` runs its Firefox scenarios with this module's stack, helpers
and `main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from tests.polling import eventually

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUN_MJS = HERE / "run.mjs"
RUN_FIREFOX_MJS = HERE / "run_firefox.mjs"
CALL_TIMEOUT = 20.0
SCENARIO_TIMEOUT = 50.0


class BrowserError(Exception):
    """A command failed inside the browser driver (run.mjs)."""


class Browser:
    """A browser behind its node driver (Chromium: run.mjs, Firefox ESR: run_firefox.mjs):
    JSON-lines commands over the node process's stdio."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, script: Path = RUN_MJS) -> AsyncIterator[Browser]:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(script),
            cwd=str(HERE),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        browser = cls(proc)
        try:
            yield browser
        finally:
            await browser.quit()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                reply = json.loads(line)
            except ValueError:
                print(f"run.mjs: {line.decode(errors='replace').rstrip()}", file=sys.stderr)
                continue
            waiter = self._pending.pop(reply.get("id"), None)
            if waiter is None or waiter.done():
                continue
            if reply.get("ok"):
                waiter.set_result(reply.get("result"))
            else:
                waiter.set_exception(BrowserError(reply.get("error", "?")))
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(BrowserError("the browser driver exited"))

    async def call(self, cmd: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        assert self.proc.stdin is not None
        request_id = next(self._ids)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
        self.proc.stdin.write(line.encode())
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise BrowserError(f"{cmd} {args} did not finish in {timeout} s") from None

    async def open(self, page: str, url: str, **size: int) -> None:
        await self.call("open", page=page, url=url, **size)

    async def eval(self, page: str, expr: str) -> Any:
        """Evaluate a JS expression in the page (a promise is awaited); its JSON value."""
        return await self.call("eval", page=page, expr=expr)

    async def wait(
        self, page: str, expr: str, until: str = "Boolean", timeout: float = 15.0
    ) -> Any:
        """Poll a JS expression (promises are awaited) until the JS predicate `until` holds
        for its value; that value. `BrowserError` on timeout, with the last value."""
        ms = int(timeout * 1000)
        return await self.call(
            "wait", timeout=timeout + 5, page=page, expr=expr, until=until, ms=ms
        )

    async def click(self, page: str, selector: str) -> None:
        await self.call("click", page=page, selector=selector)

    async def select(self, page: str, selector: str, value: str) -> None:
        await self.call("select", page=page, selector=selector, value=value)

    async def screenshot(self, page: str, path: Path) -> None:
        await self.call("screenshot", page=page, path=str(path))

    async def quit(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


# --------------------------------------------------------------------------- scenarios


class Pages(Protocol):
    """What a scenario drives pages with: one `Browser`, or pages spread over Chromium and
    Firefox (`tests/browser/firefox.py`)."""

    async def open(self, page: str, url: str, **size: int) -> None: ...

    async def eval(self, page: str, expr: str) -> Any: ...

    async def wait(
        self, page: str, expr: str, until: str = "Boolean", timeout: float = 15.0
    ) -> Any: ...

    async def click(self, page: str, selector: str) -> None: ...

    async def select(self, page: str, selector: str, value: str) -> None: ...

    async def screenshot(self, page: str, path: Path) -> None: ...


class Context:
    """What a scenario works with: the stack, the browser, and its output directory."""

    def __init__(self, stack: Any, browser: Pages, out: Path) -> None:
        self.stack = stack
        self.browser = browser
        self.out = out
        self.url: str = stack.url

    async def join_page(
        self, page: str, room: str, name: str, role: str = "speaker", **size: int
    ) -> None:
        """Open the demo page and join through its form (dev tokens from /dev/token)."""
        query = urlencode({"room": room, "name": name, "role": role})
        await self.browser.open(page, f"{self.url}/?{query}", **size)
        await self.browser.click(page, "#join-button")
        await self.browser.wait(
            page, "window.demo.room && window.demo.room.connectionState === 'connected'"
        )

    async def python_peer(self, identity: str, room: str, *, viewer: bool = False) -> Any:
        """A Python SDK client in `room` (left when the stack stops)."""
        return await self.stack.join(self.stack.token(identity, room, viewer=viewer), name=identity)


Scenario = Callable[[Context], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, tuple[Scenario, int]] = {}
"""Scenario name -> (coroutine, forwarders it needs)."""


def scenario(
    name: str, forwarders: int = 0, registry: dict[str, tuple[Scenario, int]] = SCENARIOS
) -> Callable[[Scenario], Scenario]:
    """Register a scenario (in `registry`: another driver module keeps its own)."""

    def register(fn: Scenario) -> Scenario:
        registry[name] = (fn, forwarders)
        return fn

    return register


BADGE = """(() => {
  const b = document.getElementById('watching');
  return {total: +b.dataset.total, speakers: +b.dataset.speakers, viewers: +b.dataset.viewers,
          text: b.innerText.replace(/\\s+/g, ' ').trim(), hidden: b.hidden};
})()"""


@scenario("badge")
async def badge(ctx: Context) -> dict[str, Any]:
    """The page's "N watching" badge follows viewers and speakers joining and leaving."""
    room = "badge"
    await ctx.join_page("speaker", room, "Ada")
    await ctx.python_peer("grace", room)
    viewers = [await ctx.python_peer(f"viewer-{n}", room, viewer=True) for n in range(6)]
    want = "b => b.speakers === 2 && b.viewers === 6 && b.total === 8"
    after_join = await ctx.browser.wait("speaker", BADGE, want)
    await viewers[0].leave()
    await viewers[1].leave()
    want = "b => b.speakers === 2 && b.viewers === 4 && b.total === 6"
    after_leave = await ctx.browser.wait("speaker", BADGE, want)
    speakers = await ctx.browser.eval(
        "speaker", "[...document.querySelectorAll('.tile')].map(t => t.innerText.trim())"
    )
    return {"after_join": after_join, "after_leave": after_leave, "tiles": speakers}


@scenario("host", forwarders=1)
async def host(ctx: Context) -> dict[str, Any]:
    """A host pages through the audience, sees a raised hand and invites that viewer on stage."""
    room = "town-hall"
    await ctx.join_page("host", room, "Hana Host", role="host")
    long_name = "aud-00-whose-name-is-far-too-long-for-the-host-panel"  # cut, not wrapped
    names = [long_name] + [f"aud-{n:02d}" for n in range(1, 12)]
    audience = [await ctx.python_peer(name, room, viewer=True) for name in names]
    await ctx.join_page("viewer", room, "Vic Viewer", role="viewer")
    viewer_id = await ctx.browser.eval("viewer", "window.demo.room.localParticipant.id")
    # Page through the audience with the page's own controls (10 per page).
    # No Refresh click: `audience-changed` reloads the list the host sees.
    await ctx.browser.wait("host", BADGE, "b => b.viewers === 13")
    rows = "[...document.querySelectorAll('#audience li')].map(li => li.dataset.identity)"
    await ctx.browser.wait("host", rows, "ids => ids.length === 10")
    await ctx.browser.wait("host", "!window.demo.audienceLoading && !window.demo.audienceStale")
    await ctx.browser.click("host", "#btn-audience-more")
    listed = await ctx.browser.wait("host", rows, "ids => ids.length === 13")
    more_hidden = await ctx.browser.eval(
        "host", "document.querySelector('#btn-audience-more').hidden"
    )
    host_invites = await ctx.browser.eval(
        "host",
        "[...document.querySelectorAll('#audience li button')]"
        ".map(b => Math.round(b.getBoundingClientRect().height))",
    )
    # The viewer raises a hand; the host sees it and invites the viewer on stage.
    await ctx.browser.click("viewer", "#btn-hand")
    await ctx.browser.wait(
        "host", f"document.querySelector('#hands li[data-identity=\"{viewer_id}\"] button')"
    )
    # A second host joins now, on a phone (420 px, touch): the hand already up shows.
    await ctx.join_page("phone", room, "Pat Phone", role="host", width=420, height=860, touch=1)
    late_hand = await ctx.browser.wait(
        "phone", f"!!document.querySelector('#hands li[data-identity=\"{viewer_id}\"]')"
    )
    await ctx.browser.click("host", f'#hands li[data-identity="{viewer_id}"] button')
    promoted = await ctx.browser.wait(
        "viewer",
        "!window.demo.room.localParticipant.isViewer"
        " && window.demo.room.localParticipant.grant.canPublish"
        " && window.demo.room.localParticipant.attributes.hand === undefined"
        " && !document.querySelector('.tile[data-identity=\"local\"] .hand-pill')"
        " && !document.getElementById('btn-camera').hidden"
        " && document.getElementById('btn-hand').hidden",
    )
    # The promoted viewer publishes; the on-stage notice goes once both are on.
    await ctx.browser.click("viewer", "#btn-camera")
    await ctx.browser.click("viewer", "#btn-mic")
    notice = await ctx.browser.wait(
        "viewer", "document.getElementById('notice').textContent", "t => t === ''"
    )
    tile = f'.tile[data-identity="{viewer_id}"]'
    on_stage = await ctx.browser.wait(
        "host", f"document.querySelector('{tile}')?.dataset.audioMuted === 'false'"
    )
    counts = await ctx.browser.wait("host", BADGE, "b => b.speakers === 3 && b.viewers === 12")
    hands_left = await ctx.browser.wait("host", "window.demo.hands.size", "n => n === 0")
    phone = await ctx.browser.wait(
        "phone",
        f"""(() => {{
          const tile = document.querySelector('{tile}');
          const actions = tile && tile.querySelector('.tile-actions button');
          const invites = [...document.querySelectorAll('#audience li button')];
          return {{
            tile: !!tile,
            actions_opacity: actions ? getComputedStyle(actions.parentElement).opacity : null,
            page_width: document.documentElement.scrollWidth,
            invites: invites.length,
            invite_heights: invites.map(b => Math.round(b.getBoundingClientRect().height)),
            one_line: Math.round(invites[0]?.getBoundingClientRect().height ?? 0),
          }};
        }})()""",
        "p => p.tile && p.invites === 10",
    )
    del audience
    return {
        "viewer_id": viewer_id,
        "listed": listed,
        "more_hidden": more_hidden,
        "host_invites": host_invites,
        "late_hand": late_hand,
        "promoted": promoted,
        "notice": notice,
        "on_stage": on_stage,
        "counts": counts,
        "hands_left": hands_left,
        "phone": phone,
    }


@scenario("gather")
async def gather(ctx: Context) -> dict[str, Any]:
    """ICE gathering that does not finish in time is said on the console, not waited out
    silently (a STUN server that never answers keeps gathering open)."""
    await ctx.browser.open("page", f"{ctx.url}/")
    warnings = await ctx.browser.eval(
        "page",
        """(async () => {
          const { gathered } = await import('/static/media.js');
          const pc = new RTCPeerConnection({ iceServers: [{ urls: 'stun:127.0.0.1:9' }] });
          pc.createDataChannel('probe');
          await pc.setLocalDescription(await pc.createOffer());
          const said = [];
          const warn = console.warn;
          console.warn = (...args) => said.push(args.join(' '));
          try {
            await gathered(pc, 300);
          } finally {
            console.warn = warn;
          }
          const state = pc.iceGatheringState;
          pc.close();
          return { said, state };
        })()""",
    )
    return {"warnings": warnings}


@scenario("resume")
async def resume(ctx: Context) -> dict[str, Any]:
    """The page's socket drops; the SDK resumes the same session, and nobody sees it leave."""
    room = "resume"
    await ctx.join_page("ada", room, "Ada")
    watcher = await ctx.python_peer("grace", room)
    left: list[str] = []
    watcher.on("participant-left", lambda p: left.append(p.id))
    ada_id = await ctx.browser.eval("ada", "window.demo.room.localParticipant.id")
    await ctx.browser.eval(
        "ada",
        """(() => {
          const room = window.demo.room;
          window.events = [];
          for (const e of ['reconnecting', 'reconnected', 'disconnected']) {
            room.on(e, () => window.events.push(e));
          }
          window.sidBefore = room.localParticipant.sid;
          room.connection.abort();  // as a dead network would
        })()""",
    )
    events = await ctx.browser.wait("ada", "window.events", "e => e.includes('reconnected')")
    same_sid = await ctx.browser.eval(
        "ada", "window.demo.room.localParticipant.sid === window.sidBefore"
    )
    await ctx.browser.eval("ada", "window.demo.room.localParticipant.setMetadata('back')")
    await eventually(
        lambda: watcher.remote_participants[ada_id].metadata == "back", what="metadata"
    )
    return {"events": events, "same_sid": same_sid, "left": left}


# --------------------------------------------------------------------------- joining again

SDK_JOIN = """(async () => {
  const Stagecast = await import('/static/stagecast.js');
  const room = await Stagecast.join(%s);
  window.room = room;
  window.events = [];
  for (const e of ['reconnecting', 'reconnected', 'disconnected']) {
    room.on(e, (reason) => window.events.push(reason ? `${e} ${reason}` : e));
  }
  window.subscribed = [];
  room.on('stream-subscribed', (s, p) => window.subscribed.push(`${p.id} ${s.kind} ${s.trackSid}`));
  return {id: room.localParticipant.id, sid: room.localParticipant.sid};
})()"""


async def sdk_page(ctx: Context, page: str, **join: Any) -> dict[str, Any]:
    """Open a page and join with the SDK itself (`window.room`); its {id, sid}."""
    await ctx.browser.open(page, f"{ctx.url}/")
    joined: dict[str, Any] = await ctx.browser.eval(page, SDK_JOIN % json.dumps(join))
    return joined


async def edge_id_of(ctx: Context) -> str:
    """The id of the stack's (only) edge, from its heartbeat."""
    import nats

    from schemas import subjects
    from schemas.api import EdgeHeartbeat
    from schemas.codec import decode

    nc = await nats.connect(ctx.stack.nats.url)
    try:
        sub = await nc.subscribe(subjects.EDGE_HEARTBEAT)
        async with asyncio.timeout(10):
            while True:
                beat = decode((await sub.next_msg(timeout=10)).data)
                if isinstance(beat, EdgeHeartbeat):
                    return beat.edge_id
    finally:
        await nc.close()


async def drop_edge_sessions(ctx: Context, edge_id: str) -> None:
    """Make the statekeeper believe the edge is gone while its sockets stay open: its
    sessions enter the departure grace and are removed when it ends (`SESSION_LOST`)."""
    import nats

    from schemas import subjects
    from schemas.api import EdgeGone
    from schemas.clock import now_ms
    from schemas.codec import encode

    nc = await nats.connect(ctx.stack.nats.url)
    try:
        await nc.publish(subjects.EDGE_HEARTBEAT, encode(EdgeGone(edge_id=edge_id, at=now_ms())))
        await nc.flush()
    finally:
        await nc.close()


async def remove_silently(ctx: Context, room: str, sid: str) -> None:
    """Remove a session from the room log's side without telling its socket (NOT_JOINED)."""
    import nats

    from roomlog.log import RoomLog
    from schemas.clock import now_ms
    from schemas.log import LeaveRequested

    nc = await nats.connect(ctx.stack.nats.url)
    try:
        await RoomLog(nc.jetstream()).append(
            LeaveRequested(room_id=room, at=now_ms(), sid=sid), f"silent-removal-{sid}"
        )  # a message id per sid: JetStream drops a repeated one as a duplicate
    finally:
        await nc.close()


async def server_view(ctx: Context, room: str) -> dict[str, Any]:
    """RoomService.list_participants: id -> {sid, metadata, tracks: [[kind, sid, muted]]}."""
    page = await ctx.stack.api.list_participants(room)
    return {
        p.id: {
            "sid": p.sid,
            "metadata": p.metadata,
            "tracks": sorted([t.kind, t.sid, t.muted] for t in p.tracks),
        }
        for p in page.participants
    }


PUBLISH_CAMERA_AND_MUTED_MIC = """(async () => {
  const me = window.room.localParticipant;
  window.camera = await me.publishCamera();
  window.mic = await me.publishMicrophone();
  await window.mic.mute();
  return {video: window.camera.sid, audio: window.mic.sid};
})()"""

PUBLICATIONS = """(() => {
  const me = window.room.localParticipant;
  return {
    sid: me.sid, id: me.id, rejoins: window.room.session.rejoins,
    same_objects: me.tracks.get('video') === window.camera && me.tracks.get('audio') === window.mic,
    video: window.camera.sid, audio: window.mic.sid, mic_muted: window.mic.muted,
  };
})()"""


@scenario("session_lost", forwarders=1)
async def session_lost(ctx: Context) -> dict[str, Any]:
    """The server drops the page's session while its socket stays open (`SESSION_LOST`):
    the page joins again (same identity, new sid), republishes its camera and its muted
    microphone, and restores its subscription to a Python speaker's video."""
    from aiortc.mediastreams import VideoStreamTrack

    room = "session-lost"
    await ctx.stack.api.create_room(room, departure_timeout=2)
    grace = await ctx.python_peer("grace", room)
    await grace.local_participant.publish(VideoStreamTrack())
    at_grace: list[Any] = []

    def on_joined(participant: Any) -> None:
        if participant.id == "ada":  # again after either side joined again (a new sid)
            participant.on(
                "stream-subscribed",
                lambda sub: at_grace.append(sub) if sub.kind == "video" else None,
            )

    grace.on("participant-joined", on_joined)
    before = await sdk_page(ctx, "ada", token=ctx.stack.token("ada", room), autoSubscribe=False)
    published = await ctx.browser.eval("ada", PUBLISH_CAMERA_AND_MUTED_MIC)
    await ctx.browser.wait(
        "ada", "window.room.remoteParticipants.get('grace')?.tracks.has('video')"
    )
    await ctx.browser.eval("ada", "window.room.remoteParticipants.get('grace').subscribe('video')")
    await ctx.browser.wait("ada", "window.subscribed", "s => s.length === 1")
    await eventually(lambda: at_grace, what="grace subscribed to ada's video", timeout=20)

    await drop_edge_sessions(ctx, await edge_id_of(ctx))

    events = await ctx.browser.wait(
        "ada", "window.events", "e => e.includes('reconnected')", timeout=30
    )
    after = await ctx.browser.eval("ada", PUBLICATIONS)
    # The restored subscription delivers grace's (republished) video again.
    subscribed = await ctx.browser.wait(
        "ada", "window.subscribed", "s => s.length >= 2", timeout=25
    )
    want = {"video": after["video"], "audio": after["audio"]}

    async def republished() -> bool:
        view = await server_view(ctx, room)
        tracks = {kind: sid for kind, sid, _muted in view.get("ada", {}).get("tracks", [])}
        return tracks == want and view["ada"]["sid"] == after["sid"]

    await eventually(republished, what="ada's tracks published again", timeout=20)
    view = await server_view(ctx, room)
    # grace (a Python SDK client on the same edge) joined again too and decodes the video.
    await eventually(lambda: len(at_grace) >= 2, what="grace got ada's video again", timeout=25)
    got, _last = await frames(at_grace[-1].video, 5)
    return {
        "before": before,
        "published": published,
        "events": await ctx.browser.eval("ada", "window.events"),
        "events_at_reconnected": events,
        "after": after,
        "subscribed": subscribed,
        "server": view,
        "video_frames_at_grace": got,
    }


@scenario("session_gone")
async def session_gone(ctx: Context) -> dict[str, Any]:
    """The server removes the page's session without telling its socket: a request is
    answered `NOT_JOINED` (the page joins again and retries it), and a resume of a removed
    session is refused `RESUME_FAILED` (the page joins again instead)."""
    room = "session-gone"
    grace = await ctx.python_peer("grace", room)
    first = await sdk_page(ctx, "ada", token=ctx.stack.token("ada", room))
    await remove_silently(ctx, room, first["sid"])

    async def ada_removed() -> bool:
        return "ada" not in await server_view(ctx, room)

    await eventually(ada_removed, what="ada removed")
    await ctx.browser.eval("ada", "window.room.localParticipant.setMetadata('after')")
    not_joined = {
        "events": await ctx.browser.eval("ada", "window.events"),
        "sid": await ctx.browser.eval("ada", "window.room.localParticipant.sid"),
        "server": await server_view(ctx, room),
    }
    # Now the socket drops too (as a dead network would) after a silent removal.
    await remove_silently(ctx, room, not_joined["sid"])
    await eventually(ada_removed, what="ada removed again")
    await ctx.browser.eval("ada", "window.events = []; window.room.connection.abort()")
    events = await ctx.browser.wait(
        "ada",
        "window.events",
        "e => e.includes('reconnected') || e.some(x => x.startsWith('disc'))",
    )
    await ctx.browser.eval("ada", "window.room.localParticipant.setMetadata('again')")

    async def back() -> bool:
        return bool((await server_view(ctx, room)).get("ada", {}).get("metadata") == "again")

    await eventually(back, what="ada's metadata on the new session")
    resume_failed = {
        "events": events,
        "sid": await ctx.browser.eval("ada", "window.room.localParticipant.sid"),
        "rejoins": await ctx.browser.eval("ada", "window.room.session.rejoins"),
        "server": await server_view(ctx, room),
    }
    del grace
    return {"first": first, "not_joined": not_joined, "resume_failed": resume_failed}


@scenario("join_retried")
async def join_retried(ctx: Context) -> dict[str, Any]:
    """An edge over its connection cap refuses the first join (`error` + close 4019): the
    page retries the same URL with the same `join_key`, so the edge derives the same sid."""
    from urllib.parse import urlsplit

    import msgpack
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from schemas.client import Error
    from schemas.codec import encode

    upstream_url = f"ws://{urlsplit(ctx.url).netloc}/rtc"
    joins: list[dict[str, Any]] = []

    async def pump(source: Any, sink: Any) -> None:
        with contextlib.suppress(Exception):
            async for message in source:
                await sink.send(message)

    async def refuse_once_then_proxy(ws: Any) -> None:
        first = await ws.recv()
        joins.append(msgpack.unpackb(first))
        if len(joins) == 1:
            refusal = Error(id=None, code="TOO_MANY_CONNECTIONS", message="over the cap")
            await ws.send(encode(refusal))
            await ws.close(4019, "TOO_MANY_CONNECTIONS")
            return
        async with connect(upstream_url) as upstream:
            await upstream.send(first)
            tasks = [
                asyncio.create_task(pump(ws, upstream)),
                asyncio.create_task(pump(upstream, ws)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

    room = "join-retried"
    token = ctx.stack.token(None, room)  # the edge generates the participant id from the key
    async with serve(refuse_once_then_proxy, "127.0.0.1", 0) as proxy:
        port = next(iter(proxy.sockets)).getsockname()[1]
        joined = await sdk_page(
            ctx,
            "ada",
            token=token,
            url=f"ws://127.0.0.1:{port}",
            options={"backoffInitial": 100},
        )
        view = await server_view(ctx, room)
        await ctx.browser.eval("ada", "window.room.leave()")
    return {
        "token": token,
        "joined": joined,
        "joins": [{k: v for k, v in j.items() if k != "token"} for j in joins],
        "server": view,
    }


@scenario("write_across_freeze")
async def write_across_freeze(ctx: Context) -> dict[str, Any]:
    """The page sets its metadata while nats-server is frozen: the edge answers
    `UNAVAILABLE`, the SDK sends the request again with the same id; after the thaw the
    call resolves, and the update is applied once (`tests.freezing`)."""
    from tests.freezing import frozen, metadata_copies, unavailable_answers

    room = "write-across-freeze"
    joined = await sdk_page(ctx, "ada", token=ctx.stack.token("ada", room))

    async def refused_twice() -> bool:
        return await unavailable_answers(ctx.url) >= 2

    with frozen(ctx.stack.nats):
        await ctx.browser.eval(
            "ada",
            """(() => {
              window.outcome = null;
              window.room.localParticipant.setMetadata('late').then(
                () => { window.outcome = 'ok'; },
                (err) => { window.outcome = `${err.code}: ${err.message}`; });
              return true;
            })()""",
        )
        await eventually(refused_twice, timeout=20, what="two UNAVAILABLE answers")
    outcome = await ctx.browser.wait("ada", "window.outcome", timeout=30)
    stored, on_time = await metadata_copies(ctx.stack.nats.url, "late")
    return {
        "joined": joined,
        "outcome": outcome,
        "server": await server_view(ctx, room),
        "stored": stored,
        "on_time": on_time,
    }


# --------------------------------------------------------------------------- media

REMOTE_MEDIA = """(async () => {
  const room = window.demo.room;
  const stats = await room.media.stats();
  const inbound = Object.values(stats.subscribers);
  const video = inbound.find((s) => s.kind === 'video') ?? {};
  const audio = inbound.find((s) => s.kind === 'audio') ?? {};
  const videos = [...document.querySelectorAll('.tile:not(.local) video')];
  const tile = videos.find((v) => v.videoWidth > 0);
  return {
    states: [...Object.values(stats.publishers), ...inbound].map((s) => `${s.kind} ${s.state}`),
    remote_names: [...room.remoteParticipants.values()].map((p) => p.name),
    video_frames_decoded: video.framesDecoded ?? 0,
    audio_packets: audio.packets ?? 0,
    tile_video_width: tile ? tile.videoWidth : 0,
    video_codec: video.codec ?? null,
  };
})()"""


async def publish_from_page(ctx: Context, page: str) -> list[str]:
    """Start camera and microphone with the page's buttons; the published kinds."""
    await ctx.browser.click(page, "#btn-camera")
    await ctx.browser.wait(page, "window.demo.room.localParticipant.tracks.has('video')")
    await ctx.browser.click(page, "#btn-mic")
    kinds: list[str] = await ctx.browser.wait(
        page, "[...window.demo.room.localParticipant.tracks.keys()].sort()", "k => k.length === 2"
    )
    return kinds


async def frames(track: Any, count: int, timeout: float = 20.0) -> tuple[int, Any]:
    """Receive (decode) up to `count` frames of an aiortc track; how many, and the last."""
    got, last = 0, None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while got < count:
                last = await track.recv()
                got += 1
    return got, last


async def python_video(
    ctx: Context, room: str, publisher_id: str, *, listen: Callable[[Any], Any] | None = None
) -> tuple[Any, Any]:
    """A Python SDK subscriber in `room`, and its subscription to `publisher_id`'s video
    once that arrives. `listen(participant)` runs as soon as the publisher is seen, so its
    listeners miss no event."""
    subscriber = await ctx.python_peer("py-subscriber", room)
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_subscribed(subscription: Any) -> None:
        if subscription.kind == "video" and not got.done():
            got.set_result(subscription)

    def on_joined(participant: Any) -> None:
        if participant.id == publisher_id:
            participant.on("stream-subscribed", on_subscribed)
            if listen is not None:
                listen(participant)

    subscriber.on("participant-joined", on_joined)
    return subscriber, await asyncio.wait_for(got, 20)


def decode_widths(track: Any) -> tuple[list[int], asyncio.Task[None]]:
    """Decode an aiortc video track in the background: the widths decoded (growing) and
    the task (cancel it when done)."""
    widths: list[int] = []

    async def decode() -> None:
        while True:
            widths.append((await track.recv()).width)

    return widths, asyncio.create_task(decode())


@scenario("chromium_publishes", forwarders=1)
async def chromium_publishes(ctx: Context) -> dict[str, Any]:
    """Chromium publishes camera and microphone; a Python SDK subscriber decodes both."""
    room = "chromium-publishes"
    await ctx.join_page("chrome", room, "Chrome Cam")
    published = await publish_from_page(ctx, "chrome")
    chrome_id = await ctx.browser.eval("chrome", "window.demo.room.localParticipant.id")
    subscriber = await ctx.python_peer("py-subscriber", room)
    subscribed: dict[str, Any] = {}
    both = asyncio.Event()

    def on_subscribed(subscription: Any) -> None:
        subscribed[subscription.kind] = subscription
        if len(subscribed) == 2:
            both.set()

    def on_joined(participant: Any) -> None:
        if participant.id == chrome_id:
            participant.on("stream-subscribed", on_subscribed)

    subscriber.on("participant-joined", on_joined)
    await asyncio.wait_for(both.wait(), 20)
    (video_n, video), (audio_n, _audio) = await asyncio.gather(
        frames(subscribed["video"].video, 15), frames(subscribed["audio"].audio, 25)
    )
    # Muting from the page reaches the subscriber as track-muted.
    chrome = subscriber.remote_participants[chrome_id]
    await ctx.browser.click("chrome", "#btn-camera")
    await eventually(lambda: chrome.tracks["video"].muted, what="the video muted")
    muted_flag = await ctx.browser.wait(
        "chrome", "document.querySelector('.tile.local').dataset.videoMuted", "f => f === 'true'"
    )
    return {
        "muted": chrome.tracks["video"].muted,
        "muted_flag": muted_flag,
        "published": published,
        "video_frames": video_n,
        "video_size": [getattr(video, "width", 0), getattr(video, "height", 0)],
        "audio_frames": audio_n,
    }


PUBLISH_720P = (
    "window.demo.room.localParticipant.publishCamera({width: 1280, height: 720}).then((p) => p.sid)"
)


async def simulcast_camera(ctx: Context, page: str, room: str) -> tuple[str, Any]:
    """Join `page` to `room` and publish a 720p camera; its track sid and its simulcast
    track at the forwarder, once all three layers arrive there."""
    await ctx.join_page(page, room, "Chrome Cam")
    sid: str = await ctx.browser.eval(page, PUBLISH_720P)
    router = next(iter(ctx.stack.forwarders.values())).forwarder.router

    def layers() -> Any:
        track = router.simulcast(sid) if sid in router.track_ids else None
        return track if track is not None and track.available == {0, 1, 2} else None

    return sid, await eventually(layers, what="three layers at the forwarder", timeout=25)


@scenario("simulcast", forwarders=1)
async def simulcast(ctx: Context) -> dict[str, Any]:
    """Chromium publishes a 720p camera as three layers; a Python SDK subscriber's leg is
    switched low -> high -> low on the forwarder and keeps decoding through it."""
    from forwarder.layers import Quality

    room = "simulcast"
    _sid, track = await simulcast_camera(ctx, "chrome", room)
    chrome_id = await ctx.browser.eval("chrome", "window.demo.room.localParticipant.id")
    video = (await python_video(ctx, room, chrome_id))[1].video
    await eventually(lambda: len(track.legs) == 1, what="the subscriber's leg", timeout=10)
    (leg_id,) = track.legs
    seen: list[tuple[float, int]] = []

    async def decode() -> None:
        while True:
            frame = await video.recv()
            seen.append((time.monotonic(), frame.width))

    decoder = asyncio.create_task(decode())

    async def width(check: Callable[[int], bool], what: str) -> int:
        await eventually(lambda: seen and check(seen[-1][1]), what=what, timeout=10)
        return seen[-1][1]

    try:
        full = await width(lambda w: w >= 1000, "the full layer decoded")
        track.set_preference(leg_id, quality=Quality.LOW)
        start = time.monotonic()
        low = await width(lambda w: w <= 400, "the low layer decoded")
        track.set_preference(leg_id, quality=Quality.HIGH)
        high = await width(lambda w: w >= 1000, "the high layer decoded again")
        track.set_preference(leg_id, quality=Quality.LOW)
        low_again = await width(lambda w: w <= 400, "the low layer decoded again")
        await asyncio.sleep(0.5)
    finally:
        decoder.cancel()
    times = [t for t, _ in seen if t >= start]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "widths": [full, low, high, low_again],
        "frames_while_switching": len(times),
        "max_gap_ms": round(max(gaps) * 1000) if gaps else None,
        "switches": track.legs[leg_id].munger.switches,
    }


@scenario("simulcast_loss", forwarders=1)
async def simulcast_loss(ctx: Context) -> dict[str, Any]:
    """Loss on a Python subscriber's leg (dropped after the send history, so the leg's own
    receiver reports show it) steps the leg down from f; once the loss stops it climbs
    back to f."""
    room = "simulcast-loss"
    sid, track = await simulcast_camera(ctx, "chrome", room)
    service = next(iter(ctx.stack.forwarders.values()))
    await ctx.python_peer("py-subscriber", room)
    await eventually(lambda: len(track.legs) == 1, what="the subscriber's leg", timeout=20)
    ((leg_id, state),) = track.legs.items()
    await eventually(lambda: state.munger.current == 2, what="the leg on f", timeout=10)
    stream = service.forwarder.legs(leg_id.split("/")[0])[sid].stream
    stream.drop = lambda seq: seq % 4 == 0  # 25 % loss, after the history (NACK repairs it)
    lossy_at = time.monotonic()
    await eventually(lambda: state.munger.current < 2, what="a step down", timeout=10)
    stepped_down_to = state.munger.current
    down_after = time.monotonic() - lossy_at
    stream.drop = None

    def back_on_f() -> bool:
        link = state.link
        if state.munger.current != 2:
            raise AssertionError(
                f"on {state.munger.current} (target {state.munger.target}), link ceiling "
                f"{link.ceiling}, loss {link.loss}, remb {link.estimate}, hold {link.hold}, "
                f"layers {sorted(track.available)}"
            )
        return True

    await eventually(back_on_f, what="back on f", timeout=20)
    return {
        "stepped_down_to": stepped_down_to,
        "down_after_s": round(down_after, 2),
        "back_to": state.munger.current,
        "hold_s": state.link.hold,
    }


@scenario("adaptive_stream", forwarders=1)
async def adaptive_stream(ctx: Context) -> dict[str, Any]:
    """Two viewer pages watch a 720p simulcast camera, one in a small window, one in a
    large one: each reports its tile's size and gets the layer that fits it."""
    room = "adaptive-stream"
    await ctx.join_page("chrome", room, "Chrome Cam")
    sid = await ctx.browser.eval(
        "chrome",
        "window.demo.room.localParticipant.publishCamera({width: 1280, height: 720})"
        ".then((p) => p.sid)",
    )
    router = next(iter(ctx.stack.forwarders.values())).forwarder.router
    await eventually(lambda: sid in router.track_ids, what="the published track", timeout=10)
    await ctx.join_page("small", room, "Small", role="viewer", width=360, height=320)
    await ctx.join_page("large", room, "Large", role="viewer", width=1600, height=1000)
    track = router.simulcast(sid)
    assert track is not None

    def settled() -> list[tuple[tuple[int, int], int]]:
        legs = [(state.rendered, state.munger.current) for state in track.legs.values()]
        if len(legs) != 2 or any(r is None or c is None for r, c in legs):
            raise AssertionError(f"legs (rendered, layer): {legs}")
        by_size = sorted(legs, key=lambda leg: leg[0][0] * leg[0][1])
        if by_size[0][1] >= by_size[1][1]:
            raise AssertionError(f"the small tile's layer is not lower: {by_size}")
        return by_size

    (small_size, small_layer), (large_size, large_layer) = await eventually(
        settled, what="a layer per tile size", timeout=20
    )
    return {
        "small": {"rendered": small_size, "layer": small_layer},
        "large": {"rendered": large_size, "layer": large_layer},
    }


OUTBOUND_LAYERS = """(async () => {
  const entry = window.demo.room.media.publishers.get(%s);
  const out = {};
  (await entry.pc.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.rid) out[r.rid] = r.bytesSent;
  });
  return out;
})()"""


@scenario("dynacast", forwarders=1)
async def dynacast(ctx: Context) -> dict[str, Any]:
    """A Python subscriber asks for "low": Chromium's f encoding stops sending; it asks for
    "high": f sends again, and the subscriber decodes full size."""
    room = "dynacast"
    await ctx.join_page("chrome", room, "Chrome Cam")
    sid = await ctx.browser.eval(
        "chrome",
        "window.demo.room.localParticipant.publishCamera({width: 1280, height: 720})"
        ".then((p) => p.sid)",
    )
    chrome_id = await ctx.browser.eval("chrome", "window.demo.room.localParticipant.id")
    stats = OUTBOUND_LAYERS % json.dumps(sid)
    await ctx.browser.wait("chrome", stats, "o => o.q > 0 && o.h > 0 && o.f > 0", timeout=20)
    subscriber, subscription = await python_video(ctx, room, chrome_id)
    publication = subscriber.remote_participants[chrome_id].tracks["video"]
    widths, decoder = decode_widths(subscription.video)

    async def f_bytes() -> int:
        return int((await ctx.browser.eval("chrome", stats)).get("f", 0))

    async def f_paused() -> bool:
        before = await f_bytes()
        await asyncio.sleep(1.0)
        return await f_bytes() == before

    try:
        await publication.set_video_quality("low")
        await eventually(lambda: widths and widths[-1] <= 400, what="the low layer", timeout=10)
        low = widths[-1]
        paused = False
        for _ in range(10):
            if paused := await f_paused():
                break
        before = await f_bytes()
        asked = time.monotonic()
        await publication.set_video_quality("high")
        resumed_after = None
        while time.monotonic() - asked < 10:
            if await f_bytes() > before:
                resumed_after = round(time.monotonic() - asked, 2)
                break
            await asyncio.sleep(0.1)
        await eventually(lambda: widths[-1] >= 1000, what="the full layer again", timeout=10)
        high = widths[-1]
    finally:
        decoder.cancel()
    return {"low": low, "high": high, "f_paused": paused, "f_resumed_after_s": resumed_after}


TILE_QUALITY = """(() => {
  const tile = document.querySelector('.tile:not(.local)');
  const label = tile?.querySelector('.quality .layer');
  if (!label) return null;
  return {layer: tile.dataset.layer, width: +tile.dataset.frameWidth, label: label.textContent,
    menu: tile.querySelector('.quality-menu').value};
})()"""
TILE_MENU = ".tile:not(.local) .quality-menu"
LAYER_EVENTS = """(() => {
  window.layerEvents = [];
  window.demo.room.on('video-layer-changed', (p) => window.layerEvents.push(p.videoLayer));
  return true;
})()"""


@scenario("tile_quality", forwarders=1)
async def tile_quality(ctx: Context) -> dict[str, Any]:
    """A page publishes a 720p camera in three layers; a viewer page's tile (Auto: f in a
    large tile) is set to Low, then High from its menu: the label follows the layer the
    forwarder sends, and the decoded width follows the label."""
    sid, track = await simulcast_camera(ctx, "chrome", "tile-quality")
    await ctx.join_page(
        "watcher", "tile-quality", "Watcher", role="viewer", width=1600, height=1000
    )
    await ctx.browser.eval("watcher", LAYER_EVENTS)
    auto = await ctx.browser.wait(
        "watcher", TILE_QUALITY, "t => t && t.layer === 'f' && t.width >= 1000", timeout=20
    )
    (state,) = track.legs.values()
    forwarded = {"auto": state.munger.current}
    await ctx.browser.select("watcher", TILE_MENU, "low")
    low = await ctx.browser.wait(
        "watcher", TILE_QUALITY, "t => t.layer === 'q' && t.width > 0 && t.width <= 400"
    )
    forwarded["low"] = state.munger.current
    await ctx.browser.select("watcher", TILE_MENU, "high")
    high = await ctx.browser.wait(
        "watcher", TILE_QUALITY, "t => t.layer === 'f' && t.width >= 1000"
    )
    forwarded["high"] = state.munger.current
    publication = await ctx.browser.eval(
        "watcher",
        "(() => { const p = [...window.demo.room.remoteParticipants.values()][0]"
        f".publications.get({json.dumps(sid)}); return [p.videoLayer, p.videoQuality]; }})()",
    )
    events = await ctx.browser.eval("watcher", "window.layerEvents")
    return {
        "tiles": {"auto": auto, "low": low, "high": high},
        "forwarded": forwarded,
        "publication": publication,
        "events": events,
    }


STOP_Q = """(async () => {
  const media = window.demo.room.media;
  media.onLayersWanted = () => {}; // from now on this publisher ignores dynacast
  const sender = media.publishers.get(%s).pc.getSenders()[0];
  const parameters = sender.getParameters();
  for (const encoding of parameters.encodings) encoding.active = encoding.rid !== 'q';
  await sender.setParameters(parameters);
  return true;
})()"""


@scenario("python_video_layer", forwarders=1)
async def python_video_layer(ctx: Context) -> dict[str, Any]:
    """A Python subscriber of a 720p simulcast camera: its publication's `video_layer` is
    f by default, q after `set_video_quality("low")`, f after "high" (each with
    `video-layer-changed`, the decoded width following); then the publisher stops sending
    q, and "low" gets h: the property says what arrives, not what was asked for."""
    from forwarder.layers import Quality

    room = "python-video-layer"
    sid, track = await simulcast_camera(ctx, "chrome", room)
    chrome_id = await ctx.browser.eval("chrome", "window.demo.room.localParticipant.id")
    events: list[str | None] = []

    def listen(participant: Any) -> None:
        participant.on("video-layer-changed", lambda p: events.append(p.video_layer))

    subscriber, subscription = await python_video(ctx, room, chrome_id, listen=listen)
    publication = subscriber.remote_participants[chrome_id].tracks["video"]
    widths, decoder = decode_widths(subscription.video)

    async def arrives(rid: str, check: Callable[[int], bool]) -> dict[str, Any]:
        def seen() -> bool:
            return publication.video_layer == rid and bool(widths) and check(widths[-1])

        await eventually(seen, what=f"layer {rid} reported and decoded", timeout=10)
        (state,) = track.legs.values()
        return {
            "layer": publication.video_layer,
            "quality": publication.video_quality,
            "width": widths[-1],
            "forwarded": state.munger.current,
            "asked": state.requested.name.lower(),
        }

    try:
        seen = {"default": await arrives("f", lambda w: w >= 1000)}
        await publication.set_video_quality("low")
        seen["low"] = await arrives("q", lambda w: w <= 400)
        await publication.set_video_quality("high")
        seen["high"] = await arrives("f", lambda w: w >= 1000)
        await ctx.browser.eval("chrome", STOP_Q % json.dumps(sid))
        await eventually(lambda: track.available == {1, 2}, what="h and f only", timeout=10)
        await publication.set_video_quality("low")
        seen["low_without_q"] = await arrives("h", lambda w: 400 < w < 1000)
        assert (track.legs and next(iter(track.legs.values())).requested) is Quality.LOW
    finally:
        decoder.cancel()
    return {"seen": seen, "events": events}


TILE_448 = """(() => {
  const tile = document.querySelector('.tile:not(.local)');
  if (!tile || tile.querySelector('video').hidden) return false;
  tile.style.width = '448px';
  return true;
})()"""
WATCHED_LAYER = """(() => {
  const p = [...window.demo.room.remoteParticipants.values()][0]?.publications.get(%s);
  const video = document.querySelector('.tile:not(.local) video');
  return {layer: p?.videoLayer ?? null, frame: [video.videoWidth, video.videoHeight],
    element: [video.clientWidth, video.clientHeight]};
})()"""


@scenario("announced_layers", forwarders=1)
async def announced_layers(ctx: Context) -> dict[str, Any]:
    """The demo page's camera (640x360: Chrome encodes two layers at that size, so the SDK
    offers h 320x180 and f 640x360 and announces them; q would be 160x90) and a viewer
    page whose tile is 448 px wide: its leg gets f, the layer that covers the tile, where
    the 720p defaults would pick h. Then the publisher shrinks its camera
    (applyConstraints) and announces the new sizes."""
    from forwarder.layers import DEFAULT_LAYERS, choose_layer

    room = "announced-layers"
    await ctx.join_page("chrome", room, "Chrome Cam")
    await ctx.browser.click("chrome", "#btn-camera")
    sid = await ctx.browser.wait(
        "chrome", "window.demo.room.localParticipant.tracks.get('video')?.sid", "s => !!s"
    )
    router = next(iter(ctx.stack.forwarders.values())).forwarder.router

    def h_and_f() -> Any:
        track = router.simulcast(sid) if sid in router.track_ids else None
        if track is None or track.available != {1, 2}:
            raise AssertionError(f"layers {track and sorted(track.available)}")
        return track

    track = await eventually(h_and_f, what="layers h and f at the forwarder", timeout=20)
    announced = [(layer.width, layer.height) for layer in track.layers]
    await ctx.join_page("watcher", room, "Watcher", role="viewer")
    await ctx.browser.wait("watcher", TILE_448, timeout=20)

    def on_f_for_the_tile() -> Any:
        (state,) = track.legs.values()
        rendered, munger = state.rendered, state.munger
        # The target follows a size report at once; the layer forwarded at its keyframe.
        if rendered is None or rendered[0] > 460 or (munger.target, munger.current) != (2, 2):
            raise AssertionError(f"rendered {rendered}, layer {munger.current}->{munger.target}")
        return state

    state = await eventually(on_f_for_the_tile, what="f for a 448 px tile", timeout=15)
    watched = await ctx.browser.wait(
        "watcher",
        WATCHED_LAYER % json.dumps(sid),
        "w => w.layer === 'f' && w.frame[0] === 640",
        timeout=15,
    )
    by_defaults = choose_layer(DEFAULT_LAYERS, range(3), rendered=state.rendered)
    await ctx.browser.eval(
        "chrome",
        "window.demo.room.localParticipant.tracks.get('video').track"
        ".applyConstraints({width: 320, height: 180}).then(() => true)",
    )
    await eventually(
        lambda: (track.layers[2].width, track.layers[2].height) == (320, 180),
        what="the smaller camera announced",
        timeout=10,
    )
    return {
        "announced": announced,
        "rendered": list(state.rendered),
        "forwarded": state.munger.current,
        "by_defaults": by_defaults,
        "watched": watched,
        "after_resize": [(layer.width, layer.height) for layer in track.layers],
    }


@scenario("python_publishes", forwarders=1)
async def python_publishes(ctx: Context) -> dict[str, Any]:
    """A Python SDK speaker publishes aiortc's synthetic video; a viewer page plays it."""
    from aiortc.mediastreams import VideoStreamTrack

    room = "python-publishes"
    publisher = await ctx.python_peer("py-publisher", room)
    await publisher.local_participant.publish(VideoStreamTrack())
    await ctx.join_page("watcher", room, "Watcher", role="viewer")
    decoded = "s => s.video_frames_decoded > 0 && s.tile_video_width > 0"
    first = await ctx.browser.wait("watcher", REMOTE_MEDIA, decoded, timeout=25)
    await asyncio.sleep(1.5)
    later = await ctx.browser.eval("watcher", REMOTE_MEDIA)
    return {
        "frames_decoded": [first["video_frames_decoded"], later["video_frames_decoded"]],
        "video_width": later["tile_video_width"],
    }


WATCH_OFFERS = """(() => {
  const room = window.demo.room;
  const request = room.request.bind(room);
  window.offersSent = [];
  room.request = (frame) => {
    if (frame.t === 'offer') window.offersSent.push(frame.ice_restart ? 'ice_restart' : 'offer');
    return request(frame);
  };
  return true;
})()"""
"""Record the page's publisher offers from now on: a plain one, or an ICE restart (what a
connection that failed gets)."""


@scenario("forwarder_killed")
async def forwarder_killed(ctx: Context) -> dict[str, Any]:
    """Chromium publishes its camera through a forwarder process that is then SIGKILLed:
    the page hears `media_moved`, offers the camera again (same track sid) to the surviving
    forwarder, and a Python SDK subscriber decodes it again, with no unpublish meanwhile.
    The camera is offered again because of `media_moved`: without it, Chromium renews the
    connection only once ICE calls it `failed`, with an ICE restart many seconds later."""
    import signal

    import nats

    from roomlog.roles import Role
    from tests.heartbeats import watch_heartbeats
    from tests.stack_fixtures import forwarder_process

    room = "forwarder-killed"
    video_sid = "window.demo.room.localParticipant.tracks.get('video').sid"
    admin = await nats.connect(ctx.stack.nats_url(Role.ADMIN))
    try:
        beats = await watch_heartbeats(admin)
        async with forwarder_process(
            ctx.stack, beats, "FW_doomed", ctx.out / "doomed.log"
        ) as doomed:
            await ctx.join_page("chrome", room, "Chrome Cam")
            await ctx.browser.click("chrome", "#btn-camera")
            await ctx.browser.wait(
                "chrome", "window.demo.room.localParticipant.tracks.has('video')"
            )
            sid_before = await ctx.browser.eval("chrome", video_sid)
            chrome_id = await ctx.browser.eval("chrome", "window.demo.room.localParticipant.id")
            subscriber = await ctx.python_peer("py-subscriber", room)
            videos: list[Any] = []
            unpublished: list[Any] = []

            def on_joined(participant: Any) -> None:
                if participant.id == chrome_id:
                    participant.on(
                        "stream-subscribed",
                        lambda s: videos.append(s) if s.kind == "video" else None,
                    )
                    participant.on("stream-unpublished", unpublished.append)

            subscriber.on("participant-joined", on_joined)
            await eventually(lambda: videos, what="the page's video subscribed", timeout=20)
            before, _ = await frames(videos[-1].track, 10)
            await ctx.browser.eval("chrome", WATCH_OFFERS)
            await ctx.stack.start_forwarder("FW_1")
            doomed.send_signal(signal.SIGKILL)
            await asyncio.wait_for(doomed.wait(), 10)
            killed_at = time.monotonic()
            await eventually(lambda: len(videos) >= 2, what="the video again", timeout=25)
            after, _ = await frames(videos[-1].track, 10)
            resumed_s = time.monotonic() - killed_at
            sid_after = await ctx.browser.eval("chrome", video_sid)
            offers = await ctx.browser.eval("chrome", "window.offersSent")
    finally:
        await admin.close()
    return {
        "offers_after_kill": offers,
        "frames": [before, after],
        "sids": [sid_before, sid_after],
        "unpublished": len(unpublished),
        "resumed_s": round(resumed_s, 2),
    }


@scenario("two_pages", forwarders=1)
async def two_pages(ctx: Context) -> dict[str, Any]:
    """Two Chromium speakers see and hear each other; a screenshot of the first page (the
    host's view, with a small audience, one of whom raised a hand)."""
    room = "two-pages"
    await ctx.join_page("ada", room, "Ada Lovelace", role="host", width=1280, height=640)
    await publish_from_page(ctx, "ada")
    await ctx.join_page("bob", room, "Bob Kahn")
    await publish_from_page(ctx, "bob")
    names = ("Grace", "Linus", "Margaret", "Dennis", "Barbara")
    audience = [await ctx.python_peer(name, room, viewer=True) for name in names]
    await audience[2].local_participant.raise_hand()
    flowing = "s => s.video_frames_decoded > 0 && s.audio_packets > 0 && s.tile_video_width > 0"
    seen = {}
    for page in ("ada", "bob"):
        seen[page] = await ctx.browser.wait(page, REMOTE_MEDIA, flowing, timeout=25)
    await ctx.browser.click("ada", "#btn-audience-refresh")
    await ctx.browser.wait("ada", BADGE, "b => b.viewers === 5")
    await ctx.browser.wait("ada", "document.querySelectorAll('#hands button').length === 1")
    await asyncio.sleep(1.0)  # a few more frames: the fake camera's animation is mid-frame
    png = ctx.out / "demo.png"
    await ctx.browser.screenshot("ada", png)
    return {**seen, "screenshot": str(png)}


async def codec_pages(ctx: Context, codec: str) -> dict[str, Any]:
    """One Chromium page publishes its camera in `codec` (the SDK's `codec` option); the
    forwarder carries it as it is and a second page decodes it."""
    room = f"{codec}-pages"
    await ctx.join_page("ada", room, "Ada Lovelace")
    publish = f"window.demo.room.localParticipant.publishCamera(true, {{ codec: '{codec}' }})"
    track_sid = await ctx.browser.eval("ada", f"{publish}.then((p) => p.sid)")
    sent = await ctx.browser.wait(
        "ada",
        "window.demo.room.media.stats().then((s) => Object.values(s.publishers)[0] ?? {})",
        "s => s.codec && s.packets > 0",
    )
    await ctx.join_page("bob", room, "Bob Kahn")
    flowing = "s => s.video_frames_decoded > 5 && s.tile_video_width > 0"
    seen = await ctx.browser.wait("bob", REMOTE_MEDIA, flowing, timeout=25)
    router = ctx.stack.forwarders["FW_0"].forwarder.router
    carried = router.codec(track_sid)
    return {
        **seen,
        "sent_codec": sent["codec"],
        "forwarded_codec": carried.mime_type,
        "forwarded_parameters": dict(carried.parameters),
        "forwarded_packets": router.stats(track_sid).packets_forwarded,
    }


@scenario("h264_pages", forwarders=1)
async def h264_pages(ctx: Context) -> dict[str, Any]:
    return await codec_pages(ctx, "h264")


@scenario("vp9_pages", forwarders=1)
async def vp9_pages(ctx: Context) -> dict[str, Any]:
    return await codec_pages(ctx, "vp9")


@scenario("av1_pages", forwarders=1)
async def av1_pages(ctx: Context) -> dict[str, Any]:
    return await codec_pages(ctx, "av1")


TILE_ADA = """document.querySelector('.tile[data-identity="ada"]')"""
"""ada's tile on a demo page."""

NO_H264 = """(() => {
  // The test hook: this page's receivers lose H.264, as Debian's Firefox ESR has none.
  const real = RTCRtpReceiver.getCapabilities.bind(RTCRtpReceiver);
  RTCRtpReceiver.getCapabilities = (kind) => {
    const caps = real(kind);
    const codecs = caps?.codecs.filter((c) => c.mimeType.toLowerCase() !== 'video/h264');
    return caps && {...caps, codecs};
  };
  return true;
})()"""

SUBSCRIPTION_FAILURES = """(() => {
  window.failures = [];
  window.room.on('track-subscription-failed', (f, p) => window.failures.push({...f, by: p.id}));
  return true;
})()"""

SUBSCRIBED_MEDIA = """window.room.media.stats().then((s) => Object.values(s.subscribers).map(
  (x) => ({kind: x.kind, codec: x.codec ?? null, packets: x.packets, frames: x.framesDecoded})))"""


@scenario("codec_unsupported", forwarders=1)
async def codec_unsupported(ctx: Context) -> dict[str, Any]:
    """A subscriber that cannot decode a track's codec hears so at once, as a named event,
    and its other subscriptions go on. A page whose receivers lack H.264 (the test hook)
    and a Python peer (aiortc has no VP9) subscribe to a page's microphone and camera,
    published in H.264, then again in VP9."""
    from stagecast.client import RemoteParticipant, SubscriptionFailure
    from stagecast.client.events import Subscription

    room = "codecs"
    await ctx.browser.open("bob", f"{ctx.url}/")
    await ctx.browser.eval("bob", NO_H264)
    await ctx.browser.eval("bob", SDK_JOIN % json.dumps({"token": ctx.stack.token("bob", room)}))
    await ctx.browser.eval("bob", SUBSCRIPTION_FAILURES)
    py = await ctx.python_peer("py", room)
    py_failures: list[SubscriptionFailure] = []
    py_subscribed: list[Subscription] = []

    def follow(participant: RemoteParticipant) -> None:
        participant.on("track-subscription-failed", py_failures.append)
        participant.on("stream-subscribed", py_subscribed.append)

    py.on("participant-joined", follow)
    # cleo: the demo page, also without H.264, joined through its form
    query = urlencode({"room": room, "name": "cleo", "role": "speaker"})
    await ctx.browser.open("cleo", f"{ctx.url}/?{query}")
    await ctx.browser.eval("cleo", NO_H264)
    await ctx.browser.click("cleo", "#join-button")
    await ctx.browser.wait("cleo", "window.demo.room?.connectionState === 'connected'")
    await sdk_page(ctx, "ada", token=ctx.stack.token("ada", room))
    local = "window.room.localParticipant"
    await ctx.browser.eval("ada", f"{local}.publishMicrophone().then(() => true)")
    publish = local + ".publishCamera(true, {codec: '%s'}).then((p) => p.sid)"
    h264 = await ctx.browser.eval("ada", publish % "h264")
    await ctx.browser.wait("bob", "window.failures", "f => f.length > 0", timeout=20)
    cleo_flag = await ctx.browser.wait(
        "cleo",
        f"""(() => {{ const t = {TILE_ADA}; return t && [t.dataset.cannotPlay,
            [...t.querySelectorAll('.flags span')].map((s) => s.textContent)]; }})()""",
        "v => v && v[0] === 'video'",
        timeout=20,
    )
    await eventually(
        lambda: {"audio", "video"} <= {s.kind for s in py_subscribed}, what="py's subscriptions"
    )
    audio = next(s for s in py_subscribed if s.kind == "audio")
    video = next(s for s in py_subscribed if s.kind == "video")
    tracks = (audio.track, video.track)
    py_h264 = [type(await asyncio.wait_for(t.recv(), 15)).__name__ for t in tracks]

    await ctx.browser.eval("ada", f"{local}.unpublish('video').then(() => true)")
    vp9 = await ctx.browser.eval("ada", publish % "vp9")
    await eventually(lambda: py_failures, what="py's failure", timeout=20)
    bob_vp9 = await ctx.browser.wait(
        "bob",
        SUBSCRIBED_MEDIA,
        "m => m.some((x) => x.kind === 'video' && x.frames > 5)"
        " && m.some((x) => x.kind === 'audio' && x.packets > 0)",
        timeout=25,
    )
    py_audio_after = type(await asyncio.wait_for(audio.track.recv(), 15)).__name__
    cleo_after = await ctx.browser.wait(
        "cleo",
        f"""(() => {{ const t = {TILE_ADA};
            return [t.dataset.cannotPlay, t.querySelector('video').videoWidth]; }})()""",
        "v => v[0] === '' && v[1] > 0",
        timeout=25,
    )
    failures = await ctx.browser.eval("bob", "window.failures")
    return {
        "tracks": {"h264": h264, "vp9": vp9},
        "bob_failures": failures,
        "bob_media": bob_vp9,
        "py_frames": py_h264,
        "py_failures": [dataclasses.asdict(f) for f in py_failures],
        "py_audio_after": py_audio_after,
        "cleo_flag": cleo_flag,
        "cleo_after": cleo_after,
    }


@scenario("red_audio", forwarders=1)
async def red_audio(ctx: Context) -> dict[str, Any]:
    """A page publishes its microphone as Opus with RED; the forwarder passes RED to a
    page that negotiated it and the primary Opus block to a Python SDK subscriber."""
    room = "red-audio"
    await ctx.join_page("ada", room, "Ada Lovelace")
    publish = "window.demo.room.localParticipant.publishMicrophone(true, { codec: 'red' })"
    track_sid = await ctx.browser.eval("ada", f"{publish}.then((p) => p.sid)")
    ada_id = await ctx.browser.eval("ada", "window.demo.room.localParticipant.id")
    await ctx.join_page("bob", room, "Bob Kahn")
    heard = "s => s.audio_packets > 20"
    seen = await ctx.browser.wait("bob", REMOTE_MEDIA, heard, timeout=25)
    subscriber = await ctx.python_peer("py-listener", room)
    subscribed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_subscribed(subscription: Any) -> None:
        if not subscribed.done():
            subscribed.set_result(subscription)

    def on_joined(participant: Any) -> None:
        if participant.id == ada_id:
            participant.on("stream-subscribed", on_subscribed)

    subscriber.on("participant-joined", on_joined)
    subscription = await asyncio.wait_for(subscribed, 20)
    decoded, _ = await frames(subscription.audio, 25)
    forwarder = ctx.stack.forwarders["FW_0"].forwarder
    legs = [
        leg.stream
        for sid in forwarder.subscriber_ids
        for track, leg in forwarder.legs(sid).items()
        if track == track_sid and leg.stream is not None
    ]
    return {
        **seen,
        "track_codec": forwarder.router.codec(track_sid).mime_type,
        "red_sent": [s.red_sent for s in legs],
        "red_unwrapped": [s.red_unwrapped for s in legs],
        "python_frames": decoded,
    }


SPEAKING_TILES = """[...window.demo.tiles.entries()]
  .filter(([, tile]) => tile.node.classList.contains('speaking')).map(([id]) => id)"""


@scenario("speaking_tile", forwarders=1)
async def speaking_tile(ctx: Context) -> dict[str, Any]:
    """Two Python SDK speakers, one sending a tone, one silence; a viewer page outlines
    the talker's tile only, and no tile once the tone stops."""
    from aiortc.mediastreams import AudioStreamTrack

    from tests.tones import ToneTrack

    room = "speaking-tile"
    talker = await ctx.python_peer("talker", room)
    quiet = await ctx.python_peer("quiet", room)
    tone = ToneTrack()
    await talker.local_participant.publish(tone)
    await quiet.local_participant.publish(AudioStreamTrack())
    await ctx.join_page("watcher", room, "Watcher", role="viewer")
    tiles = await ctx.browser.wait(
        "watcher", "[...window.demo.tiles.keys()].sort()", "t => t.length === 2"
    )
    speaking = await ctx.browser.wait("watcher", SPEAKING_TILES, "s => s.length > 0", timeout=20)
    active = await ctx.browser.eval("watcher", "window.demo.room.activeSpeakers.map((p) => p.id)")
    tone.loud = False
    after = await ctx.browser.wait("watcher", SPEAKING_TILES, "s => s.length === 0", timeout=20)
    return {"tiles": tiles, "speaking": speaking, "active": active, "after": after}


# --------------------------------------------------------------------------- running


# --------------------------------------------------------------------------- streams and RPC

PAGE_STREAMS = """(() => {
  const room = window.room;
  window.texts = [];
  window.files = [];
  window.cut = [];
  room.registerTextStreamHandler('chat', async (reader, sender) => {
    window.texts.push({sender, text: await reader.readAll(), attributes: reader.info.attributes});
  });
  room.registerByteStreamHandler('files', async (reader, sender) => {
    const bytes = await reader.readAll();
    window.files.push({sender, size: bytes.length, sum: bytes.reduce((a, b) => (a + b) % 65521, 0),
                       name: reader.info.name, mimeType: reader.info.mimeType});
  });
  room.registerTextStreamHandler('live', async (reader) => {
    try { for await (const t of reader) window.cut.push(t); window.cut.push('END'); }
    catch (err) { window.cut.push(err.code); }
  });
  room.localParticipant.registerRpcMethod('upper', async (d) => d.payload.toUpperCase());
  room.localParticipant.registerRpcMethod('fail', async () => { throw new Error('page says no'); });
  room.localParticipant.registerRpcMethod('echo', async (d) => d.payload);
  room.localParticipant.registerRpcMethod('over', async () => 'y'.repeat(15361));
  return true;
})()"""


@scenario("streams_rpc")
async def streams_rpc(ctx: Context) -> dict[str, Any]:
    """A Python peer and a page exchange text and byte streams and call each other."""
    from stagecast.client import TextStreamReader
    from stagecast.errors import RpcError

    room = "streams"
    py = await ctx.python_peer("py", room)
    await sdk_page(ctx, "page", token=ctx.stack.token("page", room))
    await ctx.browser.eval("page", PAGE_STREAMS)
    await eventually(lambda: "page" in py.remote_participants, what="the page joined")
    await ctx.browser.wait("page", "window.room.remoteParticipants.has('py')")

    text = "".join(f"{n:05d} ünï ✓\n" for n in range(8000))  # > 100 KiB, multi-byte
    await py.local_participant.send_text(text, topic="chat", attributes={"k": "v"})
    blob = bytes(range(256)) * 200
    await py.local_participant.send_file(blob, topic="files", mime_type="image/png", name="x.png")
    texts = await ctx.browser.wait("page", "window.texts", "t => t.length > 0", timeout=20)
    files = await ctx.browser.wait("page", "window.files", "f => f.length > 0", timeout=20)

    upper = await py.local_participant.perform_rpc(
        destination_id="page", method="upper", payload="hello"
    )
    codes = []
    for method in ("fail", "missing"):
        try:
            await py.local_participant.perform_rpc(destination_id="page", method=method)
        except RpcError as exc:
            codes.append([exc.code, exc.message])

    full = "é" * 7_679 + "xx"  # 15,360 bytes of UTF-8, the RPC payload limit
    echoed = await py.local_participant.perform_rpc(
        destination_id="page", method="echo", payload=full
    )
    try:
        await py.local_participant.perform_rpc(destination_id="page", method="over")
    except RpcError as exc:
        codes.append([exc.code, "over"])

    got: list[tuple[str, str]] = []

    async def on_reply(reader: TextStreamReader, sender: str) -> None:
        got.append((sender, await reader.read_all()))

    py.register_text_stream_handler("reply", on_reply)
    py.local_participant.register_rpc_method("add", lambda d: str(sum(map(int, d.payload.split()))))
    py.local_participant.register_rpc_method("echo", lambda d: d.payload)
    py.local_participant.register_rpc_method("over", lambda d: "y" * 15_361)
    page_rpc = await ctx.browser.eval(
        "page",
        """(async () => {
          const lp = window.room.localParticipant;
          const w = await lp.streamText({topic: 'reply'});
          await w.write('from '); await w.write('the page');
          await w.close();
          const sum = await lp.performRpc({destinationId: 'py', method: 'add', payload: '2 3'});
          let code = null;
          try { await lp.performRpc({destinationId: 'py', method: 'nope'}); }
          catch (err) { code = err.code; }
          const full = 'é'.repeat(7679) + 'xx';  // 15,360 bytes of UTF-8
          const back = await lp.performRpc({destinationId: 'py', method: 'echo', payload: full});
          const echoed = back === full;
          const limits = [];
          for (const [method, payload] of [['echo', full + 'x'], ['over', '']]) {
            try { await lp.performRpc({destinationId: 'py', method, payload}); limits.push(null); }
            catch (err) { limits.push(err.code); }
          }
          return {sum, code, echoed, limits};
        })()""",
    )
    await eventually(lambda: got, what="the page's text stream", timeout=20)

    writer = await py.local_participant.stream_text(topic="live")
    await writer.write("partial")
    await ctx.browser.wait("page", "window.cut", "c => c.length > 0", timeout=20)
    await py.leave()  # mid-stream: the page's reader must fail, not hang
    cut = await ctx.browser.wait("page", "window.cut", "c => c.length > 1", timeout=20)
    return {
        "text_ok": texts[0]["text"] == text,
        "text_sender": texts[0]["sender"],
        "attributes": texts[0]["attributes"],
        "file": files[0],
        "file_sum": sum(blob) % 65521,
        "upper": upper,
        "echoed": echoed == full,
        "codes": codes,
        "got": got,
        "page_rpc": page_rpc,
        "cut": cut,
    }


@scenario("transcript_page")
async def transcript_page(ctx: Context) -> dict[str, Any]:
    """The demo page shows an agent's `transcription` text stream as it is written."""
    room = "transcript"
    await ctx.join_page("page", room, "Viewer", role="viewer")
    agent = await ctx.python_peer("scribe", room)
    writer = await agent.local_participant.stream_text(topic="transcription")
    await writer.write("   0.4s  alice  started speaking\n")
    first = await ctx.browser.wait(
        "page", "document.getElementById('transcript').textContent", "t => t.includes('alice')"
    )
    await writer.write("   2.1s  alice  stopped speaking\n")
    await writer.aclose()
    later = await ctx.browser.wait(
        "page", "document.getElementById('transcript').textContent", "t => t.includes('stopped')"
    )
    shown = await ctx.browser.eval("page", "!document.getElementById('transcript-panel').hidden")
    return {"first": first, "later": later, "shown": shown}


BrowserFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


async def run(
    name: str,
    out: Path,
    scenarios: dict[str, tuple[Scenario, int]] = SCENARIOS,
    browsers: BrowserFactory = Browser.running,
) -> dict[str, Any]:
    from tests.stack_fixtures import sdk_stack

    fn, forwarders = scenarios[name]
    started = time.monotonic()
    async with (
        sdk_stack(out / "stack", forwarders=forwarders, dev_mode=True) as stack,
        browsers() as browser,
    ):
        ready = time.monotonic() - started
        result = await asyncio.wait_for(fn(Context(stack, browser, out)), SCENARIO_TIMEOUT)
    return {"ok": True, "setup_s": round(ready, 2), **result}


def main(
    scenarios: dict[str, tuple[Scenario, int]] = SCENARIOS,
    browsers: BrowserFactory = Browser.running,
) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=sorted(scenarios))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the dev key pair is short by design
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stack").mkdir(exist_ok=True)
    os.chdir(REPO)
    try:
        result = asyncio.run(run(args.scenario, args.out, scenarios, browsers))
    except BaseException as exc:
        result = {"ok": False, "error": "".join(traceback.format_exception(exc))}
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
