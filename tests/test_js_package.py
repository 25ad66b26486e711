"""The browser SDK as an npm package: `edge/static/` is both what the edge serves and the
package `@stagecast/client` (one copy of every file), installable and typed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.page import STATIC_DIR

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
TSC = BROWSER_DIR / "node_modules" / ".bin" / "tsc"
SDK_MODULES = {"stagecast.js", "session.js", "participants.js", "signaling.js", "media.js"}

CONSUMER = """
import { join, Room, StagecastError, type Counts, type RemoteParticipant } from '@stagecast/client';
import Stagecast from '@stagecast/client';

export async function main(token: string): Promise<number> {
  const room: Room = await join({ url: 'https://edge.example', token, roomId: 'demo' });
  room.on('participant-joined', (p: RemoteParticipant) => {
    p.on('stream-subscribed', (sub) => console.log(sub.kind, sub.stream.id, p.id));
  });
  room.on('audience-changed', (c: Counts) => console.log(c.viewer));
  room.on('stream-published', (event, participant) => console.log(event.trackSid, participant.id));
  room.on('tier-changed', async (local) => {
    if (!local.isViewer && local.grant.canPublish) await local.publishCamera();
  });
  const page = await room.getParticipants({ tier: 'viewer', limit: 50 });
  if (page.nextCursor) await room.getParticipants({ cursor: page.nextCursor });
  try {
    await room.localParticipant.publishData('hi', { topic: 'chat' });
  } catch (err) {
    if (err instanceof StagecastError) console.log(err.code);
  }
  await room.leave();
  return Stagecast.SDK_NAME.length + room.counts.total;
}
"""


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm (Node.js >= 20) is needed: install Node.js")
    return npm


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app folder with the package installed from its packed tarball (offline)."""
    npm = _npm()
    app = tmp_path_factory.mktemp("app")
    packed = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(app), str(STATIC_DIR)],
        capture_output=True,
        text=True,
        check=True,
    )
    (app / "packed.json").write_text(packed.stdout)
    tarball = app / json.loads(packed.stdout)[0]["filename"]
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    subprocess.run(
        [npm, "install", "--offline", "--no-audit", "--no-fund", str(tarball)],
        cwd=app,
        capture_output=True,
        text=True,
        check=True,
    )
    return app


def test_the_package_holds_the_sdk_and_not_the_demo(installed: Path) -> None:
    files = {f["path"] for f in json.loads((installed / "packed.json").read_text())[0]["files"]}
    assert SDK_MODULES | {"msgpack.js", "stagecast.d.ts", "package.json"} <= files
    assert "vendor/msgpack/index.mjs" in files and "vendor/msgpack/LICENSE" in files
    assert not files & {"app.js", "index.html", "style.css"}
    # One source of truth: the installed files are the served ones, byte for byte.
    root = installed / "node_modules" / "@stagecast" / "client"
    for name in sorted(files):
        assert (root / name).read_bytes() == (STATIC_DIR / name).read_bytes(), name


def test_every_export_is_typed(installed: Path) -> None:
    node = shutil.which("node")
    assert node is not None
    listed = subprocess.run(
        [
            node,
            "--input-type=module",
            "-e",
            "const m = await import('@stagecast/client');"
            "console.log(JSON.stringify(Object.keys(m).sort()))",
        ],
        cwd=installed,
        capture_output=True,
        text=True,
        check=True,
    )
    exported = set(json.loads(listed.stdout)) - {"default"}
    declared = set(
        re.findall(
            r"^export declare (?:class|function|const) (\w+)",
            (STATIC_DIR / "stagecast.d.ts").read_text(),
            re.M,
        )
    )
    assert exported == declared


def test_an_app_type_checks_against_the_declarations(installed: Path) -> None:
    if not TSC.is_file():
        pytest.fail("typescript is not installed: run `make browser-deps` (npm ci)")
    (installed / "app.ts").write_text(CONSUMER)
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "lib": ["es2022", "dom"],
        },
        "files": ["app.ts"],
    }
    (installed / "tsconfig.json").write_text(json.dumps(config))
    checked = subprocess.run([str(TSC), "-p", str(installed)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
