"""/dashboard in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium): it
loads after signing in with a token, lists a running cluster with its cost and a managed job with its
recovery, and logs no console errors. The screenshot lands in BROKER_SCREENSHOTS (default: the test's
temporary directory) and its path is printed in the run's report."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from skybroker.clouds.local import _kill_node_processes
from tests.integration.local_helpers import wait_for, write_task, cluster_dir
from tests.integration.server_helpers import Server

pytest.importorskip("fastapi")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("rsync") is None, reason="the local cloud syncs with rsync")]
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (apt)")


@pytest.fixture
def browser(tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
              f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield d
    d.quit()


@needs_browser
def test_dashboard_lists_clusters_and_a_recovered_job(tmp_path, browser):
    from selenium.webdriver.common.by import By

    server = Server(tmp_path / "server_home").start()
    try:
        tok = server.token("ana", admin=True)
        ana = server.client(tok, tmp_path / "ana")
        r = ana("launch", "-y", "-d", "-c", "web", write_task(tmp_path / "c.yaml", name="c", run="sleep 30"))
        assert r.returncode == 0, r.stderr
        led = tmp_path / "ledger"
        run = ('echo seg >> "$LEDGER"; n=$(wc -l < "$LEDGER"); if [ "$n" -lt 2 ]; then sleep 60; fi; echo done')
        r = ana("jobs", "launch", "-y", "-d", write_task(tmp_path / "m.yaml", name="phoenix",
                                                         envs={"LEDGER": str(led)}, run=run))
        assert r.returncode == 0, r.stderr

        def status():
            return json.loads(ana("jobs", "queue", "--json").stdout)[0]

        wait_for(lambda: status()["status"] == "RUNNING" and led.exists(), 40, 0.3, "the job running")
        node = cluster_dir("job-1", server.home) / "node-0"
        _kill_node_processes(node)  # a preemption on the local cloud
        shutil.rmtree(node, ignore_errors=True)
        wait_for(lambda: status()["status"] == "SUCCEEDED", 60, 0.3, "the job recovered and done")
        assert status()["recoveries"] == 1

        browser.get(server.url + "/dashboard")
        assert "Sign in" in browser.page_source  # no token: the sign-in form, nothing else
        browser.find_element(By.NAME, "token").send_keys(tok)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(lambda: browser.find_elements(By.ID, "clusters"), 10, 0.1, "the dashboard")
        clusters = browser.find_element(By.ID, "clusters").text
        assert "web" in clusters and "UP" in clusters and "ana" in clusters
        assert "Cost so far" in clusters
        jobs = browser.find_element(By.ID, "jobs").text
        assert "phoenix" in jobs and "SUCCEEDED" in jobs and "recovery" in jobs, jobs
        row = [ln for ln in jobs.splitlines() if "phoenix" in ln][0]
        assert " 1 " in f" {row} ", row  # one recovery in the RECOVERIES column
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        shots = Path(os.environ.get("BROKER_SCREENSHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        path = shots / "dashboard.png"
        browser.save_screenshot(str(path))
        assert path.stat().st_size > 10_000
        from tests.conftest import REPORTS

        REPORTS.append(f"dashboard screenshot: {path}")
    finally:
        server.stop()


@needs_browser
def test_dashboard_failover_history_and_plan_a_pasted_task(tmp_path, browser):
    """A launch refused by the cloud (the local cloud's NO_SPOT_CAPACITY switch: CapacityError with the
    code NoSpotCapacity) and one that came up are listed with their attempts; a pasted task is planned by
    the server (an error is shown as the CLI says it; a task with secrets is not echoed back)."""
    from selenium.webdriver.common.by import By

    server = Server(tmp_path / "server_home").start()
    try:
        tok = server.token("bea")
        bea = server.client(tok, tmp_path / "bea")
        (server.home / "local").mkdir(parents=True, exist_ok=True)
        (server.home / "local" / "NO_SPOT_CAPACITY").touch()
        r = bea("launch", "-y", "-c", "spotty", write_task(tmp_path / "s.yaml", name="s", run="true",
                                                        resources={"infra": "local", "use_spot": True}))
        assert r.returncode == 4 and "NoSpotCapacity" in r.stderr, r.stderr
        r = bea("launch", "-y", "-d", "-c", "web", write_task(tmp_path / "c.yaml", name="c", run="sleep 30"))
        assert r.returncode == 0, r.stderr

        browser.get(server.url + "/dashboard")
        browser.find_element(By.NAME, "token").send_keys(tok)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(lambda: browser.find_elements(By.ID, "launches"), 10, 0.1, "the dashboard")
        rows = {ln.split()[2]: ln for ln in browser.find_element(By.ID, "launches").text.splitlines()
                if len(ln.split()) > 3 and ln.split()[2] in ("spotty", "web")}
        assert "failed" in rows["spotty"], rows
        assert "up on local" in rows["web"], rows
        launches = browser.find_element(By.ID, "launches").text
        assert "CapacityError NoSpotCapacity" in launches and "no spot capacity on this machine" in launches
        _screenshot(browser, tmp_path, "dashboard-failover.png")

        browser.find_element(By.LINK_TEXT, "Plan a task").click()
        box = wait_for(lambda: browser.find_elements(By.ID, "task"), 10, 0.1, "the plan form")[0]
        box.send_keys("name: train\nresources:\n  accelerators: V100:1\n  infra: aws\n")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        plan = wait_for(lambda: browser.find_elements(By.ID, "plan"), 20, 0.1, "the plan")[0].text
        assert "Chosen:" in plan and "on aws/" in plan and "V100" in plan, plan
        assert "p3.2xlarge" in plan, plan  # the catalog's cheapest 1×V100 on AWS
        assert "V100:1" in browser.find_element(By.ID, "task").get_attribute("value")  # kept for editing
        _screenshot(browser, tmp_path, "dashboard-plan.png")

        box = browser.find_element(By.ID, "task")
        box.clear()
        box.send_keys("resources:\n  acclerators: V100\n")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        err = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#plan.error"), 20, 0.1, "the error")[0].text
        assert "acclerators" in err and "accelerators" in err, err  # the field path and a did-you-mean

        box = browser.find_element(By.ID, "task")
        box.clear()
        box.send_keys("secrets:\n  API_KEY: hunter2-pasted\nresources:\n  infra: aws\n  cpus: 4+\n")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(lambda: browser.find_elements(By.ID, "plan"), 20, 0.1, "the plan")
        assert "hunter2-pasted" not in browser.page_source and "not shown again" in browser.page_source
        assert "hunter2" not in server.log_text()
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        server.stop()


def _screenshot(browser, tmp_path, name: str) -> None:
    shots = Path(os.environ.get("BROKER_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    path = shots / name
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    from tests.conftest import REPORTS

    REPORTS.append(f"dashboard screenshot: {path}")


def test_local_mode_dashboard_serves_the_page_only(tmp_path):
    """`broker dashboard`: this machine's state on 127.0.0.1, a token made for the run, no API."""
    import re
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.integration.local_helpers import broker, broker_bg, broker_home, kill_leftovers
    from tests.integration.server_helpers import free_port

    r = broker("launch", "-y", "-d", "-c", "mine", write_task(tmp_path / "t.yaml", name="t", run="sleep 20"))
    assert r.returncode == 0, r.stderr
    port = free_port()
    err = tmp_path / "dash.err"
    p = broker_bg("dashboard", "--port", port, stderr=err)
    try:
        m = wait_for(lambda: re.search(r"sign in with the token (\S+)", err.read_text()), 20, 0.1, "the dashboard")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(base + "/dashboard")[0] == 200, 10, 0.1, "the page")
        assert "Sign in" in _get(base + "/dashboard")[1]
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        page = opener.open(base + "/dashboard/login", data=urllib.parse.urlencode({"token": m.group(1)}).encode())
        html = page.read().decode()
        assert "mine" in html and "signed in as local" in html, html[:500]
        assert _get(base + "/api/v1/call/status", data=b"{}")[0] == 404  # the API is not served
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(base + "/dashboard/login", data=b"token=nope")
        assert exc.value.code == 401  # a wrong token is refused
    finally:
        p.terminate()
        p.wait(10)
        broker("down", "-y", "mine")
        kill_leftovers(broker_home())


def _get(url, data=None):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def test_local_dashboard_port_in_use_is_exit_2_before_the_url(tmp_path):
    import socket

    from tests.integration.local_helpers import broker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = broker("dashboard", "--port", port, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"port {port} on 127.0.0.1 is in use" in r.stderr and "--port 0" in r.stderr, r.stderr
    assert "sign in" not in r.stderr and "Errno" not in r.stderr


def test_local_dashboard_corrupt_state_plan_reads_no_local_path_and_sigterm_is_130(tmp_path):
    """A corrupt state database: the page says the StateError and its hint (not a bare 500). "Plan a task"
    does not look at this machine's files: an existing and a missing file_mounts source plan alike. SIGTERM
    exits 130 (README: exit codes)."""
    import re
    import signal
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.integration.local_helpers import broker_bg, broker_home
    from tests.integration.server_helpers import free_port

    broker_home().mkdir(parents=True, exist_ok=True)
    (broker_home() / "state.db").write_bytes(b"this is not an SQLite database" * 100)
    port = free_port()
    err = tmp_path / "dash.err"
    p = broker_bg("dashboard", "--port", port, stderr=err)
    try:
        m = wait_for(lambda: re.search(r"sign in with the token (\S+)", err.read_text()), 20, 0.1, "the dashboard")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(base + "/dashboard")[0] == 200, 10, 0.1, "the page")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(base + "/dashboard/login", data=urllib.parse.urlencode({"token": m.group(1)}).encode())
        assert exc.value.code == 500
        html = exc.value.read().decode()
        assert "state database" in html and "is corrupt" in html and "mv " in html, html[-800:]

        def plan(src):
            task = f"resources: {{infra: aws, cpus: 2}}\nfile_mounts:\n  /x: {src}\nworkdir: /no/such/dir\n"
            return opener.open(base + "/dashboard/plan",
                               data=urllib.parse.urlencode({"task": task}).encode()).read().decode()

        there, missing = plan("/etc/passwd"), plan("/no/such/file")
        assert "class=chosen" in there and "class=chosen" in missing, missing[-800:]
        assert "does not exist" not in missing and "not a directory" not in missing
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 130
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_a_users_dashboard_shows_their_own_clusters_jobs_and_events(tmp_path):
    """Found by exploratory testing: any user's /dashboard listed every user's clusters with their cost so
    far, every managed job with its cost and timeline, and every cluster's launches and events, which the
    API (`status`, `jobs queue`, `events`, `cost-report`) shows to their user or an admin only. A user's
    dashboard now shows theirs; an admin's the team's."""
    import urllib.request

    server = Server(tmp_path / "server_home").start()
    try:
        toks = {n: server.token(n, admin=n == "root") for n in ("alice", "bob", "root")}
        alice, bob = (server.client(toks[n], tmp_path / n) for n in ("alice", "bob"))
        for c, name in ((alice, "alices-web"), (bob, "bobs-box")):
            r = c("launch", "-y", "-d", "-c", name, write_task(tmp_path / f"{name}.yaml", name=name, run="true"))
            assert r.returncode == 0, r.stderr
        r = alice("jobs", "launch", "-y", "-d", write_task(tmp_path / "m.yaml", name="alices-job", run="true"))
        assert r.returncode == 0, r.stderr

        def page(who):
            req = urllib.request.Request(server.url + "/dashboard", headers={"Authorization": f"Bearer {toks[who]}"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.read().decode()

        wait_for(lambda: "job-1" in page("alice"), 30, 0.3, "alice's managed job on her dashboard")
        mine = page("bob")
        assert "bobs-box" in mine and "signed in as bob" in mine
        for theirs in ("alices-web", "alices-job", "job-1", ">alice<"):
            assert theirs not in mine, (theirs, mine)
        assert "alices-web" in page("alice") and "bobs-box" not in page("alice")
        team = page("root")
        assert all(x in team for x in ("alices-web", "bobs-box", "alices-job"))
        for c, name in ((alice, "alices-web"), (bob, "bobs-box")):
            assert c("down", "-y", name).returncode == 0
    finally:
        server.stop()
