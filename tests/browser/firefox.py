"""Firefox ESR scenarios, run inside a private network namespace by tests/test_firefox.py.

``python -m tests.browser.firefox SCENARIO OUT_DIR``: as `tests.browser.driver` (the same
stack, the same helpers), with pages in two browsers: a page whose name starts with
``firefox`` opens in Debian's Firefox ESR (`run_firefox.mjs`, puppeteer-core over WebDriver
BiDi), any other in Chromium (`run.mjs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tests.browser import driver
from tests.browser.driver import (
    REMOTE_MEDIA,
    RUN_FIREFOX_MJS,
    RUN_MJS,
    SUBSCRIBED_MEDIA,
    SUBSCRIPTION_FAILURES,
    Browser,
    Context,
    Scenario,
    frames,
    main,
    publish_from_page,
    sdk_page,
)
from tests.polling import eventually

SCENARIOS: dict[str, tuple[Scenario, int]] = {}
"""Scenario name -> (coroutine, forwarders it needs)."""


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a Firefox scenario (each has one forwarder)."""
    return driver.scenario(name, forwarders=1, registry=SCENARIOS)


def engine_of(page: str) -> Path:
    """The node driver a page runs under: Firefox for pages named ``firefox...``."""
    return RUN_FIREFOX_MJS if page.startswith("firefox") else RUN_MJS


class Browsers:
    """Pages spread over Firefox ESR and Chromium (`engine_of`), driven as one `Pages`.

    Both browsers start at once (every Firefox scenario has Chromium pages too): their
    launches overlap each other and the scenario's first steps."""

    def __init__(self, engines: dict[Path, Browser]) -> None:
        self._engines = engines
        self._pages: dict[str, Browser] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[Browsers]:
        async with contextlib.AsyncExitStack() as exits:
            engines = {
                script: await exits.enter_async_context(Browser.running(script))
                for script in (RUN_FIREFOX_MJS, RUN_MJS)
            }
            yield cls(engines)

    def _of(self, page: str) -> Browser:
        browser = self._pages.get(page)
        if browser is None:
            raise KeyError(f"no page named {page} was opened")
        return browser

    async def open(self, page: str, url: str, **size: int) -> None:
        browser = self._engines[engine_of(page)]
        self._pages[page] = browser
        await browser.open(page, url, **size)

    async def eval(self, page: str, expr: str) -> Any:
        return await self._of(page).eval(page, expr)

    async def wait(
        self, page: str, expr: str, until: str = "Boolean", timeout: float = 15.0
    ) -> Any:
        return await self._of(page).wait(page, expr, until, timeout)

    async def click(self, page: str, selector: str) -> None:
        await self._of(page).click(page, selector)

    async def select(self, page: str, selector: str, value: str) -> None:
        await self._of(page).select(page, selector, value)

    async def screenshot(self, page: str, path: Path) -> None:
        await self._of(page).screenshot(page, path)


# --------------------------------------------------------------------------- helpers


class Steps:
    """Seconds from the scenario's start to each step (in its result: where time goes)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.at: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        self.at[name] = round(time.monotonic() - self.start, 2)


LOCAL_ID = "window.demo.room.localParticipant.id"

LISTEN_FOR_DATA = """(() => {
  window.got = [];
  window.demo.room.on('data-received', (m) => window.got.push(
    {text: new TextDecoder().decode(m.payload), sender: m.senderId, topic: m.topic}));
  window.demo.room.localParticipant.registerRpcMethod('echo', async (d) => `${d.payload}!`);
  return true;
})()"""


def subscriptions_of(subscriber: Any, publisher_id: str, kinds: int) -> asyncio.Future[Any]:
    """A future of {kind: subscription} once `subscriber` (a Python SDK room) subscribed
    to `kinds` tracks of `publisher_id`."""
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    got: dict[str, Any] = {}

    def on_subscribed(subscription: Any) -> None:
        got[subscription.kind] = subscription
        if len(got) == kinds and not done.done():
            done.set_result(dict(got))

    def on_joined(participant: Any) -> None:
        if participant.id == publisher_id:
            participant.on("stream-subscribed", on_subscribed)

    subscriber.on("participant-joined", on_joined)
    return done


def rid_bytes(sid: str) -> str:
    """JS: bytes sent per simulcast rid by this SDK page's connection for track `sid`."""
    return f"""(async () => {{
      const entry = window.room.media.publishers.get({json.dumps(sid)});
      const out = {{}};
      (await entry.pc.getStats()).forEach((r) => {{
        if (r.type === 'outbound-rtp' && r.rid) out[r.rid] = r.bytesSent;
      }});
      return out;
    }})()"""


def layers_at(router: Any, sid: str, wanted: set[int]) -> Callable[[], bool]:
    """A check that the forwarder receives at least the layers `wanted` of track `sid`
    (else it says which it has)."""

    def check() -> bool:
        track = router.simulcast(sid) if sid in router.track_ids else None
        available = None if track is None else set(track.available)
        if available is None or not wanted <= available:
            raise AssertionError(f"layers at the forwarder: {available}")
        return True

    return check


SDK_PUBLISH_720P = (
    "window.room.localParticipant.publishCamera({width: 1280, height: 720}).then((p) => p.sid)"
)

PLAYING = """(async () => {
  const sid = %s;
  const entry = window.room.media.subscribers.get(sid);
  if (!entry?.subscription) return null;
  window.players ??= {};
  if (!window.players[sid]) {
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    video.srcObject = entry.subscription.stream;
    document.body.append(video);
    window.players[sid] = video;
  }
  const stats = (await window.room.media.stats()).subscribers[sid] ?? {};
  const width = window.players[sid].videoWidth;
  return {codec: stats.codec, frames: stats.framesDecoded ?? 0, width};
})()"""
"""JS: a subscribed video's decoding at this SDK page; it plays in an element of its own,
whose size nobody reports (no adaptive-stream cap on its layer)."""


# --------------------------------------------------------------------------- scenarios


@scenario("firefox_meets_chromium")
async def firefox_meets_chromium(ctx: Context) -> dict[str, Any]:
    """The demo page's main flow with Firefox: it joins and publishes camera and microphone
    (a Python SDK subscriber decodes both), a Chromium page joins and publishes, each page
    decodes the other, data messages and an RPC go both ways, and Firefox leaves."""
    room = "firefox-chromium"
    step = Steps()
    await ctx.join_page("firefox", room, "Fiona Firefox")
    step("firefox joined")
    firefox_id = await ctx.browser.eval("firefox", LOCAL_ID)
    listener = await ctx.python_peer("py-subscriber", room)
    at_python = subscriptions_of(listener, firefox_id, 2)
    published = await publish_from_page(ctx, "firefox")
    step("firefox published")
    sent = await ctx.browser.eval("firefox", "window.demo.room.media.stats()")
    subscribed = await asyncio.wait_for(at_python, 20)
    (video_n, video), (audio_n, _audio) = await asyncio.gather(
        frames(subscribed["video"].video, 15), frames(subscribed["audio"].audio, 25)
    )
    step("python decoded")
    await ctx.join_page("chrome", room, "Chrome Cam")
    chrome_id = await ctx.browser.eval("chrome", LOCAL_ID)
    await publish_from_page(ctx, "chrome")
    step("chrome joined and published")
    flowing = "s => s.video_frames_decoded > 5 && s.audio_packets > 20 && s.tile_video_width > 0"
    seen = {}
    for page in ("firefox", "chrome"):
        seen[page] = await ctx.browser.wait(page, REMOTE_MEDIA, flowing, 25)
        step(f"{page} decoded")

    for page in ("firefox", "chrome"):
        await ctx.browser.eval(page, LISTEN_FOR_DATA)
    at_listener: list[tuple[str | None, bytes]] = []
    listener.on("data-received", lambda m: at_listener.append((m.sender_id, m.payload)))
    await ctx.browser.eval(
        "firefox", "window.demo.room.localParticipant.publishData('from firefox', {topic: 'chat'})"
    )
    await ctx.browser.eval(
        "chrome", "window.demo.room.localParticipant.publishData('from chromium', {topic: 'chat'})"
    )
    await listener.local_participant.publish_data(b"from python", topic="chat")
    two = "g => g.length >= 2"
    data = {page: await ctx.browser.wait(page, "window.got", two) for page in ("firefox", "chrome")}
    await eventually(lambda: at_listener, what="firefox's data message at the Python peer")
    step("data")
    rpc = {
        "firefox_to_chrome": await ctx.browser.eval(
            "firefox",
            "window.demo.room.localParticipant.performRpc("
            f"{{destinationId: {json.dumps(chrome_id)}, method: 'echo', payload: 'ff'}})",
        ),
        "chrome_to_firefox": await ctx.browser.eval(
            "chrome",
            "window.demo.room.localParticipant.performRpc("
            f"{{destinationId: {json.dumps(firefox_id)}, method: 'echo', payload: 'cr'}})",
        ),
    }

    step("rpc")
    left: list[str] = []
    listener.on("participant-left", lambda p: left.append(p.id))
    await ctx.browser.click("firefox", "#btn-leave")
    gone = (
        f"!window.demo.room.remoteParticipants.has({json.dumps(firefox_id)})"
        f" && !document.querySelector('.tile[data-identity=\"{firefox_id}\"]')"
    )
    chrome_after_leave = await ctx.browser.wait("chrome", gone)
    firefox_back_at_join = await ctx.browser.wait(
        "firefox", "window.demo.room === null && !document.getElementById('join-view').hidden"
    )
    await eventually(lambda: firefox_id in left, what="the Python peer saw firefox leave")
    step("left")
    return {
        "steps": step.at,
        "firefox_id": firefox_id,
        "chrome_id": chrome_id,
        "published": published,
        "firefox_sent": sent["publishers"],
        "python_video_frames": video_n,
        "python_video_size": [getattr(video, "width", 0), getattr(video, "height", 0)],
        "python_audio_frames": audio_n,
        "seen": seen,
        "data": data,
        "data_at_python": [[sender, payload.decode()] for sender, payload in at_listener],
        "rpc": rpc,
        "chrome_after_leave": chrome_after_leave,
        "firefox_back_at_join": firefox_back_at_join,
        "left_at_python": left,
    }


async def firefox_subscribes_to_simulcast(ctx: Context, room: str, step: Steps) -> dict[str, Any]:
    """Chromium publishes three layers; the Firefox SDK page (it subscribes to everything)
    plays them, asking for low and then high: the decoded width follows."""
    router = next(iter(ctx.stack.forwarders.values())).forwarder.router
    await sdk_page(ctx, "chrome", token=ctx.stack.token("chrome", room))
    step("chromium joined")
    sid = await ctx.browser.eval("chrome", SDK_PUBLISH_720P)
    # the full layer, which Firefox's tile asks for: dynacast may already have paused q and
    # h (nobody wants them yet) when a loaded machine gets here; asking for low brings q back
    await eventually(layers_at(router, sid, {2}), what="chromium's full layer", timeout=25)
    step("chromium layers")
    playing = PLAYING % json.dumps(sid)
    first = await ctx.browser.wait("firefox", playing, "s => s && s.width > 0", 20)
    quality = f"window.room.media.subscribers.get({json.dumps(sid)}).subscription.setVideoQuality"
    await ctx.browser.eval("firefox", f"{quality}('low')")
    low = await ctx.browser.wait("firefox", playing, "s => s.width > 0 && s.width <= 400")
    await ctx.browser.eval("firefox", f"{quality}('high')")
    high = await ctx.browser.wait("firefox", playing, "s => s.width >= 1000", 20)
    step("firefox switched chromium's layers")
    return {
        "widths": [first["width"], low["width"], high["width"]],
        "codec": high["codec"],
        "frames": high["frames"],
    }


async def firefox_publishes_simulcast(ctx: Context, room: str, step: Steps) -> dict[str, Any]:
    """Firefox publishes a 720p camera in layers q, h, f; a Python subscriber's leg goes
    low -> high, the decoded width following; Firefox stops sending h while only q is
    wanted (dynacast) and sends it again."""
    from forwarder.layers import Quality

    router = next(iter(ctx.stack.forwarders.values())).forwarder.router
    joined = await sdk_page(ctx, "firefox", token=ctx.stack.token("fiona", room))
    step("firefox joined")
    sid = await ctx.browser.eval("firefox", SDK_PUBLISH_720P)
    step("firefox published")
    offered = await ctx.browser.eval(
        "firefox",
        f"window.room.media.publishers.get({json.dumps(sid)}).pc.localDescription.sdp"
        ".split('\\r\\n').filter((l) => /^a=(simulcast|rid):/.test(l))",
    )
    await eventually(layers_at(router, sid, {0, 1}), what="firefox's q and h", timeout=20)
    step("firefox layers q and h")
    listener = await ctx.python_peer("py-subscriber", room)
    video = (await asyncio.wait_for(subscriptions_of(listener, joined["id"], 1), 20))["video"].video
    track = router.simulcast(sid)
    assert track is not None
    await eventually(lambda: len(track.legs) == 1, what="the Python subscriber's leg", timeout=10)
    (leg_id,) = track.legs
    widths: list[int] = []

    async def decode() -> None:
        while True:
            widths.append((await video.recv()).width)

    async def width(check: Callable[[int], bool], what: str) -> int:
        await eventually(lambda: widths and check(widths[-1]), what=what, timeout=10)
        return widths[-1]

    async def h_bytes() -> int:
        return int((await ctx.browser.eval("firefox", rid_bytes(sid))).get("h", 0))

    async def h_paused() -> bool:
        before = await h_bytes()
        await asyncio.sleep(1.0)
        return await h_bytes() == before

    decoder = asyncio.create_task(decode())
    try:
        first = await width(lambda w: w >= 640, "h or f decoded")
        track.set_preference(leg_id, quality=Quality.LOW)
        low = await width(lambda w: w <= 400, "the low layer decoded")
        step("python on q")
        paused = await eventually(h_paused, what="firefox's h encoding paused", timeout=10)
        step("h paused")
        track.set_preference(leg_id, quality=Quality.HIGH)
        high = await width(lambda w: w >= 640, "h or f decoded again")
        resumed = await h_bytes()
        step("python high again")
    finally:
        decoder.cancel()
    return {
        "offered": offered,
        "widths": [first, low, high],
        "h_paused": paused,
        "h_bytes_after_resume": resumed,
        "switches": track.legs[leg_id].munger.switches,
    }


@scenario("firefox_simulcast")
async def firefox_simulcast(ctx: Context) -> dict[str, Any]:
    """Simulcast both ways: Firefox publishes three layers (a Python subscriber switches
    between them, Firefox pauses what nobody takes), then decodes a Chromium camera's
    layers, following a switch from low to high."""
    room = "firefox-simulcast"
    step = Steps()
    published = await firefox_publishes_simulcast(ctx, room, step)
    viewer = await firefox_subscribes_to_simulcast(ctx, room, step)
    return {"steps": step.at, "published": published, "viewer": viewer}


CODECS = (None, "vp8", "vp9", "av1", "h264")
"""The SDK's `codec` option for video (None: the browser's own first, VP8)."""

PUBLISH_WITH = """(async () => {
  try {
    const camera = {width: 640, height: 360};
    const p = await window.room.localParticipant.publishCamera(camera, {codec: %s});
    (window.pubs ??= {})[p.sid] = p;
    return {sid: p.sid};
  } catch (err) {
    return {error: `${err.name}: ${err.message}`, tracks: window.room.localParticipant.tracks.size};
  }
})()"""


async def codec_from(
    ctx: Context, publisher: str, subscriber: str, codec: str | None
) -> dict[str, Any]:
    """`publisher` (an SDK page) publishes its camera with the `codec` option and
    `subscriber` (an SDK page subscribed to everything) plays it: what was sent, carried
    and decoded; then it unpublishes. Or why the publisher could not publish it."""
    published = await ctx.browser.eval(publisher, PUBLISH_WITH % json.dumps(codec))
    if "error" in published:
        return dict(published)
    sid = published["sid"]
    sent = await ctx.browser.wait(
        publisher,
        f"window.room.media.stats().then((s) => s.publishers[{json.dumps(sid)}] ?? {{}})",
        "s => s.codec && s.packets > 0",
    )
    seen = await ctx.browser.wait(
        subscriber, PLAYING % json.dumps(sid), "s => s && s.frames > 5 && s.width > 0", 20
    )
    router = next(iter(ctx.stack.forwarders.values())).forwarder.router
    carried = router.codec(sid)
    await ctx.browser.eval(
        publisher, f"window.room.localParticipant.unpublish(window.pubs[{json.dumps(sid)}])"
    )
    return {
        "sent": sent["codec"],
        "forwarded": carried.mime_type,
        "decoded": seen["codec"],
        "frames_decoded": seen["frames"],
        "width": seen["width"],
    }


@scenario("firefox_codecs")
async def firefox_codecs(ctx: Context) -> dict[str, Any]:
    """Firefox publishes its camera with each video codec the SDK's `codec` option names,
    one after the other, to a Chromium page; then Chromium publishes VP9 and AV1 to
    Firefox. Per codec: what was sent, what the forwarder carried, what the other browser
    decoded (or why Firefox could not publish it)."""
    room = "firefox-codecs"
    step = Steps()
    await sdk_page(ctx, "firefox", token=ctx.stack.token("fiona", room))
    offered = await ctx.browser.eval(
        "firefox", "RTCRtpSender.getCapabilities('video').codecs.map((c) => c.mimeType)"
    )
    await sdk_page(ctx, "chrome", token=ctx.stack.token("chrome", room))
    step("pages joined")
    from_firefox: dict[str, Any] = {}
    for codec in CODECS:
        from_firefox[codec or "default"] = await codec_from(ctx, "firefox", "chrome", codec)
        step(f"firefox {codec}")
    to_firefox: dict[str, Any] = {}
    for codec in ("vp9", "av1"):
        to_firefox[codec] = await codec_from(ctx, "chrome", "firefox", codec)
        step(f"chromium {codec}")
    return {
        "steps": step.at,
        "firefox_video_codecs": offered,
        "codecs": from_firefox,
        "to_firefox": to_firefox,
    }


@scenario("firefox_no_h264")
async def firefox_no_h264(ctx: Context) -> dict[str, Any]:
    """Chromium publishes its microphone and an H.264 camera to Firefox ESR, which (without
    the OpenH264 plugin) cannot decode H.264: what Firefox can receive, the failures it
    heard, and the media it gets anyway."""
    room = "firefox-no-h264"
    await sdk_page(ctx, "firefox", token=ctx.stack.token("fiona", room))
    receivable = await ctx.browser.eval(
        "firefox", "RTCRtpReceiver.getCapabilities('video').codecs.map((c) => c.mimeType)"
    )
    await ctx.browser.eval("firefox", SUBSCRIPTION_FAILURES)
    await sdk_page(ctx, "chrome", token=ctx.stack.token("chrome", room))
    local = "window.room.localParticipant"
    await ctx.browser.eval("chrome", f"{local}.publishMicrophone().then(() => true)")
    sid = await ctx.browser.eval(
        "chrome", f"{local}.publishCamera(true, {{codec: 'h264'}}).then((p) => p.sid)"
    )
    if "video/H264" in receivable:  # the plugin is there after all: it plays
        await ctx.browser.wait("firefox", PLAYING % json.dumps(sid), "s => s && s.frames > 5", 20)
    else:
        await ctx.browser.wait("firefox", "window.failures", "f => f.length > 0", 20)
    media = await ctx.browser.wait(
        "firefox", SUBSCRIBED_MEDIA, "m => m.some((x) => x.kind === 'audio' && x.packets > 0)"
    )
    failures = await ctx.browser.eval("firefox", "window.failures")
    return {"receivable": receivable, "track": sid, "failures": failures, "media": media}


if __name__ == "__main__":
    main(SCENARIOS, Browsers.running)
