"""The audit report opened in a real browser: headless Chromium (Debian's ``chromium``), driven over
the DevTools protocol. No console error, every image decoded, nothing fetched from the network.

Skips with a message where Chromium is missing (``.ci/run`` installs it in CI).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    "--window-size=1280,900",
]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")


class DevTools:
    """A minimal DevTools-protocol session over the browser's websocket, one page attached."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def close(self) -> None:
        self.ws.close()


def _start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("chromium did not start:\n" + "".join(seen[-20:]))


def open_in_chromium(page: Path, profile: Path) -> dict:
    """Load ``page``; returns console errors, exceptions, failed or network requests, and image states."""
    proc, ws_url = _start_chromium(profile)
    try:
        dt = DevTools(ws_url)
        for domain in ("Runtime", "Log", "Page", "Network"):
            dt.call(f"{domain}.enable", session=True)
        dt.call("Page.navigate", {"url": page.resolve().as_uri()}, session=True)
        dt.wait_for("Page.loadEventFired")
        images = dt.call(
            "Runtime.evaluate",
            {
                "returnByValue": True,
                "expression": """
            Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                                   shown: i.getBoundingClientRect().width}))""",
            },
            session=True,
        )["result"]["value"]
        page_width = dt.call(
            "Runtime.evaluate",
            {"returnByValue": True, "expression": "document.querySelector('h1').getBoundingClientRect().width"},
            session=True,
        )["result"]["value"]
        dt.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    events = dt.events
    return {
        "errors": [
            e["params"]
            for e in events
            if e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert")
        ]
        + [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
        + [
            e["params"]["entry"]
            for e in events
            if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"
        ],
        "failed": [e["params"] for e in events if e.get("method") == "Network.loadingFailed"],
        "requests": [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"],
        "images": images,
        "page_width": page_width,
    }


@pytest.fixture
def report_page(tmp_path, make_images, enhancer, torch_one_thread) -> Path:
    """The report of two small real runs (rows from archive.process_shard), the second compared with the first."""
    from llie.audit import report
    from llie.audit import summary as audit
    from llie.audit.comparison import compare
    from llie.batch import archive
    from llie.batch.layout import RunLayout
    from llie.batch.spec import RunSpec

    inp, ref, out = tmp_path / "in", tmp_path / "ref", tmp_path / "out"
    names = ["a.png", "b.jpg", "sub/c.png", "d.png"]
    make_images(inp, names)
    make_images(ref, names, peak=0.7)
    for run_id, stages in (("before", "hist"), ("after", "full")):
        shard = archive.plan_shards(names, 4)[0]
        rows = archive.process_shard(
            RunSpec(str(inp), str(out), reference_url=str(ref), run_id=run_id, stages=stages), shard, enhancer
        )
        archive.write_shard_parquet(rows, RunLayout(str(out), run_id).shard_url(shard.shard_id))
        archive.write_run_manifest(str(out), run_id, {"run_id": run_id, "reference_url": str(ref), "images": 4})
    run, base = audit.load_run(str(out), "after"), audit.load_run(str(out), "before")
    summary, base_summary = audit.summarise(run, top=2), audit.summarise(base, top=2)
    baseline = report.Baseline(base, base_summary, compare(run, base))
    files = report.write_report(run, summary, str(tmp_path / "report.html"), baseline)
    assert len(files.plots) == 7
    return Path(files.html_url)


def test_report_opens_in_chromium_with_every_image_and_no_error(report_page, tmp_path):
    seen = open_in_chromium(report_page, tmp_path / "chromium-profile")
    assert seen["errors"] == [] and seen["failed"] == []
    # the page itself, and nothing else (every plot is inside it)
    assert [u for u in seen["requests"] if not u.startswith("data:")] == [report_page.resolve().as_uri()]
    assert len(seen["images"]) == 7
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 0, image  # decoded, not a broken-image icon
    # plots take the page's width; contact sheets and the comparison's square scatter keep their own size
    natural = ("Worst", "Best", "PSNR per image")
    plots = [i for i in seen["images"] if not i["alt"].startswith(natural)]
    assert len(plots) == 4 and all(abs(i["shown"] - seen["page_width"]) <= 4 for i in plots), (
        plots,
        seen["page_width"],
    )
    assert all(abs(i["shown"] - i["width"]) <= 4 for i in seen["images"] if i["alt"].startswith(natural))
