"""The browser SDK and the demo page in a real headless Chromium.

Each browser test runs one scenario of `tests/browser/driver.py` in a private network
namespace (``unshare --net``, only loopback up) where it starts its own stack, Chromium
(through npm ``playwright-core`` and `tests/browser/run.mjs`) and Python SDK peers, and
reports what it saw as JSON. The namespace keeps WebRTC on 127.0.0.1 and guarantees
cleanup: when the driver ends, the kernel ends every process in it.

Chromium, ``unshare`` and playwright-core are set up by ``make browser-deps`` (a
prerequisite of ``make test``). When one is missing the tests FAIL and say what to run
(`tests/browser/isolated.py`): the project installs them itself, so a skip would hide a
broken set-up.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from access.tokens import verify_token
from edge.join import keyed_ids
from edge.page import CONTENT_TYPES, STATIC_DIR
from schemas.client import Ack, JoinAccepted, ParticipantsPage, TrackPublished
from schemas.codec import encode, to_wire
from schemas.errors import CLOSE_CODES
from schemas.models import Counts, Grant, ParticipantInfo, RoomInfo, TrackInfo
from tests.browser.isolated import run_scenario
from tests.edge_fixtures import API_KEY, API_SECRET, services
from tests.stack_fixtures import API_KEY as STACK_KEY
from tests.stack_fixtures import API_SECRET as STACK_SECRET

REPO = Path(__file__).resolve().parents[1]
DEMO_PNG = REPO / "docs" / "demo.png"


# --------------------------------------------------------------------------- media


@pytest.mark.timeout(70)
def test_chromium_publishes_and_python_decodes(tmp_path: Path) -> None:
    """(a) Chromium publishes camera and microphone; a Python SDK subscriber decodes them."""
    result = run_scenario("chromium_publishes", tmp_path)
    assert result["video_frames"] >= 10, result
    assert result["video_size"][0] > 0 and result["video_size"][1] > 0, result
    assert result["audio_frames"] >= 10, result
    assert set(result["published"]) == {"audio", "video"}, result
    assert result["muted"] and result["muted_flag"] == "true", "mute reaches the subscriber"


@pytest.mark.timeout(70)
def test_simulcast_layers_switch_for_a_python_subscriber(tmp_path: Path) -> None:
    """Three layers of a Chromium camera reach the forwarder; a Python subscriber's leg
    goes full -> low -> high -> low, the decoded width following, with no gap over 500 ms."""
    result = run_scenario("simulcast", tmp_path)
    full, low, high, low_again = result["widths"]
    assert full >= 1000 and high >= 1000, result
    assert low <= 400 and low_again <= 400, result
    assert result["max_gap_ms"] is not None and result["max_gap_ms"] <= 500, result
    assert result["switches"] >= 4, result


@pytest.mark.timeout(70)
def test_dynacast_pauses_an_unwatched_layer_and_resumes_it(tmp_path: Path) -> None:
    """With its only subscriber on "low", the Chromium publisher's f encoding stops
    sending; asking for "high" starts it again within 2 s and full size is decoded."""
    result = run_scenario("dynacast", tmp_path)
    assert result["low"] <= 400 and result["high"] >= 1000, result
    assert result["f_paused"], result
    resumed = result["f_resumed_after_s"]
    assert resumed is not None and resumed <= 2.0, result


@pytest.mark.timeout(70)
def test_loss_steps_a_simulcast_leg_down_and_back_up(tmp_path: Path) -> None:
    """25 % loss on a subscriber's leg takes it off the full layer; without loss it comes
    back to it."""
    result = run_scenario("simulcast_loss", tmp_path)
    assert result["stepped_down_to"] in (0, 1), result
    assert result["back_to"] == 2, result


@pytest.mark.timeout(70)
def test_a_small_video_element_gets_a_lower_layer(tmp_path: Path) -> None:
    """Adaptive stream: a page rendering the camera small gets a lower simulcast layer than
    one rendering it large."""
    result = run_scenario("adaptive_stream", tmp_path)
    assert result["small"]["layer"] < result["large"]["layer"], result


@pytest.mark.timeout(70)
def test_tile_menu_switches_the_layer_and_its_label_follows(tmp_path: Path) -> None:
    """The demo page's tile menu: Low makes the label show q (the forwarder's report) and
    the decoded frames narrow; High brings f and full width back."""
    result = run_scenario("tile_quality", tmp_path)
    tiles = result["tiles"]
    assert tiles["auto"]["menu"] == "auto" and tiles["auto"]["layer"] == "f", result
    assert tiles["low"]["layer"] == "q" and 0 < tiles["low"]["width"] <= 400, result
    assert tiles["low"]["label"].startswith("q · "), result
    assert tiles["high"]["layer"] == "f" and tiles["high"]["width"] >= 1000, result
    assert tiles["high"]["label"].startswith("f · "), result
    assert result["forwarded"] == {"auto": 2, "low": 0, "high": 2}, result
    assert result["publication"] == ["f", "high"], result
    assert result["events"][-2:] == ["q", "f"], result


@pytest.mark.timeout(70)
def test_python_subscriber_sees_the_layer_it_gets(tmp_path: Path) -> None:
    """`RemoteTrackPublication.video_layer` and `video-layer-changed` follow the layer the
    forwarder sends a Python subscriber, including when that is not the one asked for."""
    result = run_scenario("python_video_layer", tmp_path)
    seen = result["seen"]
    expected = {"default": "f", "low": "q", "high": "f", "low_without_q": "h"}
    assert {name: s["layer"] for name, s in seen.items()} == expected, result
    assert [s["forwarded"] for s in seen.values()] == [2, 0, 2, 1], result
    assert seen["low"]["quality"] == "low" and seen["low_without_q"]["quality"] == "medium"
    assert seen["low_without_q"]["asked"] == "low", result
    assert result["events"] == ["f", "q", "f", "h"], result


@pytest.mark.timeout(70)
def test_a_360p_camera_in_a_448_pixel_tile_gets_its_full_layer(tmp_path: Path) -> None:
    """Issue 12: the publisher announces its real layer sizes, so a 448-px tile of the demo
    page's 640x360 camera gets f (640x360), not h (320x180) as the 720p defaults chose;
    the viewer's `publication.videoLayer` says f; a smaller camera is announced again."""
    result = run_scenario("announced_layers", tmp_path)
    assert result["announced"] == [[160, 90], [320, 180], [640, 360]], result
    assert result["forwarded"] == 2 and result["by_defaults"] == 1, result
    assert result["watched"]["layer"] == "f" and result["watched"]["frame"] == [640, 360], result
    assert result["after_resize"] == [[80, 45], [160, 90], [320, 180]], result


@pytest.mark.timeout(70)
def test_python_publishes_and_chromium_plays(tmp_path: Path) -> None:
    """(b) A Python SDK publisher's synthetic video plays in Chromium (framesDecoded grows)."""
    result = run_scenario("python_publishes", tmp_path)
    first, later = result["frames_decoded"]
    assert 0 < first < later, result
    assert result["video_width"] > 0, result


@pytest.mark.timeout(70)
def test_a_page_publishes_again_when_its_forwarder_is_killed(tmp_path: Path) -> None:
    """The browser SDK follows `media_moved`: its camera reaches a Python subscriber again
    through the surviving forwarder, under the same track sid, with no unpublish."""
    result = run_scenario("forwarder_killed", tmp_path)
    before, after = result["frames"]
    assert before >= 10 and after >= 10, result
    assert result["sids"][0] == result["sids"][1], result
    assert result["unpublished"] == 0, result
    # renewed on `media_moved`, not by the ICE restart a failed connection gets anyway
    assert result["offers_after_kill"] == ["offer"], result


@pytest.mark.timeout(70)
def test_h264_between_two_chromium_pages(tmp_path: Path) -> None:
    """A page publishes H.264 (packetization-mode 1, constrained baseline); the forwarder
    carries it without decoding and another page decodes it."""
    result = run_scenario("h264_pages", tmp_path)
    assert result["sent_codec"] == "video/H264", result
    assert result["forwarded_codec"].lower() == "video/h264", result
    assert result["forwarded_parameters"]["packetization-mode"] == "1", result
    assert result["forwarded_parameters"]["profile-level-id"] == "42e01f", result
    assert result["video_codec"] == "video/H264", result
    assert result["video_frames_decoded"] > 5 and result["tile_video_width"] > 0, result
    assert result["forwarded_packets"] > 0, result


@pytest.mark.timeout(70)
@pytest.mark.parametrize("codec", ["vp9", "av1"])
def test_vp9_and_av1_between_two_chromium_pages(tmp_path: Path, codec: str) -> None:
    """Where both ends offer it, VP9 or AV1 is forwarded as it is (never decoded); the
    receiving page decodes it, having started at a keyframe found in the payload."""
    result = run_scenario(f"{codec}_pages", tmp_path)
    mime = f"video/{codec.upper()}"
    assert result["sent_codec"] == mime, result
    assert result["forwarded_codec"] == mime, result
    assert result["video_codec"] == mime, result
    assert result["video_frames_decoded"] > 5 and result["tile_video_width"] > 0, result


@pytest.mark.timeout(90)
def test_a_subscriber_that_cannot_decode_a_codec_hears_so_at_once(tmp_path: Path) -> None:
    """`track-subscription-failed` with CODEC_UNSUPPORTED, naming the codec, in the browser
    SDK (a page without H.264) and the Python SDK (no VP9); the microphone plays on, and the
    track in a codec the subscriber has arrives. The demo page flags the tile meanwhile."""
    result = run_scenario("codec_unsupported", tmp_path)
    h264, vp9 = result["tracks"]["h264"], result["tracks"]["vp9"]
    (failure,) = result["bob_failures"]
    assert failure == {
        "by": "ada",
        "participantId": "ada",
        "kind": "video",
        "trackSid": h264,
        "reason": "CODEC_UNSUPPORTED",
        "codecs": ["video/H264"],
        "message": "this browser cannot decode video/H264",
    }, result
    media = {m["kind"]: m for m in result["bob_media"]}
    assert media["video"]["codec"] == "video/VP9" and media["video"]["frames"] > 0, media
    assert media["audio"]["packets"] > 0, media
    assert result["py_frames"] == ["AudioFrame", "VideoFrame"]  # aiortc decodes H.264
    assert result["py_failures"] == [
        {
            "participant_id": "ada",
            "kind": "video",
            "track_sid": vp9,
            "reason": "CODEC_UNSUPPORTED",
            "codecs": ["video/VP9"],
            "message": "this client cannot decode video/VP9",
        }
    ], result
    assert result["py_audio_after"] == "AudioFrame"
    # the demo page (also without H.264) flags ada's tile, then plays the VP9 camera
    cannot_play, flags = result["cleo_flag"]
    assert cannot_play == "video" and "can't play video (H264)" in flags, result
    assert result["cleo_after"][0] == "" and result["cleo_after"][1] > 0, result


@pytest.mark.timeout(70)
def test_opus_with_red_passes_through(tmp_path: Path) -> None:
    """Chromium publishes Opus with RED (RFC 2198): a page that negotiated RED gets it as
    sent, a Python SDK subscriber (no RED) gets the primary Opus block and decodes it."""
    result = run_scenario("red_audio", tmp_path)
    assert result["track_codec"] == "audio/opus", result
    assert result["audio_packets"] > 20, result
    assert sorted(n > 0 for n in result["red_sent"]) == [False, True], result
    assert sorted(n > 0 for n in result["red_unwrapped"]) == [False, True], result
    assert result["python_frames"] >= 20, result


@pytest.mark.timeout(70)
def test_the_demo_page_outlines_the_speaking_tile(tmp_path: Path) -> None:
    """A viewer page gets active-speakers-changed and outlines only the talker's tile."""
    result = run_scenario("speaking_tile", tmp_path)
    assert result["tiles"] == ["quiet", "talker"], result
    assert result["speaking"] == ["talker"], result
    assert result["active"] == ["talker"], result
    assert result["after"] == [], result


@pytest.fixture(scope="module")
def two_pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two Chromium speakers with camera and microphone in one room (run once)."""
    return run_scenario("two_pages", tmp_path_factory.mktemp("two_pages"))


@pytest.mark.timeout(70)
def test_two_pages_see_each_other(two_pages: dict[str, Any]) -> None:
    """(c) Two pages: each sees the other join and decodes the other's video."""
    for page, other in (("ada", "Bob Kahn"), ("bob", "Ada Lovelace")):
        seen = two_pages[page]
        assert seen["remote_names"] == [other], seen
        assert seen["video_frames_decoded"] > 0, seen
        assert seen["audio_packets"] > 0, seen
        assert seen["tile_video_width"] > 0, seen


@pytest.mark.timeout(70)
def test_demo_screenshot(two_pages: dict[str, Any]) -> None:
    """(f) A screenshot of the page with two speakers' video (``make demo-png`` keeps it
    in docs/demo.png)."""
    png = Path(two_pages["screenshot"])
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 640)
    assert len(data) > 50_000, "a page with two live videos is not a near-empty image"
    if os.environ.get("STAGECAST_UPDATE_DEMO_PNG") == "1":
        shutil.copyfile(png, DEMO_PNG)


# --------------------------------------------------------------------------- the page


@pytest.mark.timeout(70)
def test_watching_badge_counts_viewers(tmp_path: Path) -> None:
    """(d) The page's "N watching" badge shows speakers and viewers as they come and go."""
    result = run_scenario("badge", tmp_path)
    joined = result["after_join"]
    assert (joined["total"], joined["speakers"], joined["viewers"]) == (8, 2, 6)
    assert joined["text"].startswith("8 watching") and "6 in the audience" in joined["text"]
    left = result["after_leave"]
    assert (left["total"], left["speakers"], left["viewers"]) == (6, 2, 4)
    assert len(result["tiles"]) == 2, "the stage shows the two speakers, never the viewers"


@pytest.mark.timeout(70)
def test_host_pages_audience_and_promotes_a_raised_hand(tmp_path: Path) -> None:
    """A host walks the audience with the cursor, sees a hand and invites the viewer on stage."""
    result = run_scenario("host", tmp_path)
    listed = result["listed"]
    assert len(listed) == len(set(listed)) == 13 and result["viewer_id"] in listed
    assert result["more_hidden"], "the last page has no next cursor"
    assert result["promoted"] and result["on_stage"]
    assert result["counts"]["speakers"] == 3 and result["counts"]["viewers"] == 12  # 2 hosts
    assert result["hands_left"] == 0, "promotion lowers the hand"
    assert result["late_hand"], "a host joining after the hand went up sees it"
    assert result["notice"] == "" and result["on_stage"], "the promoted viewer publishes"
    phone = result["phone"]
    assert phone["page_width"] <= 420, f"the page is wider than a 420 px screen: {phone}"
    assert phone["actions_opacity"] == "1", "touch screens see a tile's actions without hover"
    assert max(phone["invite_heights"]) < 36, f"'Invite on stage' wraps: {phone}"
    assert len(result["host_invites"]) == 13 and max(result["host_invites"]) < 36, result


@pytest.mark.timeout(70)
def test_unfinished_ice_gathering_is_said_on_the_console(tmp_path: Path) -> None:
    result = run_scenario("gather", tmp_path)["warnings"]
    if result["state"] == "complete":
        pytest.fail(f"gathering finished: this browser cannot show the case ({result})")
    (said,) = result["said"]
    assert "ICE gathering unfinished after 300 ms" in said, said


@pytest.mark.timeout(70)
def test_page_resumes_after_a_dropped_socket(tmp_path: Path) -> None:
    """The browser SDK resumes its session on a new socket, like the Python SDK."""
    result = run_scenario("resume", tmp_path)
    assert result["events"] == ["reconnecting", "reconnected"], result
    assert result["same_sid"], result
    assert result["left"] == [], "the other client never saw the page leave"


# --------------------------------------------------------------------------- joining again


@pytest.mark.timeout(70)
def test_browser_joins_again_after_session_lost(tmp_path: Path) -> None:
    """The server drops the page's session while its socket stays open (`disconnect`
    SESSION_LOST, close 4020): the page joins again with its token (same identity, a new
    sid), republishes the same publication objects (new sids, the mute kept) and restores
    its subscription; it used to end the session instead."""
    result = run_scenario("session_lost", tmp_path)
    before, after, published = result["before"], result["after"], result["published"]
    assert result["events"] == ["reconnecting", "reconnected"], result
    assert after["id"] == before["id"] == "ada"
    assert after["sid"] != before["sid"], "a full reconnect is a new session"
    assert after["rejoins"] == 1 and after["same_objects"], after
    assert after["video"] != published["video"] and after["audio"] != published["audio"]
    assert after["mic_muted"], after
    ada = result["server"]["ada"]
    assert ada["sid"] == after["sid"]
    assert ada["tracks"] == [["audio", after["audio"], True], ["video", after["video"], False]]
    first, *_, last = result["subscribed"]
    assert first.startswith("grace video ") and last.startswith("grace video "), result
    assert last != first, "the restored subscription receives grace's republished track"
    assert result["video_frames_at_grace"] >= 5, "a Python subscriber decodes the new track"


@pytest.mark.timeout(70)
def test_browser_joins_again_on_not_joined_and_on_resume_failed(tmp_path: Path) -> None:
    """A session removed without telling its socket: a request answered NOT_JOINED makes
    the page join again and retry it (it used to reject for ever), and a resume refused
    RESUME_FAILED turns into a full reconnect (it used to end the session)."""
    result = run_scenario("session_gone", tmp_path)
    not_joined, resume_failed = result["not_joined"], result["resume_failed"]
    assert not_joined["events"] == ["reconnecting", "reconnected"], result
    assert not_joined["sid"] != result["first"]["sid"]
    ada = not_joined["server"]["ada"]
    assert (ada["sid"], ada["metadata"]) == (not_joined["sid"], "after"), "the request retried"
    assert resume_failed["events"] == ["reconnecting", "reconnected"], result
    assert resume_failed["rejoins"] == 2
    assert resume_failed["sid"] not in (not_joined["sid"], result["first"]["sid"])
    ada = resume_failed["server"]["ada"]
    assert (ada["sid"], ada["metadata"]) == (resume_failed["sid"], "again")
    assert sorted(resume_failed["server"]) == ["ada", "grace"], "nobody joined twice"


@pytest.mark.timeout(70)
def test_refused_join_is_retried_with_the_same_join_key(tmp_path: Path) -> None:
    """An edge over its connection cap (`error` TOO_MANY_CONNECTIONS, close 4019) refuses
    the page's first join: the page retries the same URL with the same `join_key`, and the
    edge derives the sid (and identity) from that key, so a join that did land continues."""
    result = run_scenario("join_retried", tmp_path)
    joins = result["joins"]
    assert [j["t"] for j in joins] == ["join", "join"], joins
    key = joins[0].get("join_key")
    assert isinstance(key, str) and len(key) == 16 and joins[1].get("join_key") == key, joins
    assert all(j.get("resume") is None for j in joins), "a first join is not a resume"
    claims = verify_token(result["token"], {STACK_KEY: STACK_SECRET})
    sid, identity = keyed_ids(claims.api_key, claims.token_id, "join-retried", key)
    assert result["joined"] == {"id": identity, "sid": sid}, result
    assert list(result["server"]) == [identity], "joined once"


@pytest.mark.timeout(90)
def test_a_write_refused_unavailable_is_sent_again_and_applied_once(tmp_path: Path) -> None:
    """nats-server frozen while the page sets its metadata: the edge answers `UNAVAILABLE`
    (twice), the SDK sends the request again with the same id, and the call resolves; the
    copy stored late is refused by the statekeeper and the retry's is the one applied."""
    result = run_scenario("write_across_freeze", tmp_path)
    assert result["outcome"] == "ok", result
    ada = result["joined"]["id"]
    assert result["server"][ada]["metadata"] == "late", result
    assert (result["stored"], result["on_time"]) == (2, 1), result


def test_close_reasons_match_the_schema_table(tmp_path: Path) -> None:
    """The SDK's close code table is schemas/errors.py CLOSE_CODES (4018-4020 were missing)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (>= 20) is not on PATH: install Node.js")
    script = tmp_path / "close.mjs"
    script.write_text(
        f"import {{ CLOSE_REASONS }} from {json.dumps((STATIC_DIR / 'signaling.js').as_uri())};\n"
        "process.stdout.write(JSON.stringify(Object.fromEntries(CLOSE_REASONS)));\n"
    )
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {str(code): name for name, code in CLOSE_CODES.items()}


# --------------------------------------------------------------------------- dev endpoints


@pytest.fixture
async def dev_edge(tmp_path: Path) -> AsyncIterator[str]:
    async with services(tmp_path, dev_mode=True) as (_server, _config, url):
        yield url


async def test_dev_token_refused_outside_dev_mode(tmp_path: Path) -> None:
    """(e) Without dev mode the token endpoint does not exist: 404, never a token."""
    async with (
        services(tmp_path, dev_mode=False) as (_server, _config, url),
        httpx.AsyncClient(base_url=url) as http,
    ):
        minted = await http.post("/dev/token", json={"room": "demo", "name": "Eve"})
        promoted = await http.post("/dev/promote", json={"room": "demo", "identity": "x"})
        page = await http.get("/")
    assert minted.status_code == 404 and "token" not in minted.text
    assert promoted.status_code == 404
    assert page.status_code == 200 and 'data-dev="false"' in page.text


async def test_dev_token_in_dev_mode(dev_edge: str) -> None:
    """In dev mode the edge mints tokens with its own key: speaker, viewer or host."""
    async with httpx.AsyncClient(base_url=dev_edge) as http:
        page = await http.get("/")
        speaker = await http.post("/dev/token", json={"room": "demo", "name": "Ada Lovelace"})
        host = await http.post(
            "/dev/token", json={"room": "demo", "identity": "h1", "name": "H", "host": True}
        )
        viewer = await http.post("/dev/token", json={"room": "demo", "viewer": True})
        bad = [
            await http.post("/dev/token", json={"name": "no room"}),
            await http.post("/dev/token", json={"room": "demo", "viewer": "yes"}),
            await http.post("/dev/token", content=b"not json"),
            await http.post("/dev/token", json={"room": "r" * 300}),
        ]
    assert 'data-dev="true"' in page.text
    claims = verify_token(speaker.json()["token"], {API_KEY: API_SECRET})
    assert claims.room_id == "demo" and claims.name == "Ada Lovelace" and not claims.is_viewer
    assert claims.participant_id == speaker.json()["identity"]
    assert (claims.participant_id or "").startswith("ada-lovelace-")
    assert claims.grant == Grant()
    hosted = verify_token(host.json()["token"], {API_KEY: API_SECRET})
    assert hosted.participant_id == "h1" and hosted.grant.can_moderate
    watching = verify_token(viewer.json()["token"], {API_KEY: API_SECRET})
    assert watching.is_viewer and not watching.grant.can_publish
    assert watching.grant.can_subscribe and not watching.grant.can_moderate
    assert [r.status_code for r in bad] == [400, 400, 400, 400]


async def test_dev_promote_needs_a_moderator_of_the_room(dev_edge: str) -> None:
    """/dev/promote acts only for a moderator token of the same room."""
    async with httpx.AsyncClient(base_url=dev_edge) as http:

        async def token(**body: Any) -> str:
            reply = await http.post("/dev/token", json={"room": "demo", **body})
            value: str = reply.json()["token"]
            return value

        speaker, other_host, host = (
            await token(),
            await http.post("/dev/token", json={"room": "other", "host": True}),
            await token(host=True),
        )
        body = {"room": "demo", "identity": "nobody"}
        anonymous = await http.post("/dev/promote", json=body)
        forged = await http.post("/dev/promote", json=body, headers={"Authorization": "Bearer x"})
        not_moderator = await http.post(
            "/dev/promote", json=body, headers={"Authorization": f"Bearer {speaker}"}
        )
        elsewhere = await http.post(
            "/dev/promote",
            json=body,
            headers={"Authorization": f"Bearer {other_host.json()['token']}"},
        )
        missing = await http.post(
            "/dev/promote", json=body, headers={"Authorization": f"Bearer {host}"}
        )
    assert (anonymous.status_code, forged.status_code) == (401, 401)
    assert (not_moderator.status_code, elsewhere.status_code) == (403, 403)
    assert missing.status_code == 404, missing.text


async def test_static_files_types_and_caching(dev_edge: str) -> None:
    """/static serves the SDK with its content type, no caching in dev; nothing else."""
    async with httpx.AsyncClient(base_url=dev_edge) as http:
        sdk = await http.get("/static/stagecast.js")
        css = await http.get("/static/style.css")
        etag = sdk.headers["etag"]
        again = await http.get("/static/stagecast.js", headers={"If-None-Match": etag})
        vendored = await http.get("/static/vendor/msgpack/utils/utf8.mjs")
        refused = [
            (await http.get(path)).status_code
            for path in (
                "/static/nope.js",
                "/static/..%2Fpage.py",
                "/static/page.py",
                "/static/",
                "/static/vendor/../page.py",
                "/static/vendor/%2E%2E/%2E%2E/page.py",
                "/static/vendor/msgpack/.hidden.mjs",
                "/static/package.json",
            )
        ]
    assert sdk.status_code == 200 and sdk.headers["content-type"].startswith("text/javascript")
    assert sdk.headers["cache-control"] == "no-store"
    assert "export async function join" in sdk.text
    assert css.headers["content-type"].startswith("text/css")
    assert vendored.status_code == 200 and "utf8" in vendored.text
    assert vendored.headers["content-type"].startswith("text/javascript")
    assert again.status_code == 304
    assert refused == [404] * 8
    # Files the edge does not serve: the npm package's metadata, types and the vendored
    # library's license and version note.
    unserved = {"package.json", "stagecast.d.ts", "LICENSE", "VERSION", "README.md"}
    for file in STATIC_DIR.rglob("*"):
        if file.is_file() and file.name not in unserved:
            assert file.suffix in CONTENT_TYPES, f"{file.name}: add its content type"


@pytest.mark.timeout(70)
def test_browser_streams_and_rpc_with_a_python_peer(tmp_path: Path) -> None:
    """Text and byte streams and RPC both ways between a page and the Python SDK."""
    result = run_scenario("streams_rpc", tmp_path)
    assert result["text_ok"] and result["text_sender"] == "py", result
    assert result["attributes"] == {"k": "v"}
    file = result["file"]
    assert (file["size"], file["sum"], file["name"], file["mimeType"]) == (
        51_200,
        result["file_sum"],
        "x.png",
        "image/png",
    )
    assert result["upper"] == "HELLO"
    codes = result["codes"]
    assert codes[0] == [1500, "Error: page says no"] and codes[1][0] == 1400, codes
    # 15,360 bytes each way pass; one more is 1402 (request) or 1504 (response), both ways
    assert result["echoed"] is True
    assert codes[2] == [1504, "over"]
    assert result["got"] == [["page", "from the page"]]
    assert result["page_rpc"] == {"sum": "5", "code": 1400, "echoed": True, "limits": [1402, 1504]}
    assert result["cut"] == ["partial", "STREAM_CUT_OFF"]


@pytest.mark.timeout(70)
def test_the_demo_page_shows_an_agents_transcript(tmp_path: Path) -> None:
    result = run_scenario("transcript_page", tmp_path)
    assert result["shown"] is True
    assert result["first"] == "   0.4s  alice  started speaking\n", result
    assert result["later"].endswith("alice  stopped speaking\n"), result


# --------------------------------------------------------------------------- msgpack.js


def test_msgpack_js_round_trips_every_frame_shape(tmp_path: Path) -> None:
    """msgpack.js decodes and re-encodes the edge's frames byte for byte."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (>= 20) is not on PATH: install Node.js")
    speaker = ParticipantInfo(
        sid="PA_1",
        id="zoë",
        name="Zoë 🎤",
        attributes={"hand": "raised"},
        tracks=(TrackInfo(sid="TR_1", kind="video", source="camera"),),
        joined_at=1_767_000_000_123,
    )
    frames = [
        JoinAccepted(
            id=1,
            seq=2**40,
            room=RoomInfo(
                id="r", sid="RM_1", counts=Counts(speaker=1, viewer=70_000, total=70_001)
            ),
            participant=speaker,
            grant=Grant(can_moderate=True),
            speakers=(speaker,) * 20,
            resume_token="t" * 300,
        ),
        ParticipantsPage(id=7, participants=(speaker,) * 3, next_cursor="c" * 70_000, total=3),
        TrackPublished(seq=-1, participant_id="a", track=TrackInfo(sid="T", kind="audio")),
        Ack(id=2**53 - 1, sid="TR_x"),
    ]
    values: list[Any] = [to_wire(f) for f in frames]
    values += [
        {"payload": bytes(range(256)) * 300, "f": 0.1, "n": None, "neg": [-1, -33, -129, -40_000]},
        {"big": [2**31, 2**32, -(2**31) - 1, 2**63 - 1, -(2**63), 2**64 - 1]},
        list(range(20)),
    ]
    script = tmp_path / "roundtrip.mjs"
    script.write_text(
        f"import {{ encode, decode }} from {json.dumps((STATIC_DIR / 'msgpack.js').as_uri())};\n"
        "import { readFileSync } from 'node:fs';\n"
        "process.stdout.write(Buffer.from(encode(decode(readFileSync(0)))));\n"
    )
    for value in values:
        data = msgpack.packb(value, use_bin_type=True)
        done = subprocess.run([node, str(script)], input=data, capture_output=True, timeout=20)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == data, f"{str(value)[:200]} did not survive msgpack.js"
    assert encode(frames[-1]) == msgpack.packb(values[3], use_bin_type=True)


def test_msgpack_js_is_the_pinned_library_and_names_its_errors(tmp_path: Path) -> None:
    """msgpack.js wraps the vendored @msgpack/msgpack of vendor/msgpack/VERSION; bad bytes
    and unencodable values raise its `MsgpackError`."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (>= 20) is not on PATH: install Node.js")
    vendor = STATIC_DIR / "vendor" / "msgpack"
    pinned = (vendor / "VERSION").read_text().split()[1]
    assert (vendor / "LICENSE").read_text().startswith("Copyright")
    script = tmp_path / "errors.mjs"
    script.write_text(
        f"import * as m from {json.dumps((STATIC_DIR / 'msgpack.js').as_uri())};\n"
        "const said = (f) => { try { f(); return 'no error'; } catch (e) { return e.name; } };\n"
        "console.log(JSON.stringify({\n"
        "  version: m.MSGPACK_VERSION,\n"
        "  unused_byte: said(() => m.decode(new Uint8Array([0xc1]))),\n"
        "  truncated: said(() => m.decode(new Uint8Array([0xa5, 0x61]))),\n"
        "  trailing: said(() => m.decode(new Uint8Array([0x01, 0x02]))),\n"
        "  too_big: said(() => m.encode(1n << 64n)),\n"
        "  too_small: said(() => m.encode(-(1n << 63n) - 1n)),\n"
        "  symbol: said(() => m.encode(Symbol('x'))),\n"
        "  undefined_left_out: Array.from(m.encode({ a: 1, b: undefined })),\n"
        "  safe_number: typeof m.decode(new Uint8Array([0xcf, 0, 0, 1, 0, 0, 0, 0, 0])),\n"
        "}));\n"
    )
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result.pop("version") == pinned
    assert result.pop("undefined_left_out") == list(msgpack.packb({"a": 1}))
    assert result.pop("safe_number") == "number"
    assert result == dict.fromkeys(
        ("unused_byte", "truncated", "trailing", "too_big", "too_small", "symbol"), "MsgpackError"
    )
