"""Webhook acknowledgement: `rules-engine serve` against a bare Flask endpoint, same WSGI server, same load.

    python bench/bench_webhook.py [--seconds 5] [--rate 500] [--settings 1x16,2x8,4x4] [--cases ...]

Needs `wrk` (Debian: apt-get install wrk), aiohttp (the `test` extra) and, for the PostgreSQL cases, Debian's
PostgreSQL server binaries (started here with fsync on, so its commits are durable like SQLite's FULL).

1. The peer: a bare Flask app that only parses the JSON body and answers 200, under gunicorn with the very settings
   `serve` uses (rules_engine.server.gunicorn.run_gunicorn), at each of `--settings` (workers x threads); the
   best of them is "its best settings", and every case of ours runs at those too.
2. Throughput, closed loop: wrk, 2 threads x 16 keep-alive connections on 127.0.0.1 for `--seconds`, each request
   one distinct alert (its own fingerprint and instance: a new episode, no resend shortcut).
3. Latency, open loop: requests sent at a fixed `--rate` (one alert each) on a schedule that does not wait for
   answers (asyncio + aiohttp, new connections when all are busy), the latency of each measured from its
   scheduled send time to its complete answer, so a stall shows as the delay of everything scheduled behind it.
4. One 1,000-alert payload (median of 5), each sent alone.

Ours runs with SQLite `synchronous=FULL` (WAL: a commit is fsynced before the 2xx, durable against power loss;
NORMAL would only survive a crash of the process) and with PostgreSQL (fsync on, synchronous_commit on), each
with processing on (intake and executors compete for the same cores) and receive-only (`--no-processing`:
another process runs the intake). The machine may be shared: the ratios within one invocation are what count.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.processes import free_port, running_postgres, stop_process_group, wait_for  # noqa: E402

TOKEN = "bench-token"
PATH = "/alertmanager/webhook"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
FINGERPRINT = "FPFPFPFPFPFPFPFP"  # replaced per request: 16 hex digits, as Alertmanager sends


def alert(key: str) -> dict:
    return {
        "status": "firing",
        "labels": {"alertname": "VLLMQueueBuildup", "instance": f"vllm-{key}:8000", "model_name": "llama",
                   "severity": "high", "category": "queue_buildup", "rule_pack": "vllm"},
        "annotations": {"summary": "requests waiting", "playbook": "vllm-scale-out"},
        "startsAt": "2026-01-01T00:00:00.123456789Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph", "fingerprint": key,
    }


def alert_payload(keys: list[str]) -> bytes:
    return json.dumps({
        "version": "4", "groupKey": '{}/{rule_pack=~".+"}:{alertname="VLLMQueueBuildup"}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "rules-engine", "groupLabels": {"alertname": "VLLMQueueBuildup"},
        "commonLabels": {"alertname": "VLLMQueueBuildup"}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "alerts": [alert(key) for key in keys]}).encode()


# --- the bare peer --------------------------------------------------------------------------------------------------
def bare_app():
    from flask import Flask, request

    app = Flask("bare")

    @app.post(PATH)
    def webhook():
        request.get_json(force=True)
        return {"status": "ok"}, 200

    return app


def serve_bare(port: int, workers: int, threads: int) -> None:
    from rules_engine.server.config import ServerConfig
    from rules_engine.server.gunicorn import run_gunicorn

    run_gunicorn(ServerConfig(listen=f"127.0.0.1:{port}", workers=workers, threads=threads), load=bare_app)


# --- closed loop: wrk ---------------------------------------------------------------------------------------------
WRK_SCRIPT = """
local body = [==[%(body)s]==]
local head, tail = body:match("^(.-)%(marker)s(.*)$")
local mid, rest = tail:match("^(.-)%(marker)s(.*)$")
local counter = 0  -- `id`: a global each thread gets from setup()
local threads = {}
function setup(thread) thread:set("id", #threads + 1); table.insert(threads, thread) end
function request()
  counter = counter + 1
  local key = string.format("%%04x%%012x", %(salt)d * 16 + id, counter)
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json",
                    ["Authorization"] = "Bearer %(token)s"}, head .. key .. mid .. key .. rest)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"non_2xx\\": %%d, "
    .. "\\"socket_errors\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d}\\n", summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(port: int, seconds: float, tmp: Path, salt: int, connections: int = 16) -> dict:
    """Closed-loop throughput: every connection sends its next request as soon as the last one is answered."""
    body = alert_payload([FINGERPRINT]).decode()
    script = tmp / f"wrk-{salt}.lua"
    script.write_text(WRK_SCRIPT % {"body": body, "marker": FINGERPRINT, "path": PATH, "token": TOKEN,
                                    "salt": salt})
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout
    found = json.loads(next(line for line in out.splitlines() if line.startswith("WRK_JSON ")).split(" ", 1)[1])
    ok = found["requests"] - found["non_2xx"]
    return {"per_second": ok / (found["duration_us"] / 1e6), "errors": found["non_2xx"] + found["socket_errors"],
            "closed_p50_ms": found["p50_us"] / 1000, "closed_p99_ms": found["p99_us"] / 1000}


# --- open loop: a fixed rate ---------------------------------------------------------------------------------------
async def _open_loop(port: int, rate: float, seconds: float, salt: int) -> dict:
    import aiohttp

    url = f"http://127.0.0.1:{port}{PATH}"
    total = int(rate * seconds)
    bodies = [alert_payload([f"{salt:04x}{i:012x}"]) for i in range(total)]
    latencies: list[float] = []
    errors: list[str] = []
    lag = 0.0  # how late the client itself sent (its own scheduling); counted in the latencies anyway

    async def send(session, body: bytes, scheduled: float) -> None:
        try:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                if response.status != 200:
                    errors.append(str(response.status))
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            errors.append(type(error).__name__)
            return
        latencies.append(time.perf_counter() - scheduled)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout) as session:
        tasks = []
        start = time.perf_counter() + 0.05
        for i, body in enumerate(bodies):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, time.perf_counter() - scheduled)
            tasks.append(asyncio.ensure_future(send(session, body, scheduled)))
        await asyncio.gather(*tasks)
    latencies.sort()
    pick = (lambda q: 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * q))]) if latencies else (
        lambda q: float("nan"))
    return {"open_p50_ms": pick(0.50), "open_p99_ms": pick(0.99), "open_max_ms": pick(1.0),
            "open_errors": len(errors), "open_sent": total, "client_lag_ms": 1000 * lag}


def open_loop(port: int, rate: float, seconds: float, salt: int) -> dict:
    return asyncio.run(_open_loop(port, rate, seconds, salt))


# --- CPU spent by the servers: the figure the machine's other load disturbs least ---------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the processes `roots` and all their descendants (from /proc)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))  # ppid; u/s/cu/cs time
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, list(roots)
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return total / _TICK


def postgres_pid(url: str) -> int:
    """The postmaster of the cluster at `url` (its backends are its children)."""
    from sqlalchemy import create_engine, text

    engine = create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    with engine.connect() as conn:
        data = conn.execute(text("SHOW data_directory")).scalar_one()
    engine.dispose()
    return int(Path(data, "postmaster.pid").read_text().split()[0])


def big_payload(port: int, salt: int, runs: int = 5, settle=lambda: None) -> float:
    times = []
    with requests.Session() as session:
        for run in range(runs):
            body = alert_payload([f"{salt:04x}{run:04x}{i:08x}" for i in range(1000)])
            settle()  # each payload alone: not behind the intake of the previous one
            started = time.perf_counter()
            response = session.post(f"http://127.0.0.1:{port}{PATH}", data=body, timeout=60, headers=HEADERS)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return 1000 * statistics.median(times)


# --- servers -------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def started(cmd: list[str], port: int, log_path: Path):
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        def up():
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"http://127.0.0.1:{port}/", timeout=1) is not None  # any answer, 404 too
            return False
        wait_for(f"the server on port {port}", up, timeout=60, interval=0.05)
        yield proc
    finally:
        stop_process_group(proc, 15)


def engine_command(tmp: Path, port: int, workers: int, threads: int, database_url: str, processing: bool) -> list[str]:
    (tmp / "token").write_text(TOKEN)
    config = tmp / f"serve-{port}.yaml"
    config.write_text(json.dumps({
        "listen": f"127.0.0.1:{port}", "database_url": database_url, "sqlite_synchronous": "FULL",
        "playbooks": [str(REPO / "rules" / "playbooks")], "variables": {"orchestrator_url": "http://127.0.0.1:9"},
        "alertmanager_auth": {"bearer_token": {"file": str(tmp / "token")}},
        "operators": [{"name": "bench", "token": {"sha256": hashlib.sha256(b"op").hexdigest()}, "roles": ["admin"]}],
        "workers": workers, "threads": threads, "process": processing,
    }))
    return [sys.executable, "-c", "from rules_engine.cli import main; main()", "serve", "--config", str(config)]


def bare_command(port: int, workers: int, threads: int) -> list[str]:
    return [sys.executable, __file__, "--serve-bare", str(port), str(workers), str(threads)]


def backlog(port: int) -> float | None:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("rules_engine_events_unprocessed "):
            return float(line.split()[1])
    return None  # the bare peer has no backlog


_salts = iter(range(1, 4096))


def run_case(name: str, cmd: list[str], port: int, tmp: Path, args, **kwargs) -> dict:
    with started(cmd, port, tmp / f"{name.replace(' ', '_').replace('/', '_')}.log") as proc:
        return measure(port, proc.pid, tmp, args, **kwargs)


def measure(port: int, pid: int, tmp: Path, args, processing: bool = False, full: bool = True,
            also: tuple[int, ...] = (), peer: tuple[int, int] | None = None) -> dict:
    """Measure the server at `port` (process `pid`; `also`: processes whose CPU counts as its own, the PostgreSQL
    cluster). `peer`: the bare server's (port, pid), measured by the same wrk run just before, so the ratio
    compares two runs seconds apart, under the same load from whatever else shares the machine."""
    def settle() -> float:  # the intake catches up, so the next measurement starts from an empty backlog
        began = time.perf_counter()
        while processing and (backlog(port) or 0) > 0 and time.perf_counter() - began < 300:
            time.sleep(0.1)
        return time.perf_counter() - began

    def closed_loop(port: int, pids: list[int], drain) -> dict:
        cpu_before = cpu_seconds(pids)
        found = wrk(port, args.seconds, tmp, next(_salts))
        found["drain_s"] = drain()  # the intake's CPU for the burst counts too
        found["cpu_ms"] = 1000 * (cpu_seconds(pids) - cpu_before) / (found["per_second"] * args.seconds)
        return found

    wrk(port, 1, tmp, next(_salts))  # warm-up: connections, imports, page cache
    settle()
    result = {}
    if peer is not None:
        adjacent = closed_loop(peer[0], [peer[1]], lambda: None)
        result.update(peer_per_second=adjacent["per_second"], peer_cpu_ms=adjacent["cpu_ms"])
    result.update(closed_loop(port, [pid, *also], settle if processing else lambda: None))
    if full:
        result.update(open_loop(port, args.rate, args.seconds, next(_salts)))
        settle()
        result["big_ms"] = big_payload(port, next(_salts), settle=settle)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop alerts per second (default 500)")
    parser.add_argument("--settings", default="1x16,2x8,4x4",
                        help="gunicorn workers x threads tried for the bare peer; ours runs at its best")
    parser.add_argument("--cases", default="sqlite,sqlite-receive,postgresql,postgresql-receive",
                        help="which of ours to run (comma-separated)")
    args = parser.parse_args()
    wanted = args.cases.split(",")
    settings = [tuple(int(n) for n in item.split("x")) for item in args.settings.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        sweep = {}
        for workers, threads in settings:
            port = free_port()
            sweep[(workers, threads)] = run_case(f"bare {workers}x{threads}", bare_command(port, workers, threads),
                                                 port, tmp, args, full=False)
        workers, threads = max(sweep, key=lambda k: sweep[k]["per_second"])
        bare_port = free_port()
        bare = stack.enter_context(started(bare_command(bare_port, workers, threads), bare_port, tmp / "bare.log"))
        cases = {"bare Flask (parse JSON, 200)": measure(bare_port, bare.pid, tmp, args)}
        postgres_url = stack.enter_context(running_postgres(fsync=True)) if any(
            c.startswith("postgresql") for c in wanted) else None
        for case in wanted:
            store, _, receive = case.partition("-")
            port = free_port()
            if store == "sqlite":
                url = f"sqlite:///{tmp / f'bench-{port}.db'}"
            else:
                url = postgres_url
                reset_postgres(url)
            label = f"ours, {'SQLite FULL' if store == 'sqlite' else 'PostgreSQL'}, " \
                    f"{'receive-only' if receive else 'processing'}"
            cases[label] = run_case(label, engine_command(tmp, port, workers, threads, url, not receive), port,
                                    tmp, args, processing=not receive, peer=(bare_port, bare.pid),
                                    also=() if store == "sqlite" else (postgres_pid(url),))
    report(args, sweep, (workers, threads), cases)


def reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS events, episodes, workflows, steps, audit, notifications CASCADE"))
    engine.dispose()


def report(args, sweep: dict, best: tuple[int, int], cases: dict) -> None:
    print(f"bare Flask peer under gunicorn gthread, wrk -t2 -c16 {args.seconds:.0f}s closed loop, one distinct alert "
          f"per request: " + ", ".join(f"{w}x{t} {r['per_second']:.0f} req/s" for (w, t), r in sweep.items())
          + f"; best {best[0]} workers x {best[1]} threads, used for every case below\n")
    print(f"{'':40} {'closed loop (wrk)':^50} | {f'open loop, {args.rate:.0f} alerts/s':^30} |")
    print(f"{'case':40} {'req/s':>6} {'bare':>6} {'ratio':>5} {'errors':>6} {'CPU ms/req':>10} {'bare':>6} "
          f"{'ratio':>5} | {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>6} | {'1000-alert ms':>13}")
    for name, r in cases.items():
        peer, peer_cpu = r.get("peer_per_second", r["per_second"]), r.get("peer_cpu_ms", r["cpu_ms"])
        print(f"{name:40} {r['per_second']:6.0f} {peer:6.0f} {r['per_second'] / peer:5.2f} {r['errors']:6d} "
              f"{r['cpu_ms']:10.3f} {peer_cpu:6.3f} {peer_cpu / r['cpu_ms']:5.2f} | {r['open_p50_ms']:7.2f} "
              f"{r['open_p99_ms']:7.2f} {r['open_max_ms']:7.1f} {r['open_errors']:6d} | {r['big_ms']:13.1f}")
    print()
    for name, r in cases.items():
        if r["drain_s"] is not None:
            print(f"{name}: the intake finished the closed-loop burst's backlog {r['drain_s']:.1f}s after it ended")
    print("bare: the bare peer measured by the same wrk run seconds before each case (the ratios use it, so load "
          "from\nanything else sharing the machine changes both sides alike). CPU ms/req: user+system CPU of the "
          "server's\nprocesses (PostgreSQL's included, and the intake's catch-up after the burst) per acknowledged "
          "request;\nits ratio is what the request rates would be with the cores to each server alone.")
    lag = max(r["client_lag_ms"] for r in cases.values())
    print(f"open loop: latency from each request's scheduled send time to its answer; the client itself sent at "
          f"most {lag:.1f} ms late")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
