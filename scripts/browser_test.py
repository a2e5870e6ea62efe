"""The threshold explorer in a real browser: JupyterLab driven by headless Chromium (`make test-browser`).

Starts JupyterLab on a free localhost port with a random token (SSDLAB_PROFILE=smoke, autosave off,
throw-away settings and workspaces), opens notebooks/03_threshold_explorer.ipynb in headless
Chromium through chromedriver, runs all cells from the Run menu, then moves the prune-percent
slider (PageUp/PageDown on its handle) and switches the `regular` checkbox. After each it checks that
the figure (per-layer kept channels) and the params/MACs summary changed. Screenshots go to
build/browser/{before,slider,after}.png, the server's log to build/browser/jupyterlab.log.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and
nothing else beyond the standard library: it speaks the W3C WebDriver protocol over HTTP itself.
Whatever happens, the browser, chromedriver, JupyterLab and its kernel are stopped at the end, and
the notebook file is left as it was (it is never saved). Exit status 0 on success, 1 with a message.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/03_threshold_explorer.ipynb"
OUT = ROOT / "build" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1400"]
# JupyterLab user settings for the run: never autosave (the notebook must stay unmodified), no news pop-ups.
LAB_SETTINGS = {"@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                    {"fetchNews": "false", "checkForUpdates": False}}
PAGE_UP, PAGE_DOWN = "\ue00e", "\ue00f"  # WebDriver key codes


class Failure(Exception):
    """A check that did not hold; the message says which."""


class ServerError(Failure):
    """The Jupyter server answered 5xx (it does while a kernel is still starting)."""


def log(message: str) -> None:
    print(f"[browser-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, probe, timeout: float, interval: float = 0.5):
    """Poll `probe()` until it returns something truthy; Failure after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http(method: str, url: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        kind = ServerError if err.code >= 500 else Failure
        raise kind(f"{method} {url} -> HTTP {err.code}: {text[:500]}") from None
    return json.loads(text) if text else {}


def responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except (OSError, urllib.error.URLError):
        return False


# ---------------------------------------------------------------- processes

def proc_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of `root` (Linux /proc), with its start time to guard against pid reuse."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid not in found and (start := proc_start_time(pid)):
                found[pid] = start
                todo.append(pid)
    return found


class Managed:
    """A child process in its own process group, and everything it spawned, stopped by `stop()`."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None):
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True)
        self.known: dict[int, str] = {}  # descendants seen so far (kernels start their own sessions)

    def remember_children(self) -> None:
        if self.proc.poll() is None:
            self.known.update(descendants(self.proc.pid))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        self.remember_children()
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for pid, start in self.known.items():  # whatever outlived its parent or left the group
            if proc_start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log_file.close()


# ---------------------------------------------------------------- WebDriver

class Browser:
    """Headless Chromium through chromedriver, spoken to in plain W3C WebDriver."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self, profile_dir: Path):
        port = free_port()
        self.driver = Managed([CHROMEDRIVER, f"--port={port}"], OUT / "chromedriver.log")
        self.base = f"http://127.0.0.1:{port}"
        wait_for("chromedriver", lambda: responds(self.base + "/status") or self._died(), 30)
        options = {"binary": CHROMIUM, "args": CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options,
                                                 "timeouts": {"script": 60000, "pageLoad": 120000}}}}
        self.session = http("POST", self.base + "/session", caps, timeout=120)["value"]["sessionId"]

    def _died(self):
        if not self.driver.alive():
            raise Failure(f"chromedriver exited (see {OUT / 'chromedriver.log'})")

    def call(self, method: str, path: str, body: dict | None = None):
        return http(method, f"{self.base}/session/{self.session}{path}", body)["value"]

    def get(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str):
        """The first element matching `css`, or None."""
        found = self.call("POST", "/elements", {"using": "css selector", "value": css})
        return found[0] if found else None

    def click(self, element) -> None:
        self.call("POST", f"/element/{element[self.ELEMENT]}/click", {})

    def keys(self, element, text: str) -> None:
        self.call("POST", f"/element/{element[self.ELEMENT]}/value", {"text": text})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("GET", "/screenshot")))
        log(f"screenshot {path.relative_to(ROOT)}")

    def quit(self) -> None:
        try:
            http("DELETE", f"{self.base}/session/{self.session}", timeout=30)
        finally:
            self.driver.stop()


# ---------------------------------------------------------------- the page

# Everything read off the page in one script: prompts of the code cells, error outputs, the explorer.
STATE_JS = """
const q = (s) => document.querySelector(s);
const text = (s) => (q(s) ? q(s).innerText.trim() : null);
const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.innerText.trim());
const errors = [...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText)
    .filter(t => t.includes('Traceback')).map(t => t.slice(-800));
const img = q('.ssdlab-explorer .ssdlab-kept img');
const box = q('.ssdlab-regular input[type=checkbox]');
return {prompts, errors, explorer: !!q('.ssdlab-explorer'), summary: text('.ssdlab-summary'),
        percent: text('.ssdlab-percent .widget-readout'), image: img ? img.src : null,
        regular: box ? box.checked : null,
        status: q('.jp-Notebook-ExecutionIndicator') ? q('.jp-Notebook-ExecutionIndicator').dataset.status : null};
"""


def run_all_cells(browser: Browser, timeout: float) -> dict:
    """Run → Run All Cells from the menu bar, and wait until every code cell has run."""
    menu = browser.js("return [...document.querySelectorAll('.lm-MenuBar-item')]"
                      ".find(e => e.innerText.trim() === 'Run') || null")
    if not menu:
        raise Failure("no Run menu in the JupyterLab menu bar")
    browser.click(menu)
    item = wait_for("the menu item Run All Cells", lambda: browser.js(
        "return [...document.querySelectorAll('.lm-Menu-item')]"
        ".find(e => e.innerText.trim().startsWith('Run All Cells')) || null"), 10)
    browser.click(item)

    def finished():
        state = browser.js(STATE_JS)
        if state["errors"]:
            raise Failure("a cell failed:\n" + "\n---\n".join(state["errors"]))
        busy = any(p.startswith("[*]") for p in state["prompts"])
        return state if not busy and state["prompts"] and all(p[1:-2].strip().isdigit() for p in state["prompts"]) \
            else None

    return wait_for("all cells to run (prompts numbered, none busy)", finished, timeout, interval=1.0)


def settled_change(browser: Browser, before: dict, what: str, timeout: float = 90.0) -> dict:
    """Wait until the summary text and the figure differ from `before` and stay put for 2 s."""
    def changed():
        state = browser.js(STATE_JS)
        ok = state["summary"] and state["image"] and state["summary"] != before["summary"] \
            and state["image"] != before["image"]
        return state if ok else None

    try:
        state = wait_for(f"the figure and the params/MACs text to change after {what}", changed, timeout)
    except Failure as err:
        now = browser.js(STATE_JS)
        raise Failure(f"{err}\n  summary before: {before['summary']}\n  summary now:    {now['summary']}\n"
                      f"  figure changed: {now['image'] != before['image']}") from None
    while True:  # continuous updates: let the last redraw land
        time.sleep(2.0)
        again = browser.js(STATE_JS)
        if (again["summary"], again["image"], again["percent"]) == (state["summary"], state["image"], state["percent"]):
            return again
        state = again


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def kernel_idle(browser: Browser, lab_url: str, token: str) -> bool:
    """The server has started the notebook's kernel, it is idle, and the page shows it idle."""
    try:
        kernels = http("GET", f"{lab_url}/api/kernels?token={token}")
    except ServerError:  # jupyter_server fails to list a kernel before its first activity: ask again
        return False
    return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels) \
        and browser.js(STATE_JS)["status"] == "idle"


def drive(browser: Browser, lab_url: str, token: str) -> None:
    browser.get(f"{lab_url}/lab/tree/{NOTEBOOK}?token={token}")
    wait_for("the notebook to open", lambda: browser.find(".jp-Notebook .jp-CodeCell"), 120)
    wait_for("the kernel to start and be idle", lambda: kernel_idle(browser, lab_url, token), 180)
    log("notebook open, kernel idle: Run → Run All Cells")
    start = time.monotonic()
    run_all_cells(browser, timeout=600)
    log(f"all cells ran in {time.monotonic() - start:.0f} s")
    wait_for("the explorer widget with its figure",
             lambda: (s := browser.js(STATE_JS))["explorer"] and s["image"] and s["summary"], 60)
    explorer = browser.find(".ssdlab-explorer")
    browser.js("arguments[0].scrollIntoView({block: 'start'})", explorer)
    before = settled_change(browser, {"summary": None, "image": None}, "running the notebook", 60)
    check(before["percent"] is not None and before["regular"] is not None, "no prune-% readout or regular checkbox")
    log(f"before: prune {before['percent']}, regular {before['regular']}: {before['summary']}")
    browser.screenshot(OUT / "before.png")

    handle = browser.find(".ssdlab-percent .noUi-handle")
    check(handle is not None, "no slider handle (.ssdlab-percent .noUi-handle)")
    shown = float(before["percent"].rstrip("%")) / 100  # the readout shows the ratio in %
    down = shown >= 0.3  # two pages of 5 steps of 0.01, away from the ends
    browser.keys(handle, (PAGE_DOWN if down else PAGE_UP) * 2)
    slid = settled_change(browser, before, "moving the slider")
    expected = f"{shown + (-0.1 if down else 0.1):.0%}"
    check(slid["percent"] == expected, f"the slider readout is {slid['percent']}, expected {expected}")
    log(f"slider: prune {slid['percent']}, regular {slid['regular']}: {slid['summary']}")
    browser.screenshot(OUT / "slider.png")

    checkbox = browser.find(".ssdlab-regular input[type=checkbox]")
    check(checkbox is not None, "no regular checkbox (.ssdlab-regular input)")
    browser.click(checkbox)
    after = settled_change(browser, slid, "switching `regular`")
    check(after["regular"] is not slid["regular"], "the regular checkbox did not switch")
    log(f"after:  prune {after['percent']}, regular {after['regular']}: {after['summary']}")
    browser.screenshot(OUT / "after.png")


def main() -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stopped from outside: still run the cleanup below
        signal.signal(sig, lambda *_: sys.exit("browser test: terminated"))
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(tool):
            print(f"browser test: {tool} not found (apt-get install chromium chromium-driver)", file=sys.stderr)
            return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for old in [*OUT.glob("*.png"), *OUT.glob("*.html")]:
        old.unlink()
    notebook_hash = hashlib.sha256((ROOT / NOTEBOOK).read_bytes()).hexdigest()
    tmp = Path(tempfile.mkdtemp(prefix="ssdlab-browser-"))
    for name, value in LAB_SETTINGS.items():
        (tmp / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "settings" / name).write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(24)
    env = dict(os.environ, SSDLAB_PROFILE="smoke", JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
            "--port-retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={ROOT}",
            f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
            "--LabApp.news_url=None", "--ServerApp.terminals_enabled=False"]
    argv += ["--allow-root"] if os.geteuid() == 0 else []
    lab = browser = None
    status = 1
    try:
        log(f"starting JupyterLab on 127.0.0.1:{port} (SSDLAB_PROFILE=smoke)")
        lab = Managed(argv, OUT / "jupyterlab.log", env)

        def lab_up():
            if not lab.alive():
                raise Failure(f"JupyterLab exited (see {OUT / 'jupyterlab.log'})")
            return responds(f"http://127.0.0.1:{port}/api/status?token={token}")

        wait_for("JupyterLab to answer", lab_up, 120)
        log("starting headless Chromium")
        browser = Browser(tmp / "chromium-profile")
        drive(browser, f"http://127.0.0.1:{port}", token)
        status = 0
    except Exception as err:  # noqa: BLE001 - report, keep what the page showed, then clean up
        message = str(err) if isinstance(err, Failure) else traceback.format_exc()
        print(f"browser test FAILED: {message}", file=sys.stderr)
        if browser is not None:
            try:
                browser.screenshot(OUT / "failure.png")
                (OUT / "failure.html").write_text(browser.js("return document.documentElement.outerHTML"))
            except Exception as page_err:  # noqa: BLE001 - the failure above is what matters
                log(f"(could not save the page: {page_err})")
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # let the cleanup finish
            signal.signal(sig, signal.SIG_IGN)
        if browser is not None:
            try:
                browser.quit()
            except Exception as err:  # noqa: BLE001 - chromedriver is stopped anyway; go on to JupyterLab
                log(f"closing the browser: {err}")
        if lab is not None:
            lab.stop(grace=30)  # SIGTERM: the server shuts its kernel down, then whatever is left is killed
        shutil.rmtree(tmp, ignore_errors=True)
        if hashlib.sha256((ROOT / NOTEBOOK).read_bytes()).hexdigest() != notebook_hash:
            print(f"browser test FAILED: {NOTEBOOK} was modified", file=sys.stderr)
            status = 1
    log("passed" if status == 0 else "failed")
    return status


if __name__ == "__main__":
    sys.exit(main())
