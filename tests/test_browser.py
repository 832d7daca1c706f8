"""Real-browser checks: JupyterLab + Playwright + Debian's Chromium.

1. The explorer notebook (a synthetic JOWA-style rollout: Q distributions, search tree, predicted
   frames) renders, moving its step slider updates the plotted Q distributions, and nothing
   overflows the notebook panel horizontally (a 1280-px panel, and a narrower one).
   Every panel follows the slider: 40 arrow-key presses, a tab reload (the notebook saved, its
   kernel still running, as autosave leaves a user), more presses and the Play button; the frame
   panel's and the predicted frames' images are decoded and compared with the rollout's frames.
2. A user's first use: in a project with a trained ``runs/pretrain-resnet-tiny``, open
   ``notebooks/07_explore_checkpoint.ipynb`` from JupyterLab's file browser (so its kernel runs
   in ``notebooks/``) and run all cells with the defaults: no error, the Q-net explorer fits.

JupyterLab runs with its default settings, as users have them (the notebook's windowing mode
included: 'contentVisibility' in the pinned 4.6; an earlier version of these tests forced 'none').

Screenshots of both explorers are written under the test's tmp folder, and copied to
``$WORKBENCH_SCREENSHOT_DIR`` when set (how ``docs/img/`` was made).

Skips (with the reason) when /usr/bin/chromium or the playwright package is missing;
`.ci/run` installs both (`apt-get install chromium`, `pip install playwright`; never
`playwright install`, which cannot download browsers here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
STEPS, GAME, SEED = 12, "Breakout", 5
LONG_STEPS = 60  # room for 40 key presses, a reload, 5 more and Play to the end


def _requirements() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "python package playwright not installed (pip install playwright)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s")


def _explorer_lab(tmp_path: Path, steps: int):
    """Notebook 07 with a synthetic rollout of ``steps`` steps, served by JupyterLab."""
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    import papermill

    work = tmp_path / "lab"
    work.mkdir()
    # Parameters injected without executing: the browser runs the notebook.
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "07_explore_checkpoint.ipynb"), str(work / "explore.ipynb"),
        parameters=dict(source="synthetic", game=GAME, seed=SEED, max_steps=steps, video=False,
                        out_dir=str(tmp_path / "explore")),
        prepare_only=True, kernel_name="python3", progress_bar=False,
    )
    yield from _serve(work, tmp_path)


@pytest.fixture()
def lab(tmp_path):
    yield from _explorer_lab(tmp_path, STEPS)


@pytest.fixture()
def lab_long(tmp_path):
    yield from _explorer_lab(tmp_path, LONG_STEPS)


@pytest.fixture()
def lab_project(tmp_path):
    """A project as a clone has it (pyproject.toml, the unmodified notebooks/) with a trained
    ``runs/pretrain-resnet-tiny`` (tiny sizes), served by JupyterLab from the project root."""
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from workbench.config import PretrainConfig
    from workbench.pipeline import pretrain

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    pretrain(PretrainConfig(output_dir=str(root / "runs" / "pretrain-resnet-tiny"), record_steps=300, steps=4,
                            batch_size=8, eval_episodes=1, eval_max_steps=20, num_envs=1, device="cpu"),
             progress=False)
    yield from _serve(root, tmp_path)


def _serve(work: Path, tmp_path: Path):
    """Run JupyterLab on ``work`` (its own settings, runtime and process group) and yield its URL."""
    # User settings: JupyterLab's defaults (the notebook's windowing mode included, as users have
    # it), only without the news pop-up.
    settings = tmp_path / "settings"
    for ext, name, value in (("apputils-extension", "notification", {"fetchNews": "false"}),):
        f = settings / f"@jupyterlab/{ext}/{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_ROOT"}  # the kernel finds the root itself
    env = dict(env, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               TQDM_DISABLE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--allow-root", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={work}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status", proc, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started and its kernels (its own process group, nothing else)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_Q_PLOT_JS = """
() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const q = plots.find(p => p.layout && p.layout.title && p.layout.title.text
                              && p.layout.title.text.startsWith('step ') && p.data && p.data.length > 3
                              && p.data[0].type === 'scatter');
  if (!q) return null;
  const d = q._fullData || q.data;  // what plotly drew: typed-array JSON ({dtype, bdata}) decoded
  return {title: q.layout.title.text, y0: Array.from(d[0].y), bar: Array.from(d[d.length - 1].x)};
}
"""


# Everything wider than its notebook output area (or a panel that scrolls sideways) is a problem.
_OVERFLOW_JS = """
() => {
  const problems = [];
  const outer = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
             || document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (outer && outer.scrollWidth > outer.clientWidth + 1)
    problems.push(`notebook scrolls sideways: ${outer.scrollWidth} > ${outer.clientWidth}`);
  for (const area of document.querySelectorAll('.jp-OutputArea-output')) {
    const limit = area.getBoundingClientRect().right;
    if (area.scrollWidth > area.clientWidth + 1)
      problems.push(`output area scrolls: ${area.scrollWidth} > ${area.clientWidth}`);
    for (const el of area.querySelectorAll('.js-plotly-plot, .widget-box, .widget-html, .widget-slider')) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > limit + 1)
        problems.push(`${el.className.split(' ')[0]} ends at ${Math.round(r.right)} px, `
                      + `the output at ${Math.round(limit)}`);
    }
  }
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  return {panel: panel ? Math.round(panel.getBoundingClientRect().width) : null, problems};
}
"""


def _check_no_overflow(page, where: str) -> int:
    """Assert nothing overflows horizontally; returns the notebook panel's width in px."""
    page.wait_for_timeout(500)  # let plotly finish its relayout after a resize
    found = page.evaluate(_OVERFLOW_JS)
    assert not found["problems"], f"{where} (panel {found['panel']} px): " + "; ".join(found["problems"])
    return int(found["panel"])


def _screenshot(page, tmp_path: Path, name: str) -> None:
    """The explorer's output (slider to last figure) as a PNG, kept with the test's files and
    copied to $WORKBENCH_SCREENSHOT_DIR when that is set."""
    out = page.locator(".jp-OutputArea-output", has=page.locator(".widget-slider")).first
    out.scroll_into_view_if_needed()
    path = tmp_path / f"{name}.png"
    out.screenshot(path=str(path))
    target = os.environ.get("WORKBENCH_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _start_run_all(page) -> None:
    """Accept a kernel proposal if JupyterLab asks, wait for the kernel, then Run All Cells."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    try:
        page.click(".jp-Dialog .jp-mod-accept", timeout=15_000)
    except PlaywrightTimeout:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


def _run_all(page) -> None:
    """Run the notebook; returns once the explorer's slider is shown (or fails at once with the
    notebook's error)."""
    _start_run_all(page)
    slider = page.locator(".widget-slider .noUi-handle").first
    page.locator(".jp-Cell").last.scroll_into_view_if_needed()
    error = page.locator("[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    slider.or_(error).first.wait_for(timeout=240_000)  # fail fast on a notebook error
    if error.count():
        raise AssertionError("the notebook raised:\n" + error.first.inner_text())


# What the page shows instead of the expected plot: every plotly plot's title and trace types,
# and the widget manager's own error texts ("Error displaying widget", "model not found").
_DIAGNOSE_JS = """
() => ({
  plots: [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
    title: p.layout && p.layout.title ? p.layout.title.text : null,
    traces: p.data ? p.data.map(d => d.type) : null})),
  widget_errors: [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText)
    .filter(t => /Error displaying widget|model not found|Failed to load/i.test(t)).map(t => t.slice(0, 300)),
  kernel: (document.querySelector('.jp-Notebook-ExecutionIndicator') || {dataset: {}}).dataset.status || null,
})
"""


def _dump_failure(page, tmp_path: Path, console: list[str]) -> None:
    """Leave evidence of a failure: a screenshot and the page's text in the test's folder, and what
    the page shows (plots, widget errors, kernel state, console) on stderr, which CI prints."""
    page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
    (tmp_path / "failure.txt").write_text(page.inner_text("body") + "\n--- console\n" + "\n".join(console))
    print(f"browser test failed; screenshot and text in {tmp_path}; the page shows "
          f"{json.dumps(page.evaluate(_DIAGNOSE_JS))}; last console lines: {console[-20:]}", file=sys.stderr)


def _run_until_q_plot(page, url: str, console: list[str], *, attempts: int = 2) -> None:
    """Open ``url``, run all cells and wait until the Q-distribution plot is drawn.

    The kernel side of the explorer is deterministic, but on a loaded 2-core CI machine the
    browser was once seen to show the slider and never draw the plots (CI of 2026-11-30; not
    reproducible here, also not under a 4-process load). What the page showed instead is
    printed, so a CI log says why; then the page is reloaded and the notebook run again, once."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(1, attempts + 1):
        if attempt == 1:
            page.goto(url, timeout=90_000)
        else:
            page.reload(timeout=90_000)
        _run_all(page)
        try:
            page.wait_for_function(f"({_Q_PLOT_JS})() !== null", timeout=120_000)
            return
        except PlaywrightTimeout:
            seen = page.evaluate(_DIAGNOSE_JS)
            print(f"attempt {attempt}/{attempts}: the Q plot did not appear within 120 s; the page shows "
                  f"{json.dumps(seen)}; last console lines: {console[-20:]}", file=sys.stderr)
            if attempt == attempts:
                raise


def _press_until(page, handle, key: str, value: int, attempts: int = 4) -> None:
    """Press ``key`` on the slider handle until it shows ``value``; on a busy machine a late
    re-render can take the focus away, so re-focus and retry (the value check is exact)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(attempts):
        handle.focus()
        page.keyboard.press(key)
        try:
            page.wait_for_function(
                "v => Number(document.querySelector('.widget-slider .noUi-handle')"
                ".getAttribute('aria-valuenow')) >= v", arg=value, timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the slider did not reach {value} after {attempts} key presses")


def test_explorer_notebook_slider_updates_plot_in_chromium(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    from workbench.viz.rollout import synthetic_rollout

    expected = synthetic_rollout(STEPS, game=GAME, seed=SEED)  # the notebook's rollout, rebuilt
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        # 1600 px with the file browser open leaves the notebook panel about 1,280 px wide.
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            _run_until_q_plot(page, f"{lab}/lab/tree/explore.ipynb", console)
            slider = page.locator(".widget-slider .noUi-handle").first
            before = page.evaluate(_Q_PLOT_JS)
            assert before["title"].startswith("step 0")
            np.testing.assert_allclose(before["y0"], expected.q_probs[0, 0], rtol=1e-5)

            for target in (1, 2, 3):  # the keyboard steps the noUiSlider by one per press
                _press_until(page, slider, "ArrowRight", target)
            page.wait_for_function(f"({_Q_PLOT_JS})().title.startsWith('step 3')", timeout=60_000)
            after = page.evaluate(_Q_PLOT_JS)
            np.testing.assert_allclose(after["y0"], expected.q_probs[3, 0], rtol=1e-5)
            q3 = expected.q_probs[3].astype(np.float64) @ expected.support.astype(np.float64)
            np.testing.assert_allclose(after["bar"], q3, rtol=1e-5)
            assert "step 3/" in page.inner_text(".widget-html-content >> nth=0")
            # Tree nodes carry visible labels (action and score), not only hover text.
            labels = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot .textpoint text')]"
                                   ".map(t => t.textContent)")
            assert "root" in labels and any(len(t.split()) == 2 for t in labels), labels
            panel = _check_no_overflow(page, "JOWA explorer, 1600-px window with the file browser")
            assert panel >= 1200, f"the notebook panel is {panel} px, not the ~1,280 px this check is about"
            _screenshot(page, tmp_path, "explorer_jowa_1280")
            page.set_viewport_size({"width": 1280, "height": 1200})  # a narrower panel: rows wrap
            _check_no_overflow(page, "JOWA explorer, 1280-px window with the file browser")
        except Exception:
            _dump_failure(page, tmp_path, console)
            raise
        finally:
            browser.close()


# Every frame image the notebook shows, in page order, as a PNG data URI: plotly's drawn
# <image> elements (what the SVG shows, not the trace's data) and image widgets (blob URLs, read
# back). The explorer shows the frame panel first, then real t+1..t+K and predicted t+1..t+K.
_FRAMES_JS = """
async () => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return [];
  const read = async src => {
    if (!src || src.startsWith('data:')) return src || null;
    const blob = await (await fetch(src)).blob();
    return await new Promise(done => { const r = new FileReader(); r.onload = () => done(r.result);
                                       r.readAsDataURL(blob); });
  };
  const out = [];
  for (const el of panel.querySelectorAll('.js-plotly-plot g.im image, img.widget-image')) {
    const box = el.getBoundingClientRect();
    const src = el.tagName.toLowerCase() === 'img' ? el.getAttribute('src')
              : (el.getAttribute('href') || el.getAttribute('xlink:href'));
    out.push({src: await read(src), w: box.width, h: box.height});
  }
  return out;
}
"""

# The plots' titles (each panel's figure is titled with its step) and the caption.
_PANELS_JS = """
() => ({
  titles: [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot')]
    .map(p => p.layout && p.layout.title ? p.layout.title.text : null),
  caption: (document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-html-content') || {}).innerText,
  slider: Number((document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider .noUi-handle')
                  || {getAttribute: () => NaN}).getAttribute('aria-valuenow')),
})
"""


def _png(uri: str | None) -> np.ndarray | None:
    import base64
    import io

    from PIL import Image

    if not uri or not uri.startswith("data:image/png;base64,"):
        return None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L"))


def _which_step(img: np.ndarray | None, rollout) -> str:
    """Name what an image shows: the rollout frame(s) or predicted frames it equals, else its shape."""
    if img is None:
        return "no PNG"
    if img.shape != rollout.frames.shape[1:]:
        return f"a {img.shape} image"
    steps = [t for t in range(len(rollout)) if np.array_equal(img, rollout.frames[t])]
    pred = [f"step {t}'s predicted t+{k + 1}" for t in range(len(rollout))
            for k in range(rollout.predicted_frames.shape[1]) if np.array_equal(img, rollout.predicted_frames[t, k])]
    return f"frame {steps}" if steps else (" / ".join(pred) or "no rollout frame")


def _panel_problems(page, expected, t: int) -> list[str]:
    """What the explorer shows that is not step ``t``: caption, plots (each titled 'step t'), the Q
    distributions' data, the frame panel and the real/predicted next frames (decoded pixels)."""
    problems = []
    seen = page.evaluate(_PANELS_JS)
    if seen["slider"] != t:
        problems.append(f"slider at {seen['slider']}")
    if f"step {t}/" not in (seen["caption"] or ""):
        problems.append(f"caption {seen['caption']!r}")
    steps = [int(m.group(1)) for x in seen["titles"] if x and (m := re.match(r"step (\d+)", x))]
    if len(steps) < 2 or set(steps) != {t}:  # the Q distributions and the search tree at least
        problems.append(f"plots titled with steps {steps}")
    q = page.evaluate(_Q_PLOT_JS)
    want_y0 = expected.q_probs[t, 0]
    if (q is None or not q["title"].startswith(f"step {t} ") or len(q["y0"]) != len(want_y0)
            or not np.allclose(q["y0"], want_y0, rtol=1e-5)):
        problems.append(f"the Q plot ({q['title'] if q else None!r}) does not draw step {t}'s distributions")
    shown = page.evaluate(_FRAMES_JS)
    k = expected.predicted_frames.shape[1]
    want = [expected.frames[t]] + list(expected.real_next_frames(t, k)) + list(expected.predicted_frames[t])
    names = ["frame panel"] + [f"real t+{i + 1}" for i in range(k)] + [f"predicted t+{i + 1}" for i in range(k)]
    if len(shown) != len(want):
        problems.append(f"{len(shown)} frame images shown, {len(want)} expected")
    for name, img, frame in zip(names, shown, want):
        pixels = _png(img["src"])
        if img["w"] < 50 or img["h"] < 50:
            problems.append(f"{name} drawn {img['w']:.0f}x{img['h']:.0f} px")
        if pixels is None or pixels.shape != frame.shape or not np.array_equal(pixels, frame):
            problems.append(f"{name} shows {_which_step(pixels, expected)}")
    return problems


def _wait_for_step(page, expected, t: int, where: str, timeout: float = 120.0) -> None:
    """Wait until every panel shows step ``t`` (the kernel may still be working through key
    presses); fail with what each panel shows instead."""
    deadline = time.monotonic() + timeout
    while True:
        problems = _panel_problems(page, expected, t)
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{where}: the explorer does not show step {t}: " + "; ".join(problems))
        page.wait_for_timeout(500)


def _slider_to(page, target: int, key: str) -> None:
    """Press ``key`` on the slider handle as a user does (no pause between presses) until it shows
    ``target``; re-focus it if a re-render took the focus away."""
    handle = page.locator(".widget-slider .noUi-handle").first
    value = "Number(document.querySelector('.widget-slider .noUi-handle').getAttribute('aria-valuenow'))"
    for _ in range(4):
        now = int(page.evaluate(f"() => {value}"))
        if now == target:
            return
        handle.focus()
        for _ in range(abs(target - now)):
            page.keyboard.press(key)
        page.wait_for_timeout(300)
    raise AssertionError(f"the slider did not reach {target} (it shows {page.evaluate(f'() => {value}')})")


def _save_and_reload(page, ready: str = ".widget-slider .noUi-handle") -> None:
    """Save the notebook (File > Save, what autosave does every two minutes), reload the tab and wait
    for the explorer (its ``ready`` element) to be restored from the still-running kernel."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.click(".lm-MenuBar-itemLabel:text-is('File')")
    page.click(".lm-Menu-itemLabel:text-is('Save Notebook')")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')",
                           timeout=30_000)
    page.reload(timeout=90_000)
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    try:
        page.click(".jp-Dialog .jp-mod-accept", timeout=10_000)
    except PlaywrightTimeout:
        pass
    page.locator(ready).first.wait_for(timeout=120_000)
    page.locator(ready).first.scroll_into_view_if_needed()


def test_explorer_panels_follow_keys_reload_and_play(lab_long, tmp_path):
    """Issue 29: after Run All and 40 presses of the arrow key the frame went blank; after a tab
    reload the frame stayed at step 0 while the slider said 45. With JupyterLab's default settings
    and a 1280-px notebook panel, every panel (caption, frame, Q distributions, search tree, real
    and predicted next frames) must show the slider's step: after 40 presses, after a reload, after
    5 more presses and after Play ran to the last step."""
    from playwright.sync_api import sync_playwright

    from workbench.viz.rollout import synthetic_rollout

    expected = synthetic_rollout(LONG_STEPS, game=GAME, seed=SEED)  # the notebook's rollout, rebuilt
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})  # a ~1,280-px notebook panel
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            _run_until_q_plot(page, f"{lab_long}/lab/tree/explore.ipynb", console)
            page.locator(".widget-slider").first.scroll_into_view_if_needed()
            panel = _check_no_overflow(page, "explorer, 1600-px window with the file browser")
            assert panel >= 1200, f"the notebook panel is {panel} px, not the ~1,280 px this check is about"
            _wait_for_step(page, expected, 0, "after Run All")

            _slider_to(page, 40, "ArrowRight")
            _wait_for_step(page, expected, 40, "after 40 arrow-key presses")

            _save_and_reload(page)
            _wait_for_step(page, expected, 40, "after a tab reload")
            _slider_to(page, 45, "ArrowRight")
            _wait_for_step(page, expected, 45, "after a reload and 5 more presses")

            page.locator(".widget-play button").first.click()  # Play: 45 .. the last step, then stops
            last = LONG_STEPS - 1
            _wait_for_step(page, expected, last, "after Play")
            _check_no_overflow(page, "explorer after Play, 1600-px window with the file browser")
        except Exception:
            _dump_failure(page, tmp_path, console)
            raise
        finally:
            browser.close()


def test_explorer_opened_from_the_file_browser_runs_with_defaults(lab_project, tmp_path):
    """JupyterLab starts the kernel in notebooks/: the default checkpoint runs/pretrain-resnet-tiny
    must still be found (it lives at the project root), and the Q-net explorer must fit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            page.goto(f"{lab_project}/lab", timeout=90_000)
            page.locator(".jp-DirListing-itemText", has_text="notebooks").first.dblclick(timeout=60_000)
            page.locator(".jp-DirListing-itemText", has_text="07_explore_checkpoint.ipynb").first.dblclick(
                timeout=60_000)
            _run_all(page)
            page.wait_for_function(f"({_Q_PLOT_JS})() !== null", timeout=180_000)  # a loaded CI machine is slow
            caption = page.locator(".widget-html-content", has_text="step 0/").first.inner_text()
            assert "Pong" in caption and "action" in caption
            video = page.locator("video")
            video.first.wait_for(timeout=240_000)  # the last cell: the rollout's mp4, inline
            panel = _check_no_overflow(page, "Q-net explorer, 1600-px window with the file browser")
            assert panel >= 1200, f"the notebook panel is {panel} px"
            _screenshot(page, tmp_path, "explorer_qnet_1280")
            page.set_viewport_size({"width": 1280, "height": 1200})
            _check_no_overflow(page, "Q-net explorer, 1280-px window with the file browser")
        except Exception:
            _dump_failure(page, tmp_path, console)
            raise
        finally:
            browser.close()


# ------------------------------------------------------------------------------------- ablation explorer


@pytest.fixture()
def lab_ablation(tmp_path):
    """Two tiny runs that differ in one algorithm setting (feature normalization), and notebook 06
    prepared to explore them (parameters injected; the browser runs it)."""
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    import papermill

    from workbench.config import PretrainConfig
    from workbench.pipeline import pretrain

    runs = []
    for norm in (True, False):
        out = tmp_path / "runs" / f"norm-{norm}"
        pretrain(PretrainConfig(output_dir=str(out), algo_args={"feature_norm": norm}, record_steps=100, steps=4,
                                batch_size=8, eval_episodes=2, eval_max_steps=200, num_envs=1, device="cpu"),
                 progress=False)
        runs.append(out)
    work = tmp_path / "lab"
    work.mkdir()
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "06_analysis.ipynb"), str(work / "analysis.ipynb"),
        parameters=dict(run_dirs=",".join(map(str, runs)), out_dir=str(tmp_path / "figures"), png=False, reps=100),
        prepare_only=True, kernel_name="python3", progress_bar=False,
    )
    yield from ((url, runs) for url in _serve(work, tmp_path))


_AGG_PLOT_JS = """
prefix => {
  const p = [...document.querySelectorAll('.js-plotly-plot')].find(p => p.layout && p.layout.title
             && p.layout.title.text && p.layout.title.text.startsWith(prefix) && p.data && p.data.length);
  return p ? {title: p.layout.title.text, x: Array.from(p.data[0].x), y: Array.from(p.data[0].y)} : null;
}
"""


def test_ablation_explorer_metric_widget_redraws_the_plot_with_the_right_numbers(lab_ablation, tmp_path):
    """Run notebook 06 in JupyterLab, choose 'optimality gap' in the explorer's metric menu, and the
    aggregate plot must show workbench.metrics' optimality gaps of the two runs' evaluation files,
    also after a tab reload (issue 29: a go.FigureWidget drew its first figure again)."""
    from playwright.sync_api import sync_playwright

    from workbench import metrics as M

    url, runs = lab_ablation
    scores = {}
    for run, norm in zip(runs, (True, False)):
        per_game = json.loads((run / "eval" / "scores.json").read_text())["per_game"]
        scores[f"feature_norm={norm}"] = {g: per_game[g]["scores"] for g in sorted(per_game)}
    expected = M.aggregate(scores, "human", reps=100, seed=0)  # one seed per level: episodes are the runs
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            page.goto(f"{url}/lab/tree/analysis.ipynb", timeout=90_000)
            _start_run_all(page)
            error = page.locator("[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
            deadline = time.monotonic() + 300
            while page.evaluate(_AGG_PLOT_JS, "IQM (") is None:
                if error.count():
                    raise AssertionError("the notebook raised:\n" + error.first.inner_text())
                assert time.monotonic() < deadline, "the explorer's aggregate plot never appeared"
                page.wait_for_timeout(500)
            before = page.evaluate(_AGG_PLOT_JS, "IQM (")
            assert before["x"] == ["True", "False"]
            np.testing.assert_allclose(before["y"], [expected[k]["iqm"] for k in scores], rtol=1e-9)

            menu = page.locator(".widget-dropdown", has=page.locator("label", has_text="metric")).locator("select")
            menu.select_option(label="optimality gap")
            page.wait_for_function(f"({_AGG_PLOT_JS})('optimality gap (') !== null", timeout=60_000)
            after = page.evaluate(_AGG_PLOT_JS, "optimality gap (")
            assert after["x"] == ["True", "False"]
            np.testing.assert_allclose(after["y"], [expected[k]["optimality_gap"] for k in scores], rtol=1e-9)
            assert page.evaluate(_AGG_PLOT_JS, "IQM (") is None  # redrawn in place, not a second plot

            # A tab reload restores the widgets' synced state: the current choice, not the first.
            _save_and_reload(page, ready=".widget-dropdown select")
            page.wait_for_function(f"({_AGG_PLOT_JS})('optimality gap (') !== null", timeout=60_000)
            reloaded = page.evaluate(_AGG_PLOT_JS, "optimality gap (")
            np.testing.assert_allclose(reloaded["y"], after["y"], rtol=1e-12)
            assert page.evaluate(_AGG_PLOT_JS, "IQM (") is None, "after a reload the explorer drew its first choice"
        except Exception:
            _dump_failure(page, tmp_path, console)
            raise
        finally:
            browser.close()
