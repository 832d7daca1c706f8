"""Issue 29.1, progress that reads as progress: outside a notebook someone has open (a terminal, a
log, papermill) every job's bar is plain text lines, at most every few seconds and at the end,
each with the count, the rate and the ETA; a widget only where a person watches a live front end.

The rule is simulated (a stand-in IPython kernel whose request allows stdin or not, as a live front
end's and nbclient's do) and checked in a real papermill run; the lines are checked with a fake
clock and in a real (tiny) training job."""

from __future__ import annotations

import io
import re
import sys
import types

import pytest
from linear_trainable import Algo, batches
from linear_trainable import cfg as _cfg

from workbench import progress as P
from workbench.train import train

LINE = re.compile(r"^(?P<desc>[^:]+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.e+]+|\?) (?P=unit)/s, elapsed (?P<elapsed>[\d:]+), ETA (?P<eta>[\d:]+|\?)"
                  r"(?: \| (?P<postfix>.*))?$")


@pytest.fixture
def shown(monkeypatch):
    """Bars enabled (the test-wide TQDM_DISABLE lifted), the rule left to decide."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv(P.MODE_ENV, raising=False)
    monkeypatch.delenv(P.INTERVAL_ENV, raising=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ the lines


def test_text_lines_come_every_interval_with_count_rate_and_eta(shown):
    clock, out = FakeClock(), io.StringIO()
    bar = P.progress_bar(total=3000, desc="record Pong", unit="step", interval=10, clock=clock, file=out, mode="text")
    for n in range(1, 3001):
        if n % 100 == 0:
            clock.now += 1  # 100 steps a second: 30 s in all
        if n == 2950:
            bar.set_postfix(loss="0.1234")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 3  # the start, then one every 10 s (the last one is the end's)
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert lines[0] == "record Pong: 0/3000 step (0%), ? step/s, elapsed 0:00, ETA ?"
    assert lines[1] == "record Pong: 1000/3000 step (33%), 100 step/s, elapsed 0:10, ETA 0:20"
    assert lines[-1] == "record Pong: 3000/3000 step (100%), 100 step/s, elapsed 0:30, ETA 0:00 | loss=0.1234"


def test_the_close_prints_the_last_count(shown):
    clock, out = FakeClock(), io.StringIO()
    bar = P.progress_bar(total=50, desc="build store", unit="row", interval=10, clock=clock, file=out, mode="text")
    clock.now += 2
    bar.update(20)  # stopped early (an error): the close still says where it got
    bar.close()
    bar.close()
    assert out.getvalue().splitlines()[1:] == ["build store: 20/50 row (40%), 10 row/s, elapsed 0:02, ETA 0:03"]


def test_a_resumed_bar_counts_its_rate_from_where_it_started(shown):
    clock, out = FakeClock(), io.StringIO()
    with P.progress_bar(total=100, initial=60, desc="train", unit="step", interval=0, clock=clock, file=out,
                        mode="text") as bar:
        clock.now += 4
        bar.update(20)  # 20 steps in 4 s: 5 steps/s, 20 left
    first, second = out.getvalue().splitlines()
    assert first.startswith("train: 60/100 step (60%)")
    assert second == "train: 80/100 step (80%), 5 step/s, elapsed 0:04, ETA 0:04"


def test_an_iterable_and_hours(shown):
    clock, out = FakeClock(), io.StringIO()
    seen = []
    for x in P.progress_bar(range(4), desc="tokenize Pong", unit="batch", interval=3600, clock=clock, file=out,
                            mode="text"):
        seen.append(x)
        clock.now += 1800  # half an hour a batch
    assert seen == [0, 1, 2, 3]
    lines = out.getvalue().splitlines()
    assert lines[-1] == "tokenize Pong: 4/4 batch (100%), 0.000556 batch/s, elapsed 2:00:00, ETA 0:00"
    assert lines[1] == "tokenize Pong: 2/4 batch (50%), 0.000556 batch/s, elapsed 1:00:00, ETA 1:00:00"


def test_large_counts_and_rates_stay_plain_numbers(shown):
    clock, out = FakeClock(), io.StringIO()
    with P.progress_bar(total=2_000_000, desc="build store", unit="row", interval=0, clock=clock, file=out,
                        mode="text") as bar:
        clock.now += 40
        bar.update(1_000_000)
    assert out.getvalue().splitlines()[-1] == (
        "build store: 1000000/2000000 row (50%), 25000 row/s, elapsed 0:40, ETA 0:40")


def test_tqdm_disable_and_disable_silence_it(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with P.progress_bar(total=5, desc="x", interval=0, file=out, mode="text") as bar:
        bar.update(5)
    monkeypatch.delenv("TQDM_DISABLE")
    with P.progress_bar(total=5, desc="x", interval=0, file=out, mode="text", disable=True) as bar:
        bar.update(5)
    assert out.getvalue() == ""
    monkeypatch.setenv("TQDM_DISABLE", "0")  # tqdm's own reading: 0 keeps the bar
    assert not P.silenced()


def test_a_tiny_training_job_prints_periodic_lines_in_a_terminal(shown, monkeypatch, tmp_path, capsys):
    """The trainer's own bar outside any kernel: a line per step at interval 0, each with a rate
    and an ETA, the last one at 100% with the loss."""
    monkeypatch.setenv(P.INTERVAL_ENV, "0")
    assert P.display_mode() == "text"  # pytest is no kernel
    train(Algo(), batches, _cfg(5, device="cpu"), tmp_path / "run", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed) and len(lines) == 6, lines  # the start, then one per step
    assert [int(m["n"]) for m in parsed] == [0, 1, 2, 3, 4, 5]
    assert all(m["rate"] != "?" and m["eta"] != "?" for m in parsed[1:]), lines
    assert parsed[-1]["pct"] == "100" and parsed[-1]["eta"] == "0:00" and parsed[-1]["postfix"].startswith("loss=")


# ------------------------------------------------------------------------------ the rule


def _kernel(monkeypatch, shell_class: str, allow_stdin: bool) -> None:
    """A stand-in IPython whose shell (of ``shell_class``) runs a request with ``allow_stdin``."""
    kernel = types.SimpleNamespace(_allow_stdin=allow_stdin)
    shell = type(shell_class, (), {"kernel": kernel})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))


def test_the_rule_picks_text_under_papermill_and_a_widget_in_a_live_front_end(shown, monkeypatch):
    assert P.display_mode() == "text"  # no kernel: a terminal or a log
    _kernel(monkeypatch, "ZMQInteractiveShell", allow_stdin=False)  # nbclient's requests: papermill, nbconvert
    assert not P.live_frontend() and P.display_mode() == "text"
    _kernel(monkeypatch, "TerminalInteractiveShell", allow_stdin=True)  # IPython in a terminal
    assert P.display_mode() == "text"
    _kernel(monkeypatch, "ZMQInteractiveShell", allow_stdin=True)  # JupyterLab, Notebook, VS Code
    assert P.live_frontend() and P.display_mode() == "widget"
    monkeypatch.setenv(P.MODE_ENV, "text")
    assert P.display_mode() == "text"
    monkeypatch.setenv(P.MODE_ENV, "bars")
    with pytest.raises(ValueError, match="WORKBENCH_PROGRESS"):
        P.display_mode()


def test_papermill_mode_writes_lines_and_live_mode_hands_over_to_tqdm(shown, monkeypatch):
    out = io.StringIO()
    _kernel(monkeypatch, "ZMQInteractiveShell", allow_stdin=False)
    with P.progress_bar(total=3, desc="evaluate", unit="episode", interval=0, file=out) as bar:
        bar.update(3)
    assert bar.mode == "text" and out.getvalue().splitlines()[-1].startswith("evaluate: 3/3 episode (100%)")

    made = []

    class Widget:
        def __init__(self, **kw):
            made.append(kw)
            self.n, self.closed = 0, False

        def update(self, n):
            self.n += n

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s

        def close(self):
            self.closed = True

    monkeypatch.setattr(P, "_tqdm", Widget)
    _kernel(monkeypatch, "ZMQInteractiveShell", allow_stdin=True)
    out = io.StringIO()
    with P.progress_bar(total=3, desc="evaluate", unit="episode", interval=0, file=out) as bar:
        bar.update(2)
        bar.set_postfix(loss=1)
    assert bar.mode == "widget" and out.getvalue() == ""
    assert made == [{"total": 3, "desc": "evaluate", "unit": "episode", "initial": 0}]
    assert bar._widget.n == 2 and bar._widget.closed and bar._widget.postfix == "loss=1"


@pytest.mark.slow  # starts a kernel
def test_a_real_papermill_run_gets_text_lines(shown, tmp_path):
    papermill = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\n"
        "os.environ.pop('TQDM_DISABLE', None)\n"
        "from workbench.progress import display_mode, progress_bar\n"
        "print('mode', display_mode())\n"
        "with progress_bar(total=4, desc='record Pong', unit='step', interval=0) as bar:\n"
        "    for _ in range(4):\n"
        "        bar.update(1)\n"
    )]
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(str(src), str(dst), kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    outputs = nbformat.read(dst, as_version=4).cells[-1].outputs
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    stdout = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "mode text" in stdout
    lines = stderr.splitlines()
    assert len(lines) == 5 and all(LINE.match(line) for line in lines), lines
    assert lines[-1].startswith("record Pong: 4/4 step (100%)")
