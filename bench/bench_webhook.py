"""Webhook acknowledgement: `rules-engine serve` against a bare Flask endpoint, same WSGI server, same load.

    python bench/bench_webhook.py [--seconds 5] [--connections 16] [--workers 2] [--threads 4]

Both servers run under gunicorn with identical settings (rules_engine.server.gunicorn.run_gunicorn); the bare peer
only parses the JSON body and returns 200. The load generator is a bounded, time-limited loop of keep-alive
HTTP/1.1 connections on 127.0.0.1 (one thread per connection, spread over two processes so the client is not
limited to one core), posting a one-alert Alertmanager payload that rotates over 50 series (mostly resends, as
in production). Reported: acknowledgement latency p50/p99, sustained deliveries per second, and their ratios;
then one 1,000-alert payload (median of 5). Our server runs with processing on (intake and executors compete for
the same two cores and the SQLite write lock) with the default `synchronous=FULL` (a commit is on disk before the
2xx); then with NORMAL (durable against a crash of the process, not of the machine); then FULL receive-only
(`--no-processing`: another process would run the intake).
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.processes import stop_process_group  # noqa: E402
TOKEN = "bench-token"


def alert_payload(n_alerts: int, offset: int = 0) -> bytes:
    alerts = [{
        "status": "firing",
        "labels": {"alertname": "VLLMQueueBuildup", "instance": f"vllm-{(offset + i) % 50}:8000", "model_name": "llama",
                   "severity": "high", "category": "queue_buildup", "rule_pack": "vllm"},
        "annotations": {"summary": "requests waiting", "playbook": "vllm-scale-out"},
        "startsAt": "2026-01-01T00:00:00.123456789Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph", "fingerprint": f"{(offset + i) % 50:016x}",
    } for i in range(n_alerts)]
    return json.dumps({
        "version": "4", "groupKey": '{}/{rule_pack=~".+"}:{alertname="VLLMQueueBuildup"}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "rules-engine", "groupLabels": {"alertname": "VLLMQueueBuildup"},
        "commonLabels": {"alertname": "VLLMQueueBuildup"}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "alerts": alerts}).encode()


# --- the bare peer --------------------------------------------------------------------------------------------------
def bare_app():
    from flask import Flask, request

    app = Flask("bare")

    @app.post("/alertmanager/webhook")
    def webhook():
        request.get_json(force=True)
        return {"status": "ok"}, 200

    return app


def serve_bare(port: int, workers: int, threads: int) -> None:
    sys.path.insert(0, str(REPO))
    from rules_engine.server.gunicorn import run_gunicorn
    from rules_engine.server.config import ServerConfig

    run_gunicorn(ServerConfig(listen=f"127.0.0.1:{port}", workers=workers, threads=threads), load=bare_app)


# --- load generator ------------------------------------------------------------------------------------------------
def _connection_loop(port: int, bodies: list[bytes], deadline: float, latencies: list[float], errors: list[int]):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    i = 0
    while time.perf_counter() < deadline:
        body = bodies[i % len(bodies)]
        i += 1
        started = time.perf_counter()
        try:
            conn.request("POST", "/alertmanager/webhook", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(response.status)
                continue
        except (OSError, http.client.HTTPException):
            errors.append(0)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        latencies.append(time.perf_counter() - started)
    conn.close()


def _client_process(port: int, connections: int, seconds: float, start_at: float, queue) -> None:
    bodies = [alert_payload(1, offset=i) for i in range(50)]
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    errors: list[int] = []
    threads = [threading.Thread(target=_connection_loop, args=(port, bodies, deadline, latencies, errors))
               for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put((latencies, errors))


def load(port: int, connections: int, seconds: float, processes: int = 2) -> dict:
    queue = multiprocessing.Queue()
    start_at = time.time() + 0.5
    per_process = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    workers = [multiprocessing.Process(target=_client_process, args=(port, n, seconds, start_at, queue))
               for n in per_process if n]
    for worker in workers:
        worker.start()
    latencies, errors = [], []
    for _ in workers:
        got_latencies, got_errors = queue.get()
        latencies += got_latencies
        errors += got_errors
    for worker in workers:
        worker.join()
    latencies.sort()
    return {"requests": len(latencies), "errors": len(errors), "per_second": len(latencies) / seconds,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


def big_payload(port: int, runs: int = 5, settle=lambda: None) -> float:
    body = alert_payload(1000)
    times = []
    with requests.Session() as session:
        for _ in range(runs):
            settle()  # each payload alone: not behind the intake of the previous one
            started = time.perf_counter()
            response = session.post(f"http://127.0.0.1:{port}/alertmanager/webhook", data=body, timeout=30,
                                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return 1000 * statistics.median(times)


# --- servers -------------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"server not ready at {url}")


def start(cmd: list[str], port: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    wait_ready(f"http://127.0.0.1:{port}/", proc)
    return proc




def engine_command(tmp: Path, port: int, workers: int, threads: int, synchronous: str, processing: bool) -> list[str]:
    (tmp / "token").write_text(TOKEN)
    config = tmp / f"serve-{port}.yaml"
    config.write_text(json.dumps({
        "listen": f"127.0.0.1:{port}", "database_url": f"sqlite:///{tmp / f'bench-{port}.db'}",
        "sqlite_synchronous": synchronous, "playbooks": [str(REPO / "rules" / "playbooks")],
        "alertmanager_auth": {"bearer_token": {"file": str(tmp / "token")}},
        "operators": [{"name": "bench", "token": {"sha256": hashlib.sha256(b"op").hexdigest()}, "roles": ["admin"]}],
        "workers": workers, "threads": threads, "process": processing,
    }))
    return [sys.executable, "-c", "from rules_engine.cli import main; main()", "serve", "--config", str(config)]


def backlog(port: int) -> float | None:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("rules_engine_events_unprocessed "):
            return float(line.split()[1])
    return None  # the bare peer has no backlog


def run_case(name: str, cmd: list[str], port: int, tmp: Path, args, processing: bool = False) -> dict:
    proc = start(cmd, port, tmp / f"{name}.log")
    try:
        load(port, args.connections, 1.0)  # warm-up: connections, imports, SQLite page cache
        result = load(port, args.connections, args.seconds)
        result["drain_s"] = None

        def settle() -> float:
            started = time.perf_counter()
            while processing and (backlog(port) or 0) > 0 and time.perf_counter() - started < 120:
                time.sleep(0.05)
            return time.perf_counter() - started

        if processing:  # the intake catches up after the burst; the 1,000-alert payload is then measured alone
            result["drain_s"] = settle()
        result["big_ms"] = big_payload(port, settle=settle)
    finally:
        stop_process_group(proc, 15)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp_dir:
        tmp = Path(tmp_dir)
        cases = {}
        port = free_port()
        cases["bare Flask (parse JSON, 200)"] = run_case("bare", [
            sys.executable, __file__, "--serve-bare", str(port), str(args.workers), str(args.threads)], port, tmp, args)
        for synchronous, processing in (("FULL", True), ("NORMAL", True), ("FULL", False)):
            port = free_port()
            name = f"rules-engine serve ({synchronous}, {'processing' if processing else 'receive-only'})"
            cases[name] = run_case(name.replace(" ", "_"), engine_command(
                tmp, port, args.workers, args.threads, synchronous, processing), port, tmp, args, processing)
    bare = cases["bare Flask (parse JSON, 200)"]
    print(f"gunicorn gthread, {args.workers} workers x {args.threads} threads; {args.connections} keep-alive "
          f"connections on 127.0.0.1; {args.seconds:.0f}s per case; one-alert payloads\n")
    print(f"{'case':44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'1000-alert ms':>14}")
    for name, r in cases.items():
        print(f"{name:44} {r['per_second']:8.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d} "
              f"{r['big_ms']:14.1f}")
    print()
    for name, r in cases.items():
        if r["drain_s"] is not None:
            print(f"{name}: the backlog left by the burst was processed {r['drain_s']:.1f}s after it ended")
    print()
    for name, r in cases.items():
        if r is bare:
            continue
        print(f"{name}: throughput {r['per_second'] / bare['per_second']:.2f}x of bare, "
              f"p50 {r['p50_ms'] / bare['p50_ms']:.2f}x, p99 {r['p99_ms'] / bare['p99_ms']:.2f}x, "
              f"1000-alert payload {r['big_ms'] / bare['big_ms']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
