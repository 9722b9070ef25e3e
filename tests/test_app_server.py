"""#17 app mode: one shared model pool per server, fair between pages, and the diagnosis app
as a web page (Voila) driven by headless Chromium (Debian's, through Playwright)."""
import http.client
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from medwb.apps import pool as pool_mod
from medwb.apps import workers
from medwb.apps.diagnosis.app import DiagnosisApp
from medwb.apps.diagnosis import record as diagnosis
from medwb.tasks import prompts

# `make test` runs two pytest-xdist workers; this module's tests stay on one of them:
# its two browser runs each start a three-model pool: one at a time.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("app_server")]  # slow: loads or converts models, runs notebooks or servers

CASE = "h010001"
OV_MODELS = ["openvino-genai:int8/f32", "openvino-genai:int4/f32"]
CHROMIUM = "/usr/bin/chromium"


def worker_processes(parent_pid: int) -> list[psutil.Process]:
    """The model worker processes under ``parent_pid`` (one per model, whoever asks)."""
    out = []
    for p in psutil.Process(parent_pid).children(recursive=True):
        try:
            if "medwb.apps.workers" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pool(tmp_path, demo_model_dir):
    specs = [workers.parse_model(m, i) for i, m in enumerate(OV_MODELS)]
    p = pool_mod.ModelPool(specs, 1, tmp_path / "workers", tmp_path / "pool.sock")
    p.start()
    assert [w["state"] for w in p.wait_ready(300)] == ["ready", "ready"]
    yield p
    p.close()


def submit(client: pool_mod.PoolClient, slot: int, job: int, done: list, max_new_tokens: int = 48):
    fields = diagnosis.case_fields(CASE)
    return client.workers[slot].submit(job, fields, prompts.DIAGNOSIS_PROMPT, max_new_tokens,
                                       lambda kind, msg: kind == "done" and done.append((job, msg)))


def test_pages_share_one_process_per_model_and_take_turns(pool, tmp_path):
    assert len(worker_processes(os.getpid())) == 2
    a, b = pool_mod.PoolClient(pool.socket_path), pool_mod.PoolClient(pool.socket_path)
    assert [w.label for w in a.workers] == OV_MODELS and [w.state for w in b.workers] == ["ready", "ready"]
    assert oct(os.stat(pool.socket_path).st_mode & 0o777) == "0o600"  # this user only
    done: list = []
    jobs = [submit(a, 0, j, done) for j in (1, 2, 3, 4)]   # page A queues four answers on model 0
    jobs.append(submit(b, 0, 101, done))                    # page B asks once, after them
    for job in jobs:
        assert job.done.wait(120)
    order = [j for j, _ in done]
    # B's answer comes after A's running and next one, not after all four of A's
    assert order.index(101) <= 2, order
    assert {m["status"] for _, m in done} == {"ok"} and all(m["queue_s"] is not None for _, m in done)
    assert len(worker_processes(os.getpid())) == 2           # still one process per model
    # a page that closes has its queued answers dropped, the others go on
    done.clear()
    for j in (11, 12, 13):
        submit(a, 1, j, done, max_new_tokens=200)
    a.close()
    late = submit(b, 1, 102, done)
    assert late.done.wait(120) and dict(done)[102]["status"] == "ok"
    assert pool.status()["models"][1]["queued"] == 0
    b.close()


def test_a_killed_model_fails_in_its_card_only_and_the_next_round_works(pool, tmp_path):
    pages = [DiagnosisApp(max_new_tokens=48, case_id=CASE, feedback_db=str(tmp_path / "fb.sqlite"),
                          pool=str(pool.socket_path)) for _ in range(2)]
    for page in pages:
        page.start()
        assert [w["state"] for w in page.wait_ready(60)] == ["ready", "ready"]
    assert len(worker_processes(os.getpid())) == 2  # two pages, still one process per model
    victim = psutil.Process(pool.workers[1].info["pid"])
    victim.suspend()  # so that the round is surely running when it dies
    pages[0].generate()
    time.sleep(1.0)
    victim.kill()
    results = pages[0].wait(120)
    assert results[0]["status"] == "ok" and results[1]["status"] == "error"
    assert "worker exited" in results[1]["error"] and "worker exited" in pages[0].cards[1].body.value
    assert "✖" not in pages[0].cards[0].body.value
    # the next round (from the other page) restarts the model and works
    pages[1].generate()
    assert [r["status"] for r in pages[1].wait(300)] == ["ok", "ok"]
    assert pool.workers[1].restarts == 1 and len(worker_processes(os.getpid())) == 2
    statuses = [s for (s,) in sqlite3.connect(tmp_path / "fb.sqlite").execute(
        "SELECT status FROM outputs ORDER BY output_id")]
    assert statuses == ["ok", "error", "ok", "ok"]
    for page in pages:
        page.close()
    assert len(worker_processes(os.getpid())) == 2  # pages never stop shared models


def test_a_pool_that_does_not_fit_in_memory_is_refused_before_it_starts(pool, monkeypatch):
    from medwb.apps import serve
    from medwb.errors import MedwbError
    monkeypatch.setenv("MEDWB_MAX_RAM_GB", "0.5")  # the two models need 2x their files + 0.5 GiB each
    with pytest.raises(MedwbError, match=r"the app's model pool \(2 models\)"):
        serve.check_pool_fits([wk.spec for wk in pool.workers], log=lambda *_: None)
    assert len(worker_processes(os.getpid())) == 2  # only the fixture's


def test_a_page_without_a_pool_says_how_to_start_one(tmp_path):
    from medwb.errors import MedwbError
    with pytest.raises(MedwbError, match=r"pool .*no-such.sock: cannot connect .*medwb app"):
        DiagnosisApp(feedback_db=str(tmp_path / "fb.sqlite"), pool=str(tmp_path / "no-such.sock"))
    assert not (tmp_path / "fb.sqlite").exists()


# ------------------------------------------------------------------ the web page in Chromium

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_server(tmp_path, workflow: str):
    config = tmp_path / "app.yaml"
    config.write_text("models: [openvino-genai:int8/f32, openvino-genai:int4/f32, pytorch:fp32]\n"
                      "max_new_tokens: {diagnosis: 64, discharge: 160}\n", encoding="utf-8")
    run_dir, port = tmp_path / "run", free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medwb", "app", workflow, "--config", str(config),
                             "--port", str(port), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "stop with Ctrl+C" in line or proc.poll() is not None:
            break
    url = next((m.group(0) for m in map(re.compile(r"http://\S+").search, lines) if m), None)
    assert url, "".join(lines)
    yield {"proc": proc, "url": url, "port": port, "run_dir": run_dir, "lines": lines}
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert not worker_processes(os.getpid()), "model processes left behind"


@pytest.fixture
def server(tmp_path, demo_model_dir):
    yield from app_server(tmp_path, "diagnosis")


@pytest.fixture
def discharge_server(tmp_path, demo_model_dir):
    yield from app_server(tmp_path, "discharge")


def browser():
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    return pw, pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]")


def labels_are_words(page) -> None:
    """Every button reads as text with the fonts any PC has: no emoji (a blank box without an
    emoji font, as in this headless browser), no empty label."""
    texts = [t.strip() for t in page.locator("button").all_inner_texts()]
    assert texts and all(texts) and not [t for t in texts if EMOJI.search(t)], texts


def cards_done(page, n: int) -> bool:
    buttons = page.locator("button:has-text('一键回填')")
    return buttons.count() == n and all(buttons.nth(i).is_enabled() for i in range(n))


def test_the_diagnosis_page_in_chromium(server):
    url, port, run_dir = server["url"], server["port"], server["run_dir"]
    assert url.startswith(f"http://127.0.0.1:{port}/?token=")
    # no token, no page and no API: a redirect to the token form, or a refusal
    for path in ("/", "/api/kernels", "/voila/render/app.ipynb", "/api/contents"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read().decode(errors="replace")
        assert answer.status in (302, 401, 403), (path, answer.status)
        assert answer.status != 302 or answer.getheader("Location").startswith("/login"), path
        assert "生成" not in body and "kernel" not in body.lower(), path
        conn.close()
    assert not server["proc"].poll()
    pw, chromium = browser()
    try:
        page = chromium.new_page(viewport={"width": 1400, "height": 1800})
        hosts = set()
        page.on("request", lambda r: hosts.add(r.url.split("/")[2]) if "://" in r.url else None)
        page.goto(url)
        page.wait_for_selector("button:has-text('生成 generate')", timeout=120_000)
        assert "import" not in page.inner_text("body")  # code hidden, widgets only
        assert page.title().startswith("鉴别诊断"), page.title()  # titled by its workflow
        labels_are_words(page)
        page.locator("select").first.select_option(index=1)   # a bundled case fills the form
        wait_for(lambda: page.locator("input[placeholder='e.g. 胸痛3天']").input_value(), 30, "the case in the form")
        page.click("button:has-text('生成 generate')")
        wait_for(lambda: cards_done(page, 3), 300, "three answers")
        page.locator("button:has-text('一键回填')").first.click()
        page.locator("button:has-text('赞')").first.click()
        page.locator("input[placeholder*='what is wrong']").nth(1).fill("诊断依据与病例不符")
        page.locator("button:has-text('报错')").nth(1).click()
        wait_for(lambda: "已报错" in page.inner_text("body"), 30, "the error report's message")
        page.screenshot(path=str(run_dir / "app-screenshot.png"), full_page=True)

        # a second page: the same three model processes serve it
        second = chromium.new_page()
        second.goto(url)
        second.wait_for_selector("button:has-text('生成 generate')", timeout=120_000)
        procs = worker_processes(server["proc"].pid)
        assert len(procs) == 3
        # each page's kernel talks to Voila over Unix sockets: no TCP ports but ipykernel's own
        # IOPub pipe for forked processes (with TCP transport it would be six)
        kernels = [p for p in psutil.Process(server["proc"].pid).children(recursive=True)
                   if "ipykernel_launcher" in " ".join(p.cmdline())]
        assert len(kernels) == 2
        for k in kernels:
            listening = [c for c in k.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            assert len(listening) <= 1 and all(c.laddr.ip == "127.0.0.1" for c in listening), listening

        # a model killed during a round: an error in its card only; the next round works
        victim = procs[-1]
        victim.suspend()
        page.click("button:has-text('生成 generate')")
        time.sleep(1.5)
        victim.kill()
        wait_for(lambda: page.locator("text=worker exited").count() >= 1, 120, "the dead model's card")
        wait_for(lambda: page.locator("button:has-text('一键回填'):enabled").count() == 2, 300, "the two others")
        page.click("button:has-text('生成 generate')")
        wait_for(lambda: cards_done(page, 3), 300, "three answers after the restart")
        assert len(worker_processes(server["proc"].pid)) == 3
        assert hosts == {f"127.0.0.1:{port}"}, hosts  # nothing from outside (no CDN)
    finally:
        chromium.close()
        pw.stop()

    con = sqlite3.connect(run_dir / "feedback.sqlite")
    actions = [a for (a,) in con.execute("SELECT action FROM actions ORDER BY action_id")]
    assert {"backfill", "like", "report_error"} <= set(actions)
    assert {o for (o,) in con.execute("SELECT DISTINCT origin FROM rounds")} == {"ui"}
    statuses = [s for (s,) in con.execute("SELECT status FROM outputs ORDER BY output_id")]
    assert statuses[:3] == ["ok"] * 3 and sorted(statuses[3:6]) == ["error", "ok", "ok"]
    assert statuses[6:] == ["ok"] * 3
    assert con.execute("SELECT detail FROM actions WHERE action = 'report_error'").fetchone()[0] == "诊断依据与病例不符"
    assert (run_dir / "app-screenshot.png").stat().st_size > 20_000


def test_the_discharge_page_in_chromium(discharge_server):
    """The discharge page as a doctor uses it: open a record (the drafts start), back-fill one
    section, like, report an error, then edit the record and save it: the drafts regenerate."""
    url, run_dir = discharge_server["url"], discharge_server["run_dir"]
    pw, chromium = browser()
    try:
        page = chromium.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(url)
        page.wait_for_selector("button:has-text('保存 save')", timeout=120_000)
        assert page.title().startswith("出院记录"), page.title()
        labels_are_words(page)
        page.locator("select").first.select_option(index=1)   # a bundled record: opened, drafts start
        wait_for(lambda: cards_done(page, 3), 300, "three drafts")
        page.locator("button:has-text('回填本节')").first.click()  # the first card's section (出院诊断)
        wait_for(lambda: "已回填" in page.inner_text("body"), 30, "the back-fill's message")
        page.locator("button:has-text('赞')").first.click()
        page.locator("input[placeholder*='what is wrong']").nth(1).fill("出院医嘱药物剂量与病历不符")
        page.locator("button:has-text('报错')").nth(1).click()
        wait_for(lambda: "已报错" in page.inner_text("body"), 30, "the error report's message")
        source = page.locator("textarea").first
        source.fill(source.input_value().replace("\n出院医嘱：", "\n第9日，复查血常规：白细胞6.5×10^9/L。\n出院医嘱："))
        page.click("button:has-text('保存 save')")
        wait_for(lambda: "regenerated from round" in page.inner_text("body"), 60, "the regeneration")
        wait_for(lambda: cards_done(page, 3), 300, "three drafts again")
        wait_for(lambda: "3 完成 done" in page.inner_text("body"), 30, "the status line following the cards")
        page.screenshot(path=str(run_dir / "discharge-screenshot.png"), full_page=True)
    finally:
        chromium.close()
        pw.stop()
    con = sqlite3.connect(run_dir / "feedback.sqlite")
    events = [e for (e,) in con.execute("SELECT event FROM events ORDER BY event_id")]
    assert events == ["open", "save"]
    rounds = con.execute("SELECT round_id, parent_round_id, workflow FROM rounds ORDER BY round_id").fetchall()
    assert len(rounds) == 2 and rounds[1][1] == rounds[0][0] and {r[2] for r in rounds} == {"discharge_record"}
    actions = con.execute("SELECT action, detail FROM actions ORDER BY action_id").fetchall()
    assert ("backfill", "出院诊断") in actions and ("like", None) in actions and ("regenerate", None) in actions
    assert ("report_error", "出院医嘱药物剂量与病历不符") in actions


def test_the_load_benchmark_answers_every_request_and_stores_every_action(tmp_path, demo_model_dir):
    """Not a timing test: the figures are recorded (README), only completeness is asserted."""
    from medwb.bench import app_load
    from medwb.jsonl import read as read_records
    config = tmp_path / "app.yaml"
    config.write_text("models: [openvino-genai:int8/f32, openvino-genai:int4/f32]\n"
                      "max_new_tokens: {diagnosis: 24}\n", encoding="utf-8")
    app_load.run(config, doctors=[1, 3], rounds=2, think_s=0.1, run_dir=tmp_path / "run", log=lambda *_: None)
    records = read_records(tmp_path / "run" / "records" / "app_load.jsonl")
    assert [r["doctors"] for r in records] == [1, 3]
    for r in records:
        assert r["every_request_answered"] and r["answers"] == r["answers_expected"] == r["doctors"] * 2 * 2
        assert r["actions_stored"] == r["actions_done"] > 0 and not r["doctor_errors"]
        assert r["model_pids_unchanged"] and r["pool_rss_mb_peak"] >= r["pool_rss_mb_idle"] > 0
        assert r["queue_s"]["p50"] is not None and r["round_s"]["p90"] >= r["round_s"]["p50"]
    assert not worker_processes(os.getpid())
