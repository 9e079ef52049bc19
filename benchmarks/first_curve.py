"""The first five minutes: seconds from the first press of Start in the studio to the first loss point drawn on the
page (issue #16's target: under 90 s on 2 CPU cores).

    python benchmarks/first_curve.py [--repeat 3] [--out benchmarks/results/first-curve-cpu.json]

Set-up, as ``make webui`` does it: the demo model is built once by ``tunelab demo`` (timed, reported apart). Each
repetition then starts from a clean TUNELAB_HOME holding only that demo model (no tokenized-data cache) and a fresh
runs folder: ``tunelab webui --config examples/demo_cpu_lora_sft.yaml``, Debian's chromium driven by Playwright opens
the page, and the clock runs from the click on Start to the first point of the loss chart. Printed and written: the
wall time, where it went (the trainer's ``prepare`` events: wall and CPU seconds per stage), every stage line the
page showed, ``nproc`` and the load average before and after (other programs may share the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CONFIG = ROOT / "examples" / "demo_cpu_lora_sft.yaml"
# record every text the progress box shows, with the page's clock
WATCH_JS = """() => { window.__seen = []; const box = document.querySelector('#progress');
  const note = () => { const t = box.innerText.trim(); const s = window.__seen;
    if (t && (!s.length || s[s.length - 1][1] !== t)) s.push([Date.now() / 1000, t]); };
  new MutationObserver(note).observe(box, {subtree: true, childList: true, characterData: true}); }"""
FIRST_POINT_JS = "() => !!document.querySelector('#loss_plot polyline[data-series=\"loss\"]')"


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TUNELAB_HOME": str(home), "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def build_demo(home: Path) -> tuple[Path, float]:
    """``tunelab demo`` into ``home`` (as ``make webui`` does); the model folder and the seconds it took."""
    begin = time.time()
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "demo"], env=_env(home), capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return Path(out.stdout.splitlines()[0]), time.time() - begin


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the studio exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the studio did not answer within {timeout}s")


def _events(run: Path) -> list[dict[str, Any]]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def stages(run: Path, clicked: float, drawn: float) -> list[dict[str, Any]]:
    """Where the time went: one row per step from the click to the first loss (wall and trainer CPU seconds)."""
    status = json.loads((run / "status.json").read_text())
    marks: list[tuple[str, float, float | None]] = [("click -> trainer launched", clicked, None)]
    launched = status.get("launched_at")
    if launched:
        marks.append(("python start + tunelab imports", launched, 0.0))
    for event in _events(run):
        if event["type"] == "prepare":
            marks.append((event["stage"], event["time"], event.get("cpu_s")))
        elif event["type"] == "train":
            marks.append(("first loss logged -> drawn", event["time"], None))
            break
    marks.append(("drawn", drawn, None))
    rows = []
    for (name, start, cpu), (_, end, cpu_next) in zip(marks, marks[1:]):
        rows.append({"stage": name, "wall_s": round(end - start, 2),
                     "cpu_s": round(cpu_next - cpu, 2) if cpu is not None and cpu_next is not None else None})
    return rows


def one_run(demo: Path, work: Path, browser: Any, timeout: float) -> dict[str, Any]:
    """One clean-cache repetition; returns its figures."""
    home, runs = work / "home", work / "runs"
    shutil.copytree(demo, home / "models" / demo.name)
    port = _free_port()
    log = (work / "studio.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "webui", "--port", str(port), "--runs-dir", str(runs), "--config", str(CONFIG)],
        env=_env(home), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    page = None
    try:
        begin = time.time()
        _wait_http(f"http://127.0.0.1:{port}/", server, 180)
        studio_s = time.time() - begin
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("() => (document.querySelector('#template_info') || {}).innerText?.includes('chatml')",
                               timeout=120_000)  # the page's load handlers have run: the form is ready
        page_s = time.time() - begin - studio_s
        page.evaluate(WATCH_JS)
        load_before = os.getloadavg()
        clicked = time.time()
        page.locator("#start").click()
        page.wait_for_function(FIRST_POINT_JS, timeout=timeout * 1000, polling=100)
        drawn = time.time()
        first_curve_s = drawn - clicked
        seen = page.evaluate("window.__seen")
        [run] = [p for p in runs.iterdir() if (p / "config.yaml").is_file()]
        result = {
            "first_curve_s": round(first_curve_s, 2), "studio_start_s": round(studio_s, 2), "page_ready_s": round(page_s, 2),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "stages": stages(run, clicked, drawn),
            "page_showed": [{"after_s": round(t - clicked, 1), "text": text} for t, text in seen],
        }
        page.locator("#stop").click()
        status = run / "status.json"
        deadline = time.time() + 120
        while time.time() < deadline and json.loads(status.read_text()).get("state") not in ("aborted", "succeeded", "failed"):
            time.sleep(0.5)
        return result
    finally:
        if page is not None:
            page.close()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        for status in runs.glob("*/status.json"):  # never leave a trainer behind
            pgid = json.loads(status.read_text()).get("pgid")
            try:
                if pgid:
                    os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def main(argv: list[str] | None = None) -> int:
    """Measure, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--demo", type=Path, help="a demo model folder already built (skips and does not time the build)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the first point")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="tunelab-first-curve-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "nproc": os.cpu_count(),
                               "cpu": _cpu_name(), "load_at_start": [round(x, 2) for x in os.getloadavg()], "runs": []}
    demo, build_s = (args.demo, None) if args.demo else build_demo(work / "setup-home")
    results["demo_build_s"] = round(build_s, 1) if build_s else None
    print(f"nproc {results['nproc']}, load average {results['load_at_start']}; demo model build (set-up): "
          f"{'given' if build_s is None else f'{build_s:.1f} s'}", flush=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for index in range(args.repeat):
            run = one_run(demo, work / f"rep-{index}", browser, args.timeout)
            results["runs"].append(run)
            print(f"\nrepetition {index + 1}: first loss point on the page {run['first_curve_s']:.1f} s after Start "
                  f"(load average {run['load_before'][0]:.1f} -> {run['load_after'][0]:.1f})", flush=True)
            for row in run["stages"]:
                cpu = f"{row['cpu_s']:6.1f} s CPU" if row["cpu_s"] is not None else ""
                print(f"  {row['stage']:<34} {row['wall_s']:6.1f} s wall {cpu}")
        browser.close()
    times = [r["first_curve_s"] for r in results["runs"]]
    results["median_first_curve_s"] = statistics.median(times)
    print(f"\nfirst curve: median {statistics.median(times):.1f} s over {len(times)} ({', '.join(f'{t:.1f}' for t in times)})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
