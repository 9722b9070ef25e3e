"""#35 the OpenAI-compatible endpoint (`medwb serve`): driven with the official `openai` client,
streamed and not; bad requests answered in the OpenAI error shape with a 4xx; an unknown
model, a request over the context and one without the token refused; a client gone
mid-stream frees its place; past capacity, 429 with Retry-After and no accepted request fails;
Prometheus metrics; loopback only."""
import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

# `make test` runs two pytest-xdist workers; this module's tests stay on one of them:
# its module fixture starts one `medwb serve` for the module.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("endpoint")]  # slow: starts a model process and a server

TOKEN = "medwb-endpoint-test-token-0123"
MODEL = "pytorch:fp32"  # the demo model's reference variant: quick to load and to answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_model_dir):
    tmp = tmp_path_factory.mktemp("endpoint")
    (tmp / "app.yaml").write_text(f"models: [{MODEL}]\n", encoding="utf-8")
    (tmp / "token").write_text(TOKEN, encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medwb", "serve", "--config", str(tmp / "app.yaml"),
                             "--port", str(port), "--token-file", str(tmp / "token"), "--max-queue", "1",
                             "--run-dir", str(tmp / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "stop with Ctrl+C" in line or proc.poll() is not None:
            break
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # uvicorn starts listening just after the line
        try:
            if httpx.get(base + "/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        pytest.fail("".join(lines))
    yield {"proc": proc, "base": base, "port": port, "lines": lines}
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C: the server and its model process stop
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("medwb serve did not stop within 60 s of Ctrl+C")


def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server["base"] + "/v1", api_key=TOKEN, max_retries=0)


def test_the_openai_client_chats_streamed_and_not(server):
    c = client(server)
    assert [m.id for m in c.models.list()] == [MODEL]
    messages = [{"role": "user", "content": "患者，男，65岁。主诉：胸痛3天。请给出鉴别诊断。"}]
    whole = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=24)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 24 and whole.choices[0].finish_reason == "length"
    # Greedy: the stream's deltas add up to the same answer.
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
        whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    text = c.completions.create(model=MODEL, prompt="【医生】发热三天\n【助手】", max_tokens=8)
    assert text.object == "text_completion" and text.usage.completion_tokens == 8


def test_bad_requests_get_the_openai_error_shape(server):
    import openai
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found" and MODEL in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # over the model's context: the limit named
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "胸痛" * 6000}], max_tokens=16)
    assert e.value.body["code"] == "context_length_exceeded" and re.search(r"context is \d+ tokens", e.value.body["message"])
    for body in ({"model": MODEL}, {"model": MODEL, "messages": "hi"}, {"model": MODEL, "messages": [{"role": "user"}]},
                 {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
                 {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}):
        r = httpx.post(server["base"] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param", "code"}, (body, r.text)
    r = httpx.post(server["base"] + "/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_no_token_no_answer_and_loopback_only(server):
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(server["base"] + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server["base"] + "/v1/chat/completions", json={"model": MODEL, "messages": []},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    procs = [psutil.Process(server["proc"].pid)] + psutil.Process(server["proc"].pid).children(recursive=True)
    listening = [c for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening), listening


def test_a_client_gone_mid_stream_frees_its_place(server):
    with httpx.stream("POST", server["base"] + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "发热"}], "max_tokens": 1500,
                            "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                break  # one piece of text, then the client goes away
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "medwb_queue_depth{model=\"pytorch:fp32\"} 0.0" not in metrics(server):
        time.sleep(0.5)
    assert "medwb_queue_depth{model=\"pytorch:fp32\"} 0.0" in metrics(server)
    started = time.monotonic()  # the model is free again: a short answer comes at once
    assert client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "咳嗽"}],
                                                  max_tokens=4).usage.completion_tokens == 4
    assert time.monotonic() - started < 30


def metrics(server) -> str:
    return httpx.get(server["base"] + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text


def test_past_capacity_429_with_retry_after_and_no_accepted_request_fails(server):
    """--max-queue 1: one request generating and one waiting; the others at the same moment
    are refused at once with Retry-After, and every accepted one completes."""
    def ask(i):
        r = httpx.post(server["base"] + "/v1/chat/completions", timeout=300,
                       headers={"Authorization": f"Bearer {TOKEN}"},
                       json={"model": MODEL, "messages": [{"role": "user", "content": f"患者{i}，发热{i}天。"}],
                             "max_tokens": 200})
        return r.status_code, r.headers.get("retry-after"), r.json()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    codes = [a[0] for a in answers]
    assert set(codes) <= {200, 429} and codes.count(200) >= 2 and codes.count(429) >= 1, codes
    for code, retry, body in answers:
        if code == 429:
            assert int(retry) >= 1 and body["error"]["type"] == "rate_limit_error"
        else:
            assert body["usage"]["completion_tokens"] > 0 and body["choices"][0]["message"]["content"]
    text = metrics(server)
    assert re.search(r'medwb_rejected_total\{model="pytorch:fp32"\} [1-9]', text)
    assert re.search(r'medwb_requests_total\{route="/v1/chat/completions",status="200"\} [1-9]', text)
    assert "medwb_time_to_first_token_seconds_bucket" in text and "medwb_tokens_total" in text
    json.dumps(answers)


def test_serve_load_records_latency_percentiles_and_a_plot(server, tmp_path):
    """`medwb serve-load` against the running endpoint: open-loop requests at two rates,
    a record per request and a summary per rate (percentiles, throughput, 429s), a plot."""
    (tmp_path / "token").write_text(TOKEN, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "medwb", "serve-load", "--url", server["base"], "--token-file",
                           str(tmp_path / "token"), "--rates", "1,20", "--requests", "6", "--max-tokens", "16",
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = [json.loads(x) for x in (tmp_path / "run" / "records" / "serve_load.jsonl").read_text().splitlines()]
    rows = [r for r in recs if r["record_type"] == "serve_load"]
    summaries = [r for r in recs if r["record_type"] == "serve_load_summary"]
    assert len(rows) == 12 and [s["rate_rps"] for s in summaries] == [1.0, 20.0]
    assert all(s["failed"] == 0 and s["ok"] + s["rejected_429"] == 6 for s in summaries), summaries
    first = summaries[0]
    assert first["ok"] == 6 and first["ttft_p50_ms"] > 0 and first["tpot_p50_ms"] > 0 and first["e2e_p99_ms"] > 0
    assert (tmp_path / "run" / "serve_load.png").stat().st_size > 10_000
    runs = tmp_path / "runs"  # where a run folder without --run-dir would go
    bad = subprocess.run([sys.executable, "-m", "medwb", "serve-load", "--url", server["base"], "--token-file",
                          str(tmp_path / "token"), "--rates", "0"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MEDWB_RUNS": str(runs)})
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--rates" in bad.stderr
    assert not runs.exists()  # refused before any run folder is made
