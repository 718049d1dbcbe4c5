"""The web console in a real browser: Debian's Chromium driven by Playwright for Python.

Run by tests/console_browser.rs (which installs nothing: scripts/test.sh does, through
scripts/tools.sh `ensure_browser`). This script owns the daemon it tests: it starts
`jobwarden run` on the port it is given, stops it and starts it again (the console must
reconnect), and kills it and its jobs at the end.

    browser.py story --bin BIN --root DIR --port N --out DIR --chromium PATH
        submits a job and sees it appear without a reload, sees its time-left bar shrink,
        sees soft_kill appear on its timeline after the deadline, cancels a second job with
        the button, finds the reclaimed CPU of a killed busy-loop job in the report, sees the
        page reconnect after a daemon restart; a screenshot of each page in --out.
    browser.py first-paint --bin BIN --root DIR --port N --out DIR --chromium PATH --runs N
            --running M
        submits M running jobs, then opens the jobs page (of a store the test filled with
        finished jobs) --runs times; prints
        `first-paint {"runs_ms": [...], "median_ms": M, "jobs": N}` for the test to check.

Every check that fails raises, naming what was expected and what the page showed; the exit
status is non-zero then.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def log(*parts):
    print("browser.py:", *parts, file=sys.stderr, flush=True)


class Daemon:
    """`jobwarden run` on a fixed port, started and stopped by this script."""

    def __init__(self, args):
        self.bin = args.bin
        self.root = args.root
        self.port = args.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        logfile = open(os.path.join(self.root, f"browser-daemon-{self.starts}.log"), "w")
        self.proc = subprocess.Popen(
            [
                self.bin, "run",
                "--config", os.path.join(self.root, "config.toml"),
                "--data-dir", os.path.join(self.root, "data"),
                "--listen", f"127.0.0.1:{self.port}",
            ],
            cwd=self.root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=logfile, env=dict(os.environ, JOBWARDEN_LOG="info,sqlx=warn"),
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            text = open(logfile.name).read()
            if "loaded jobs from the store" in text:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"jobwarden run exited: {text}")
            time.sleep(0.05)
        raise AssertionError("jobwarden run did not load its jobs within 60s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def cli(self, *args):
        out = subprocess.run(
            [self.bin, *args], capture_output=True, text=True, timeout=60,
            env=dict(os.environ, JOBWARDEN_SERVER=self.url),
        )
        if out.returncode != 0:
            raise AssertionError(f"jobwarden {' '.join(args)}: exit {out.returncode}: {out.stderr}")
        return out.stdout

    def submit(self, *args):
        return self.cli("submit", *args).strip()

    def job(self, job_id):
        return json.loads(self.cli("job", "show", job_id, "--json"))

    def kill_jobs(self):
        """SIGKILLs the process group of every job still running (the daemon leaves them)."""
        try:
            jobs = json.loads(self.cli("jobs", "--json"))
        except Exception as e:  # the daemon may be down; the Rust test sweeps what is left
            log("listing jobs to kill them:", e)
            return
        for j in jobs:
            if j.get("pid") and j["stage"] in ("running", "terminating", "pre_start"):
                try:
                    os.killpg(j["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def browser(p, args):
    return p.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="jw-chromium-"),
        executable_path=args.chromium,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 900},
    )


def wait_until(what, pred, timeout=20.0, every=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def shot(page, args, name):
    path = os.path.join(args.out, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    log("screenshot", path)


def mark(page):
    """Sets a marker a reload would lose."""
    page.evaluate("() => { window.__jwNoReload = 42; }")


def not_reloaded(page, what):
    if page.evaluate("() => window.__jwNoReload") != 42:
        raise AssertionError(f"the page was reloaded while waiting for {what}")


def live(page):
    page.wait_for_selector("#live:has-text('Live updates: on')", timeout=15000)


def story(args):
    d = Daemon(args)
    d.start()
    try:
        with sync_playwright() as p:
            ctx = browser(p, args)
            page = ctx.new_page()
            page.set_default_timeout(20000)

            # 1. A submitted job appears without a reload, and its time-left bar shrinks.
            page.goto(d.url + "/")
            live(page)
            mark(page)
            watched = d.submit("--timeout", "8s", "--name", "watched", "--", "sleep", "600")
            row = f"#job-{watched}"
            page.wait_for_selector(row, timeout=15000)
            not_reloaded(page, "the new job's row")
            log("the new job appeared without a reload:", watched)
            first = page.eval_on_selector(f"{row} meter", "m => m.value")
            page.wait_for_timeout(1600)
            second = page.eval_on_selector(f"{row} meter", "m => m.value")
            if not second < first:
                raise AssertionError(f"the time-left bar did not shrink: {first} then {second}")
            log(f"the time-left bar shrank: {first:.3f} -> {second:.3f}")
            shot(page, args, "jobs")

            # 2. soft_kill appears on its timeline after the deadline, without a reload.
            page.goto(d.url + f"/jobs/{watched}")
            live(page)
            mark(page)
            taken = "tr[data-step='soft_kill'] td:nth-child(3) time"
            page.wait_for_selector(taken, timeout=20000)
            not_reloaded(page, "soft_kill on the timeline")
            job = d.job(watched)
            steps = [s["step"] for s in job["steps"]]
            if "soft_kill" not in steps:
                raise AssertionError(f"the page shows soft_kill but the job has steps {steps}")
            log("soft_kill appeared on the timeline:", page.inner_text(taken))
            shot(page, args, "job")

            # 3. The cancel button cancels a second job.
            second_job = d.submit("--timeout", "1h", "--name", "to-cancel", "--", "sleep", "600")
            page.goto(d.url + f"/jobs/{second_job}")
            page.get_by_role("button", name="Cancel this job").click()
            page.wait_for_url(f"**/jobs/{second_job}?done=cancelled")
            page.wait_for_selector("p.flash:has-text('Cancelled')")
            job = wait_until(
                "the cancelled job's soft_kill",
                lambda: (lambda j: j if any(s["step"] == "soft_kill" for s in j["steps"]) else None)(
                    d.job(second_job)),
            )
            audit = json.loads(d.cli("audit", "--job", second_job, "--action", "soft_kill", "--json"))
            if not audit or not audit[0]["reason"].startswith("cancelled"):
                raise AssertionError(f"the cancel's audit row: {audit}")
            log("cancelled with the button:", second_job, job["stage"])

            # 4. A busy loop killed by its organisation's cap: its reclaimed CPU in the report.
            # It writes 1 MB to its workspace, removed at once after the kill (TTL 0).
            busy = d.submit("--org", "acme", "--timeout", "1h", "--ttl", "0s", "--name",
                            "busy-loop", "--", "sh", "-c",
                            "head -c 1000000 /dev/zero > blob; while :; do :; done")
            wait_until("the busy loop's end and its workspace's removal", lambda: d.job(busy)[
                "stage"] == "cleaned", timeout=30)
            report = json.loads(d.cli("report", "--json", "--org", "acme"))
            if report["total"]["bytes"]["workspace"] < 1_000_000:
                raise AssertionError(f"the report misses the 1 MB workspace: {report['total']}")
            cpu = report["total"]["cpu_seconds"]
            if not (report["total"]["kills"] >= 1 and cpu > 0 and report["total"]["cpu_unknown"] == 0):
                raise AssertionError(f"the report has no reclaimed CPU for acme: {report['total']}")
            page.goto(d.url + "/reclaimed?since=1h&org=acme")
            shown = page.inner_text("#total-cpu")
            try:
                shown_value = float(shown)
            except ValueError:
                raise AssertionError(f"the page's CPU-seconds is not a number: {shown!r}")
            if abs(shown_value - cpu) > max(0.1, cpu * 0.001):
                raise AssertionError(f"the page shows {shown} CPU-seconds, the report {cpu}")
            row_text = page.inner_text("#reclaimed tbody")
            if "acme" not in row_text:
                raise AssertionError(f"no acme line in the reclaimed table: {row_text}")
            log(f"reclaimed CPU of the busy loop: {shown} CPU-seconds (report: {cpu:.1f})")
            page.goto(d.url + "/reclaimed?since=1h")
            shot(page, args, "reclaimed")

            # 5. The jobs page with a few more jobs (the README's screenshot), and the other pages.
            d.submit("--org", "globex", "--type", "build", "--timeout", "20m",
                     "--name", "nightly-build", "--", "sleep", "600")
            d.submit("--type", "test", "--timeout", "90s", "--name", "integration-tests",
                     "--", "sleep", "600")
            page.goto(d.url + "/")
            live(page)
            page.wait_for_timeout(1200)
            shot(page, args, "jobs-overview")
            for name, path in [("audit", f"/audit?job={busy}"), ("queue", "/queue"),
                               ("orphans", "/orphans"), ("policy", "/policy")]:
                page.goto(d.url + path)
                if page.locator("p.error[role=alert]").count():
                    raise AssertionError(f"{path}: {page.inner_text('p.error')}")
                shot(page, args, name)

            # 6. After a daemon restart the page reconnects, and new jobs appear again.
            page.goto(d.url + "/")
            live(page)
            mark(page)
            d.stop()
            page.wait_for_selector("#live:has-text('reconnecting')", timeout=15000)
            d.start()
            live(page)
            after = d.submit("--timeout", "1h", "--name", "after-restart", "--", "sleep", "600")
            page.wait_for_selector(f"#job-{after}", timeout=15000)
            not_reloaded(page, "a job submitted after the restart")
            log("reconnected after the restart; new job appeared:", after)
            ctx.close()
    finally:
        d.kill_jobs()
        d.stop()


def submit_json(d, body):
    req = urllib.request.Request(
        d.url + "/v1/jobs", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status != 201:
            raise AssertionError(f"POST /v1/jobs: HTTP {r.status}")


def first_paint(args):
    d = Daemon(args)
    d.start()
    try:
        for i in range(args.running):
            submit_json(d, {"command": ["sleep", "3600"], "timeout": "2h",
                            "name": f"running-{i}", "org": "acme", "type": "build"})
        jobs = json.loads(d.cli("jobs", "--json"))
        with sync_playwright() as p:
            ctx = browser(p, args)
            page = ctx.new_page()
            runs = []
            server = []
            for i in range(args.runs):
                page.goto(d.url + "/", wait_until="load")
                fcp = page.evaluate(
                    """() => new Promise(resolve => {
                        const get = () => performance.getEntriesByName('first-contentful-paint')[0];
                        const e = get();
                        if (e) { resolve(e.startTime); return; }
                        new PerformanceObserver(() => { const x = get(); if (x) resolve(x.startTime); })
                            .observe({ type: 'paint', buffered: true });
                    })"""
                )
                runs.append(round(fcp, 1))
                nav = page.evaluate(
                    "() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return [n.requestStart, n.responseStart, n.responseEnd]; }")
                server.append(round(nav[1] - nav[0], 1))
                if i == 0:
                    shot(page, args, "jobs-10000")
            rows = page.locator("#jobs tbody tr").count()
            ctx.close()
        print("first-paint " + json.dumps({
            "runs_ms": runs, "median_ms": statistics.median(runs),
            "server_ms": server, "server_median_ms": statistics.median(server),
            "jobs": len(jobs), "rows_on_page": rows,
        }), flush=True)
    finally:
        d.kill_jobs()
        d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["story", "first-paint"])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--running", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    (story if args.mode == "story" else first_paint)(args)
    log("ok")


if __name__ == "__main__":
    main()
