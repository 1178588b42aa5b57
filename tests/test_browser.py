"""End to end, as a learner: JupyterLab in Debian's headless Chromium (Playwright), run all, use a slider.

One JupyterLab server (started here, on a temp copy of the notebooks with fresh config / data / runtime /
settings / workspaces dirs) and one browser serve every flow in FLOWS. Per flow: open the notebook, wait
until its kernel is connected and idle, "Run All Cells", wait until every code cell ran (or one failed),
then assert: no error / traceback / unexpected stderr, every "plot"-tagged cell shows a decoded image,
every widget output rendered as a widget; then move the explorer slider with the keyboard, assert its
dependent output changed (and, for reversible explorers, came back exactly). Screenshots and the server
and console logs go to artifacts/browser/ (git-ignored). A watchdog kills everything after a hard
deadline; the last test tears the session down and asserts that no server, kernel or browser process
survived.

Adding a notebook = adding one Flow below. Requires Debian's chromium ($CHROMIUM, default
/usr/bin/chromium; `make chromium` installs it); Playwright's own browser downloads are never used.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
sys.path.insert(0, str(ROOT / "scripts"))
import clean_notebooks  # noqa: E402  (scripts/clean_notebooks.py: the committed-notebook policy)


@dataclass(frozen=True)
class Flow:
    """One notebook to open and run; optionally one explorer slider to move with the keyboard.

    Selectors are CSS, matched in the whole notebook in document order (``*_index`` picks one). Explorer
    functions should ``add_class`` stable names to their box and readout (as widgets.theta_scale_explorer
    does with "gpart-explorer" / "gpart-explorer-readout"); otherwise ".widget-slider .noUi-handle" with
    slider_index and e.g. ".widget-html" or ".widget-output" with output_index work too. The output's text
    and image sources are compared, so a figure redrawn into an Output widget counts as a change.
    """

    notebook: str                      # file name in notebooks/
    slider: str | None = None          # CSS selector of slider handles (noUiSlider) in the notebook
    slider_index: int = 0              # which match, in document order
    output: str | None = None          # CSS selector of the output that depends on that slider
    output_index: int = 0
    presses: int = 2                   # ArrowRight presses; then as many ArrowLeft when reversible
    expect_text: str | None = None     # text the output must show after the presses
    reversible: bool = True            # moving back must restore the output exactly
    run_timeout_s: float = 420.0       # "Run All" must finish within this (smoke mode)


EXPLORER_SLIDER = ".gpart-explorer .widget-slider .noUi-handle"
EXPLORER_READOUT = ".gpart-explorer-readout"
FLOWS = [
    Flow("00_quickstart.ipynb", slider=EXPLORER_SLIDER, output=EXPLORER_READOUT, presses=2,
         expect_text="t = +1.50"),   # slider starts at t = 1.00, step 0.25
    Flow("01_isometric_partition.ipynb"),    # no explorer: run all, no errors, every plot rendered
    Flow("02_lora_unilora_geometry.ipynb", slider=EXPLORER_SLIDER, slider_index=1, output=EXPLORER_READOUT,
         presses=2, expect_text="d = 66"),   # isometry explorer: sliders seed, d (starts at 64), r, ||theta||
    Flow("03_loss_landscapes.ipynb", slider=EXPLORER_SLIDER, slider_index=2, output=EXPLORER_READOUT,
         presses=1, expect_text="grid 13×13", reversible=False),  # landscape explorer: d, span, resolution;
    # the readout reports the grid's compute time, so moving back does not restore it character for character
]
EXPLORER_CALL = re.compile(r"\b\w+_explorer\(")   # gpart_edu.widgets.theta_scale_explorer(, isometry_explorer(, ...
SERVER_START_S, STEP_S, KERNEL_IDLE_S, SLIDER_S, TEARDOWN_S = 90, 30, 120, 60, 30
HARD_DEADLINE_S = 300 + sum(f.run_timeout_s + KERNEL_IDLE_S + 2 * SLIDER_S + 60 for f in FLOWS)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


# ------------------------------------------------------------------------------------ processes
def _proc_table() -> dict:
    """{pid: (ppid, start time, state, cmdline)} of every process (Linux /proc)."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(d)] = (int(fields[1]), fields[19], fields[0], cmd)
    return table


def _descendants(root: int, table: dict) -> dict:
    """{pid: (start time, cmdline)} of every descendant of ``root``."""
    children: dict = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = (table[pid][1], table[pid][3])
        todo += children.get(pid, [])
    return out


def _alive(pid: int, start: str) -> bool:
    """The process ``pid`` started at ``start`` still exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] == start and fields[0] != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------- lab session
class LabSession:
    """A JupyterLab server and a headless Chromium, both owned (and always torn down) by this object."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="gpart_edu_browser_"))
        self.token, self.port = secrets.token_hex(16), _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.seen: dict = {}               # every process that belonged to this session: pid -> (start, cmd)
        self.kernels_seen: set = set()
        self.server = self.pw = self.ctx = self.page = None
        self.console: list[str] = []
        self.closed = False
        self.watchdog = threading.Timer(HARD_DEADLINE_S, self._kill_everything)
        self.watchdog.daemon = True
        self.watchdog_fired = False

    # -- start
    def start(self) -> "LabSession":
        self.watchdog.start()
        nb_dir = self.tmp / "notebooks"
        nb_dir.mkdir()
        for p in clean_notebooks.notebooks(ROOT):     # a copy without outputs: everything shown is fresh
            (nb_dir / p.name).write_text(clean_notebooks.canonical_text(p.read_text(), p.name))
        dirs = {v: self.tmp / k for k, v in [("config", "JUPYTER_CONFIG_DIR"), ("data", "JUPYTER_DATA_DIR"),
                                             ("runtime", "JUPYTER_RUNTIME_DIR"), ("ipython", "IPYTHONDIR"),
                                             ("settings", "JUPYTERLAB_SETTINGS_DIR"),
                                             ("workspaces", "JUPYTERLAB_WORKSPACES_DIR")]}
        for d in dirs.values():
            d.mkdir()
        tracker = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "notebook-extension"
        tracker.mkdir(parents=True)                   # render every cell (no virtual scrolling)
        (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        notes = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True)                     # no "Jupyter news?" pop-up over the screenshots
        (notes / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}   # a leaked Agg hides plots
        env.update({k: str(v) for k, v in dirs.items()}, GPART_EDU_MODE="smoke", PYTHONUNBUFFERED="1")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.server_log = open(ARTIFACTS / "lab-server.log", "w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={self.token}", "--allow-root", f"--ServerApp.root_dir={self.tmp}",
             "--ServerApp.port_retries=0", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.expose_app_in_browser=True"],
            cwd=self.tmp, env=env, stdout=self.server_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.server.returncode}; see {ARTIFACTS}/lab-server.log")
            try:
                self.api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s") from None
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright
        self.pw = sync_playwright().start()
        self.ctx = self.pw.chromium.launch_persistent_context(
            str(self.tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900}, timeout=STEP_S * 1000)
        self.ctx.set_default_timeout(STEP_S * 1000)
        self.page = self.ctx.pages[0] if self.ctx.pages else self.ctx.new_page()
        self.page.on("console", lambda m: self.console.append(f"console.{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"PAGE ERROR: {e}"))
        self.track()
        return self

    def api(self, method: str, path: str, body=None):
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def track(self) -> dict:
        """Record every process below this test process (server, kernels, Playwright driver, Chromium)."""
        table = _proc_table()
        now = _descendants(os.getpid(), table)
        self.seen.update(now)
        for pid, (_, cmd) in now.items():
            if "ipykernel_launcher" in cmd and str(self.tmp) in cmd:
                self.kernels_seen.add(pid)
        return now

    # -- teardown
    def _kill_everything(self):
        """Watchdog: past the hard deadline, kill every process of the session (unblocks any wait)."""
        self.watchdog_fired = True
        self.track()
        for pid, (start, _) in list(self.seen.items()):
            if _alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self) -> list[str]:
        """Tear everything down (idempotent); return what had to be killed by force."""
        if self.closed:
            return self.forced
        self.closed, self.forced = True, []
        self.track()
        self.watchdog.cancel()                        # teardown gets its own, shorter deadline
        guard = threading.Timer(2 * TEARDOWN_S, self._kill_everything)
        guard.daemon = True
        guard.start()
        # Playwright's sync API must be called from this thread; the guard unblocks it if it hangs
        _quiet(lambda: self.ctx and self.ctx.close())
        _quiet(lambda: self.pw and self.pw.stop())
        if self.server is not None:
            _quiet(lambda: self.api("POST", "/api/shutdown"))            # shuts the kernels down too
            try:
                self.server.wait(TEARDOWN_S)
            except subprocess.TimeoutExpired:
                self.forced.append(f"server {self.server.pid} (SIGKILL to its process group)")
                _quiet(lambda: os.killpg(self.server.pid, signal.SIGKILL))
                self.server.wait(10)
            self.server_log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p, s) for p, (s, _) in self.seen.items()):
            time.sleep(0.2)
        for pid, (start, cmd) in self.seen.items():
            if _alive(pid, start):
                self.forced.append(f"{pid} {cmd[:80]}")
                _quiet(lambda: os.kill(pid, signal.SIGKILL))
        guard.cancel()
        (ARTIFACTS / "console.log").write_text("\n".join(self.console) + "\n")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.forced

    def leftovers(self) -> list[str]:
        """Processes of this session still alive, plus any process that mentions its temp dir."""
        out = [f"{p} {c[:100]}" for p, (s, c) in self.seen.items() if _alive(p, s)]
        out += [f"{p} {row[3][:100]}" for p, row in _proc_table().items()
                if str(self.tmp) in row[3] and row[2] != "Z" and p != os.getpid()]
        return sorted(set(out))


def _quiet(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 -- teardown continues whatever one step raised
        pass


# ---------------------------------------------------------------------------------- page helpers
STATE_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const s = w && w.sessionContext, k = s && s.session && s.session.kernel;
  return {path: w && w.context ? w.context.path : null, ready: !!(s && s.isReady),
          conn: k ? k.connectionStatus : null, status: k ? k.status : null, kernelId: k ? k.id : null};
}"""
CELLS_JS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  return cells.map((cell, i) => {
    const m = cell.model;
    const r = {index: i, type: m.type, tags: m.getMetadata('tags') || [], executionCount: null,
               state: null, outputs: [], images: [], stderrDom: 0, widgetViews: 0, widgetProblems: [], widgetsLive: 0, text: ''};
    if (m.type !== 'code') return r;
    r.executionCount = m.executionCount;
    r.state = m.executionState || null;
    r.outputs = m.outputs.toJSON().map(o => ({type: o.output_type, name: o.name || null,
        mimes: Object.keys(o.data || {}), ename: o.ename || null, text: String(o.text || o.evalue || '').slice(0, 400)}));
    const outs = cell.node.querySelectorAll('.jp-OutputArea-output');
    r.images = Array.from(cell.node.querySelectorAll('.jp-OutputArea-output img')).map(im => im.complete && im.naturalWidth > 0);
    r.stderrDom = cell.node.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length;
    // widget outputs: a live view, or empty once the widget was closed (tqdm does); never an error
    // message or the text/plain fallback that appears when the widget extension is missing
    const own = Array.from(cell.outputArea.node.querySelectorAll(':scope > .jp-OutputArea-child > .jp-OutputArea-output'));
    r.widgetViews = r.outputs.filter(o => o.mimes.includes('application/vnd.jupyter.widget-view+json')).length;
    r.widgetProblems = r.outputs.map((o, j) => [o, own[j]])
      .filter(([o, el]) => o.mimes.includes('application/vnd.jupyter.widget-view+json'))
      .map(([o, el]) => !el ? 'no output element'
           : /Error displaying widget|Loading widget/.test(el.innerText) ? el.innerText.slice(0, 200)
           : el.getAttribute('data-mime-type') === 'text/plain' ? 'shown as text: ' + el.innerText.slice(0, 200)
           : null)
      .filter(x => x);
    r.widgetsLive = own.filter(el => el.querySelector(':scope > .jupyter-widgets')).length;
    r.text = Array.from(outs).map(o => o.innerText).join('\\n').slice(0, 4000);
    return r;
  });
}"""
DONE_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget, k = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!k || k.status !== 'idle') return false;
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  if (code.some(c => c.model.executionState === 'running')) return false;
  const failed = code.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
  return failed || code.every(c => c.model.executionCount !== null);
}"""


def fingerprint(locator) -> str:
    return locator.evaluate("el => el.innerText + '|' + Array.from(el.querySelectorAll('img')).map(i => i.src).join('|')")


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def kernel_idle(page) -> bool:
    s = page.evaluate(STATE_JS)
    return s["ready"] and s["conn"] == "connected" and s["status"] == "idle"


def shot(page, locator, name: str):
    if locator is not None:
        locator.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / name))


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def lab():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Debian chromium not found at {CHROMIUM}: run `make chromium` (as root: apt-get install "
                    f"chromium) or set CHROMIUM=/path/to/chromium; `make test-fast` skips browser tests")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    session = LabSession()
    try:
        yield session.start()
    finally:
        session.close()


def test_every_notebook_with_an_explorer_widget_has_a_slider_flow():
    flows = {f.notebook: f for f in FLOWS}
    for p in clean_notebooks.notebooks(ROOT):
        src = "\n".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                        for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code")
        if EXPLORER_CALL.search(src):
            assert p.name in flows and flows[p.name].slider, \
                f"{p.name} builds an explorer widget: add a Flow with its slider to FLOWS in tests/test_browser.py"
    assert all((ROOT / "notebooks" / f.notebook).exists() for f in FLOWS)


def open_and_run_all(lab, notebook: str, timeout_s: float) -> tuple[list, float]:
    """Open ``notebook``, wait for a connected idle kernel, Run All, wait for the end; (cells, seconds)."""
    page, stem = lab.page, notebook.split(".")[0]
    page.goto(f"{lab.base}/lab/tree/notebooks/{notebook}?token={lab.token}&reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=STEP_S * 2000)
    # "Run All" before the kernel is connected hangs forever: wait for a connected, idle kernel first.
    def ready():
        dialog = page.locator(".jp-Dialog")
        if dialog.count():                            # e.g. "Select Kernel": nothing would ever run
            raise AssertionError(f"{notebook}: JupyterLab shows a dialog: {dialog.first.inner_text()[:300]!r}")
        return (page.evaluate(STATE_JS)["path"] or "").endswith(notebook) and kernel_idle(page)
    wait_until(ready, KERNEL_IDLE_S, "the notebook's kernel to be connected and idle")
    lab.track()
    t0 = time.monotonic()
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")
    try:
        wait_until(lambda: page.evaluate(DONE_JS), timeout_s, f"Run All of {notebook}", poll_s=1.0)
    finally:
        lab.track()
        shot(page, None, f"{stem}_0_after_run_all.png")
    seconds = time.monotonic() - t0
    cells = page.evaluate(CELLS_JS)
    (ARTIFACTS / f"{stem}_cells.json").write_text(json.dumps(cells, indent=1, ensure_ascii=False))
    return cells, seconds


def cell_problems(cells: list) -> list[str]:
    """What a learner would see as broken: cells that did not run, errors, tracebacks, unexpected stderr,
    "plot" cells without a decoded image, widget outputs that did not render as widgets."""
    problems = []
    for c in (c for c in cells if c["type"] == "code"):
        where = f"cell {c['index']}"
        if c["executionCount"] is None:
            problems.append(f"{where} did not run")
        for o in c["outputs"]:
            if o["type"] == "error":
                problems.append(f"{where}: {o['ename']}: {o['text']}")
        if "allow-stderr" not in c["tags"] and (c["stderrDom"] or "Traceback" in c["text"]):
            problems.append(f"{where} shows stderr / a traceback: {c['text'][:300]!r}")
        if "plot" in c["tags"] and not (c["images"] and all(c["images"])):
            problems.append(f"{where} is tagged 'plot' but shows no decoded image ({c['images']})")
        for w in c["widgetProblems"]:
            problems.append(f"{where}: a widget output did not render: {w!r}")
    return problems


def move_slider(lab, flow: Flow, stem: str, timeout_s: float = SLIDER_S) -> str:
    """Press ArrowRight ``flow.presses`` times on the slider; return the dependent output once it changed
    and settled (kernel idle); then, if reversible, move back and require the first output again."""
    page = lab.page
    handle = page.locator(flow.slider).nth(flow.slider_index)
    output = page.locator(flow.output).nth(flow.output_index)
    assert handle.count() and output.count(), f"{stem}: no {flow.slider!r} / {flow.output!r} rendered"
    before, value0 = fingerprint(output), handle.get_attribute("aria-valuenow")
    shot(page, output, f"{stem}_2_slider_before.png")
    handle.focus()
    for _ in range(flow.presses):
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(150)

    def settled_changed():
        a = fingerprint(output)
        if a == before or not kernel_idle(page):
            return None
        page.wait_for_timeout(500)
        return a if fingerprint(output) == a and kernel_idle(page) else None
    try:
        after = wait_until(settled_changed, timeout_s, f"{flow.output!r} to change after moving the slider")
    finally:
        shot(page, output, f"{stem}_3_slider_after.png")
    value1 = handle.get_attribute("aria-valuenow")
    assert value1 != value0, f"slider value did not move ({value0} -> {value1})"
    if flow.expect_text:
        assert flow.expect_text in after, f"expected {flow.expect_text!r} in the output, got {after!r}"
    if flow.reversible:
        handle.focus()
        for _ in range(flow.presses):
            page.keyboard.press("ArrowLeft")
            page.wait_for_timeout(150)
        wait_until(lambda: fingerprint(output) == before and kernel_idle(page), timeout_s,
                   "the output to return to its first state after moving the slider back")
        assert handle.get_attribute("aria-valuenow") == value0
    return after


def _delete_current_session(lab) -> str | None:
    """Delete the session of the notebook in front; return its kernel id (None when it has no kernel)."""
    kernel_id = lab.page.evaluate(STATE_JS)["kernelId"]
    for s in lab.api("GET", "/api/sessions"):
        if kernel_id and s["kernel"]["id"] == kernel_id:
            lab.api("DELETE", f"/api/sessions/{s['id']}")
    return kernel_id


def shutdown_kernel(lab):
    """Delete the current notebook's session; *its* kernel process (found by the kernel id in its connection
    file's name) must really exit. Kernels of other notebooks are not waited for: one left busy by an earlier
    failed test must not fail this one."""
    kernel_id = lab.page.evaluate(STATE_JS)["kernelId"]
    lab.track()
    mine = {p: lab.seen[p] for p in lab.kernels_seen
            if kernel_id and kernel_id in lab.seen[p][1] and _alive(p, lab.seen[p][0])}
    assert mine, f"no live kernel process found for the notebook's kernel {kernel_id!r}"
    _delete_current_session(lab)
    wait_until(lambda: not any(_alive(p, s) for p, (s, _) in mine.items()), TEARDOWN_S,
               "the notebook's kernel process to exit after its session was deleted")


@pytest.mark.parametrize("flow", FLOWS, ids=[f.notebook.split(".")[0] for f in FLOWS])
def test_notebook_runs_and_explorer_responds_in_jupyterlab(lab, flow):
    stem = flow.notebook.split(".")[0]
    try:
        cells, seconds = open_and_run_all(lab, flow.notebook, flow.run_timeout_s)
        problems = cell_problems(cells)
        assert not problems, f"{flow.notebook} in JupyterLab:\n" + "\n".join(problems)
        first_plot = lab.page.locator(".jp-OutputArea-output img").first
        if first_plot.count():
            shot(lab.page, first_plot, f"{stem}_1_plot.png")
        print(f"{flow.notebook}: Run All took {seconds:.1f} s in the browser (smoke mode)")
        if flow.slider:
            move_slider(lab, flow, stem)
    except BaseException:
        _quiet(lambda: _delete_current_session(lab))   # a failed notebook's kernel must not run on into the next
        raise
    shutdown_kernel(lab)


SELFCHECK = "zz_selfcheck.ipynb"       # written into the server's temp copy only, never into notebooks/
SELFCHECK_CELLS = [
    ("import sys, ipywidgets as w\n"
     "s = w.FloatSlider(value=0.0, min=-1.0, max=1.0, step=0.5, continuous_update=False)\n"
     "live, dead = w.HTML('v=0.0'), w.HTML('never changes')\n"
     "live.add_class('live'); dead.add_class('dead')\n"
     "s.observe(lambda ch: setattr(live, 'value', f'v={ch.new}'), names='value')\n"
     "w.VBox([s, live, dead])", []),
    ("done = w.IntSlider(); display(done); done.close()  # closed widget: empty output, not an error\n"
     "x = 1  # tagged plot, draws nothing", ["plot"]),
    ("bogus = {'model_id': 'no-such-model', 'version_major': 2, 'version_minor': 0}\n"
     "display({'application/vnd.jupyter.widget-view+json': bogus, 'text/plain': 'X'}, raw=True)\n"
     "print('a warning', file=sys.stderr)", []),
    ("1 / 0", []),
    ("print('after the error')", []),
]


def test_the_checks_detect_broken_notebooks_and_dead_sliders(lab):
    """The same checks on a deliberately broken notebook: each defect must be reported."""
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src, metadata={"tags": t} if t else {})
                                         for src, t in SELFCHECK_CELLS],
                                   metadata={"kernelspec": clean_notebooks.KERNELSPEC})
    nbformat.write(nb, lab.tmp / "notebooks" / SELFCHECK)
    cells, _ = open_and_run_all(lab, SELFCHECK, 120)
    problems = cell_problems(cells)
    assert [p.split(" ", 2)[1] for p in problems] == ["1", "2", "2:", "3:", "3", "4"], problems
    assert "no decoded image" in problems[0] and "a warning" in problems[1]
    assert "widget output did not render" in problems[2] and "ZeroDivisionError" in problems[3]
    assert problems[5] == "cell 4 did not run"
    assert [c["widgetViews"] for c in cells] == [1, 1, 1, 0, 0] and cells[0]["widgetsLive"] == 1
    slider = ".widget-slider .noUi-handle"
    assert move_slider(lab, Flow(SELFCHECK, slider=slider, output=".live", expect_text="v=1.0"), "zz_live").split("|")[0] == "v=1.0"
    with pytest.raises(AssertionError, match="to change after moving the slider"):
        move_slider(lab, Flow(SELFCHECK, slider=slider, output=".dead"), "zz_dead", timeout_s=5)
    shutdown_kernel(lab)


def test_teardown_leaves_no_server_kernel_or_browser_process(lab):
    lab.api("POST", "/api/kernels", {"name": "python3"})      # a kernel still running at teardown
    wait_until(lambda: lab.track() and lab.kernels_seen, KERNEL_IDLE_S, "a kernel process to appear")
    kinds = {"server": lambda c: "jupyter" in c and "lab" in c and "--IdentityProvider.token" in c,
             "kernel": lambda c: "ipykernel_launcher" in c,
             "chromium": lambda c: "chromium" in c or "chrome" in c,
             "playwright driver": lambda c: "playwright" in c}
    missing = [k for k, f in kinds.items() if not any(f(c) for _, c in lab.seen.values())]
    assert not missing, f"the session never saw its {missing} process(es); the teardown check would be empty"
    forced = lab.close()
    assert not lab.watchdog_fired, "a hard deadline was hit; processes were killed"
    assert lab.leftovers() == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", lab.port), timeout=2).close()
    assert not lab.tmp.exists()
    assert forced == [], f"graceful shutdown failed; had to kill: {forced}"
