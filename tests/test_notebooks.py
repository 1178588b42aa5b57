"""Execute every notebook in smoke mode, twice in one kernel; the first pass must be clean, the second equal.

One kernel runs all code cells, then all code cells again (the second pass is what a learner gets from
"Run All" twice). Both test functions share that one execution (cached per notebook):
* test_notebook_runs_in_smoke_mode: pass 1 has no error output, no stderr (unless the cell is tagged
  "allow-stderr"), prints at least one checked claim, and every cell tagged "plot" produced image/png;
* test_notebook_is_idempotent: pass 2 is equally clean and prints the same claim lines ("ok ..."),
  measured values included, and the same plot cells draw again.
MPLBACKEND is removed from the kernel's environment (a leaked "Agg" makes plots vanish silently); the
guard itself is tested at the bottom of this file with a control that shows the leak is detected.

A watchdog (``WatchedClient``) bounds the two waits that could hang for the whole cell time-out while the kernel
sits idle: (1) the kernel must *start* a cell -- publish any IOPub message for its request (its "busy" status
comes first) -- within START_GRACE seconds of the request, else the request is taken as never read; (2) once the
kernel has reported "idle" for a cell (the cell has finished), its execute_reply must arrive within REPLY_GRACE
seconds. A cell that runs long is never stopped by either (it is busy, and only the cell time-out applies).
Either stall stops the run with ``KernelStalled`` and ``run_twice`` restarts the kernel and runs that notebook
again, once, saying so (a warning in pytest's summary and a line on stdout). Tested by fault injection: a
kernel client that drops one execute_reply, and one that never sends one execute_request.
"""
from __future__ import annotations

import asyncio
import copy
import os
import re
import warnings
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 600
REPLY_GRACE = 120.0        # s: how long a finished cell (kernel idle on IOPub) may wait for its execute_reply
START_GRACE = 120.0        # s: how long a request may wait for the kernel's first IOPub message about it
CLAIM = re.compile(r"^(ok|FAIL) +\S.*$", re.M)       # what gpart_edu.runtime.check prints
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|min)\b")  # wall-clock times in a claim are not results
# float64 rounding residues (|x| < 1e-12, or exactly 0) depend on BLAS blocking and memory alignment, which may change between
# two runs in one kernel; the claim (residue below its tolerance) is what must repeat, not the last digits
ROUNDOFF = re.compile(r"(?<![\w.])(?:\d(?:\.\d+)?e-(?:1[3-9]|[2-9]\d|\d{3})|0(?:\.0+)?e[+-]0+)\b")


def kernel_env(mode: str = "smoke", base: dict | None = None) -> dict:
    """The kernel's environment: ``base`` (default os.environ) without MPLBACKEND, with the size mode set."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != "MPLBACKEND"}
    env["GPART_EDU_MODE"] = mode
    return env


class KernelStalled(RuntimeError):
    """The kernel never started a cell it was sent, or finished it (went idle) but its execute_reply never came."""


class WatchedClient(NotebookClient):
    """nbclient's client with a watchdog on the execute_reply of a cell that has already finished."""

    reply_grace = REPLY_GRACE
    start_grace = START_GRACE

    def process_message(self, msg, cell, cell_index):
        # called for every IOPub message whose parent is the pending request: the kernel has started that cell
        self._started_ids = getattr(self, "_started_ids", set()) | {msg["parent_header"].get("msg_id")}
        return super().process_message(msg, cell, cell_index)

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        reply = asyncio.ensure_future(super()._async_poll_for_reply(
            msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive))
        loop, pending = asyncio.get_running_loop(), {reply, task_poll_output_msg}
        deadline = loop.time() + self.start_grace
        while msg_id not in getattr(self, "_started_ids", ()) and not any(t.done() for t in pending):
            if loop.time() > deadline:                  # no "busy", no output, no reply: the request was not read
                reply.cancel()
                task_poll_kernel_alive.cancel()
                raise KernelStalled(f"the kernel did not start cell {cell.get('id')!r} (no IOPub message for its "
                                    f"request) within {self.start_grace:.0f} s")
            await asyncio.wait(pending, timeout=min(0.5, self.start_grace))
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():            # IOPub said idle: the cell is over, only the reply is missing
            done, _ = await asyncio.wait({reply}, timeout=self.reply_grace)
            if not done:
                reply.cancel()
                task_poll_kernel_alive.cancel()
                raise KernelStalled(f"the kernel went idle after cell {cell.get('id')!r} but sent no execute_reply "
                                    f"within {self.reply_grace:.0f} s")
        return reply.result()


def execute(nb, cwd: Path, env: dict, client_cls=WatchedClient):
    """Execute ``nb`` in place in a fresh python3 kernel; return (exception or None, index of the last
    cell started). Errors, cell time-outs, a stalled reply and a dead kernel all stop execution and are returned."""
    started = [-1]
    client = client_cls(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                        resources={"metadata": {"path": str(cwd)}},
                        on_cell_start=lambda cell, cell_index: started.__setitem__(0, cell_index))
    try:
        client.execute(env=env)
    except Exception as exc:  # noqa: BLE001 -- CellExecutionError, CellTimeoutError, DeadKernelError
        return exc, started[0]
    return None, started[0]


_RUNS: dict = {}


def run_twice(path: Path, client_cls=WatchedClient):
    """(pass 1 cells, pass 2 cells, pass 1 error, pass 2 error): code cells executed twice in one kernel.
    A stalled kernel (``KernelStalled``) is reported and the notebook is run once more in a fresh kernel."""
    if path not in _RUNS:
        for attempt in (1, 2):
            nb = nbformat.read(path, as_version=4)
            code = [c for c in nb.cells if c.cell_type == "code"]
            second = copy.deepcopy(code)
            for i, c in enumerate(second):
                c.id = f"rerun-{i}"
            nb.cells = code + second
            err, last = execute(nb, path.parent, kernel_env("smoke"), client_cls)
            if not isinstance(err, KernelStalled) or attempt == 2:
                break
            note = f"{path.name}: {err}; restarting the kernel and running the notebook again (once)"
            print("watchdog:", note)
            warnings.warn(note, RuntimeWarning, stacklevel=1)
        pass1_err = err if err is not None and last < len(code) else None
        pass2_err = err if err is not None and last >= len(code) else None
        _RUNS[path] = (nb.cells[:len(code)], nb.cells[len(code):], pass1_err, pass2_err)
        save_executed_copy(path, nb.cells[:len(code)], pass1_err)
    return _RUNS[path]


# ------------------------------------------------------------------ the book's execution cache (issue 17)
def save_executed_copy(path: Path, first_pass_cells: list, err) -> None:
    """Keep a clean first pass of a lecture notebook as the smoke book's executed copy (scripts/book_exec.py:
    build/executed/smoke/<name>.ipynb with the hashes of the notebook and of gpart_edu), so that the book test
    that runs after these tests executes nothing again."""
    if err is not None or path.parent != NOTEBOOK_DIR or problems(first_pass_cells, path.name):
        return
    import sys
    sys.path.insert(0, str(NOTEBOOK_DIR.parent / "scripts"))
    import book_exec
    book_exec.store_from_cells(path, first_pass_cells, "smoke")


def tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def problems(cells, name: str) -> list[str]:
    """Error outputs, unexpected stderr, and plot cells without an image, in ``cells``."""
    out = []
    for i, cell in enumerate(cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"{name} code cell {i}: {o.get('ename')}: {o.get('evalue')}")
            elif o.get("output_type") == "stream" and o.get("name") == "stderr" and "allow-stderr" not in tags(cell):
                out.append(f"{name} code cell {i} wrote to stderr (tag the cell 'allow-stderr' if intended): "
                           f"{o.get('text', '')[:300]!r}")
        if "plot" in tags(cell) and not any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])):
            out.append(f"{name} code cell {i} is tagged 'plot' but produced no image/png")
    return out


def claims(cells) -> list[str]:
    return [m.group(0) for c in cells for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stdout"
            for m in CLAIM.finditer(o.get("text", ""))]


def plot_cells(cells) -> list[int]:
    return [i for i, c in enumerate(cells) if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks matched {NOTEBOOK_DIR}/[0-9][0-9]_*.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path):
    first, _, err, _ = run_twice(path)
    found = problems(first, path.name)
    assert err is None and not found, "\n".join(found) + f"\n{type(err).__name__}: {str(err)[-2000:]}"
    lines = claims(first)
    assert lines, f"{path.name} prints no checked claim (use gpart_edu.runtime.check / check_close)"
    assert not [ln for ln in lines if ln.startswith("FAIL")], lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_idempotent(path):
    first, second, err1, err = run_twice(path)
    if err1 is not None or problems(first, path.name):
        pytest.fail("the first pass already fails: see test_notebook_runs_in_smoke_mode")
    found = problems(second, path.name + " (second run in the same kernel)")
    assert err is None and not found, "\n".join(found) + f"\n{type(err).__name__}: {str(err)[-2000:]}"
    a, b = ([ROUNDOFF.sub("<roundoff>", DURATION.sub("<time>", ln)) for ln in claims(run)] for run in (first, second))
    diff = [f"  1st: {x}\n  2nd: {y}" for x, y in zip(a, b) if x != y]
    assert a == b, (f"{path.name}: the claims differ when the notebook is run again in the same kernel "
                    f"({len(a)} vs {len(b)} lines):\n" + "\n".join(diff[:10]))
    assert plot_cells(first) == plot_cells(second)


# ------------------------------------------------------------------------- the MPLBACKEND guard
PLOT_NB = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);", metadata={"tags": ["plot"]})])


def test_kernel_env_strips_mplbackend():
    env = kernel_env("smoke", base={"MPLBACKEND": "Agg", "PATH": "/bin", "GPART_EDU_MODE": "full"})
    assert env == {"PATH": "/bin", "GPART_EDU_MODE": "smoke"}


def test_plot_check_catches_a_leaked_agg_backend_and_the_guard_prevents_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    leaked, guarded = copy.deepcopy(PLOT_NB), copy.deepcopy(PLOT_NB)
    assert execute(leaked, tmp_path, dict(os.environ))[0] is None     # the leak: no error, yet no image
    assert problems(leaked.cells, "leak") == ["leak code cell 0 is tagged 'plot' but produced no image/png"]
    assert execute(guarded, tmp_path, kernel_env("smoke"))[0] is None
    assert problems(guarded.cells, "guarded") == []


def test_idempotency_check_detects_state_carried_between_runs(tmp_path):
    path = tmp_path / "99_counter.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "n = globals().get('n', -1) + 1\nprint(f'ok counter starts at 0: expected 0; measured {n}')")]), path)
    first, second, err1, err2 = run_twice(path)
    assert err1 is None and err2 is None
    assert claims(first) == ["ok counter starts at 0: expected 0; measured 0"]
    assert claims(second) == ["ok counter starts at 0: expected 0; measured 1"]   # what the test rejects


def test_idempotency_mask_hides_only_rounding_residues_and_durations():
    line = "ok  x: expected 0.011511 (tolerance 1.2e-12); measured 0.011512 (error 6.7e-16, 0.0e+00) in 3.2 s; 8.2e-08"
    masked = ROUNDOFF.sub("<roundoff>", DURATION.sub("<time>", line))
    assert masked == ("ok  x: expected 0.011511 (tolerance 1.2e-12); measured 0.011512 (error <roundoff>, <roundoff>) "
                      "in <time>; 8.2e-08")


class DropOneReply(WatchedClient):
    """Fault injection: swallow the execute_reply of the first cell whose source holds DROP_MARK, once per
    class (so the restarted run goes through)."""

    reply_grace = 3.0
    dropped = 0

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        channel = self.kc.shell_channel
        if DROP_MARK in cell.source and type(self).dropped == 0 and not getattr(channel, "_wrapped", False):
            real = channel.get_msg

            async def get_msg(*args, **kwargs):
                msg = await real(*args, **kwargs)
                if msg["parent_header"].get("msg_id") == msg_id and type(self).dropped == 0:
                    type(self).dropped += 1
                    return await real(*args, **kwargs)          # the reply is lost: wait for the next message
                return msg
            channel.get_msg, channel._wrapped = get_msg, True
        return await super()._async_poll_for_reply(msg_id, cell, timeout, task_poll_output_msg,
                                                   task_poll_kernel_alive)


DROP_MARK = "# watchdog-test: drop this reply"
UNSENT_MARK = "# watchdog-test: never send this request"


class NeverSendOneRequest(WatchedClient):
    """Fault injection: the execute_request of the first cell whose source holds UNSENT_MARK is never sent (as if
    the kernel never read it), once per class; the client waits for it under a fresh msg_id."""

    start_grace = 3.0
    unsent = 0

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if UNSENT_MARK in cell.get("source", "") and type(self).unsent == 0:
            real = self.kc.execute

            def execute(*args, **kwargs):
                self.kc.execute = real
                type(self).unsent += 1
                return f"never-sent-{cell_index}"
            self.kc.execute = execute
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)


def test_watchdog_stops_a_run_whose_request_is_never_started(tmp_path):
    import time
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell(f"y = x + 1  {UNSENT_MARK}\nprint('ok y', y)")]
    NeverSendOneRequest.unsent = 0
    t0 = time.perf_counter()
    err, last = execute(nb, tmp_path, kernel_env("smoke"), NeverSendOneRequest)
    waited = time.perf_counter() - t0
    assert isinstance(err, KernelStalled) and "did not start cell" in str(err) and "within 3 s" in str(err), err
    assert last == 1 and NeverSendOneRequest.unsent == 1
    assert waited < CELL_TIMEOUT / 2, f"the watchdog let the run wait {waited:.0f} s"
    # a cell that runs longer than the start grace is busy, not stalled: it must not be stopped
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time; time.sleep(5); print('ok slept')")]
    assert execute(nb, tmp_path, kernel_env("smoke"), NeverSendOneRequest)[0] is None
    assert "ok slept" in nb.cells[0].outputs[0]["text"]


def test_run_twice_restarts_a_notebook_whose_request_was_never_started(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"z = 41 + 1  {UNSENT_MARK}\nprint('ok z', z)")]
    path = tmp_path / "unsent.ipynb"
    nbformat.write(nb, path)
    NeverSendOneRequest.unsent = 0
    with pytest.warns(RuntimeWarning, match="did not start cell"):
        first, second, err1, err2 = run_twice(path, NeverSendOneRequest)
    _RUNS.pop(path)
    assert err1 is None and err2 is None and NeverSendOneRequest.unsent == 1
    assert "ok z 42" in "".join(o.get("text", "") for o in first[0].outputs)
    assert "watchdog:" in capsys.readouterr().out


def _tiny_notebook(tmp_path, name="stall.ipynb"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell(f"y = x + 1  {DROP_MARK}\nprint('ok y', y)")]
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_watchdog_stops_a_run_whose_reply_never_comes(tmp_path):
    import time
    nb = nbformat.read(_tiny_notebook(tmp_path), as_version=4)
    DropOneReply.dropped = 0
    t0 = time.perf_counter()
    err, last = execute(nb, tmp_path, kernel_env("smoke"), DropOneReply)
    waited = time.perf_counter() - t0
    assert isinstance(err, KernelStalled) and "no execute_reply within 3 s" in str(err), err
    assert last == 1 and DropOneReply.dropped == 1
    assert waited < CELL_TIMEOUT / 2, f"the watchdog let the run wait {waited:.0f} s"
    # the control: without the fault the same notebook runs clean under the same client
    nb = nbformat.read(_tiny_notebook(tmp_path, "ok.ipynb"), as_version=4)
    assert execute(nb, tmp_path, kernel_env("smoke"), DropOneReply)[0] is None


def test_run_twice_restarts_a_stalled_notebook_once_and_says_so(tmp_path, capsys):
    path = _tiny_notebook(tmp_path)
    DropOneReply.dropped = 0
    with pytest.warns(RuntimeWarning, match="restarting the kernel and running the notebook again"):
        first, second, err1, err2 = run_twice(path, DropOneReply)
    _RUNS.pop(path)
    assert err1 is None and err2 is None and DropOneReply.dropped == 1
    assert "ok y 2" in "".join(o.get("text", "") for o in first[1].outputs)
    assert "watchdog:" in capsys.readouterr().out
