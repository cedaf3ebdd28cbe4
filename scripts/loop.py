"""The whole loop on loopback ports, without Docker: a live simulated fleet -> Prometheus (the generated rules)
-> Alertmanager (the generated route merged into a config that also pages a person) -> the person's receiver and
`rules-engine serve` (webhook -> playbook workflows), with `rules-engine monitor` beside Prometheus.

    python scripts/loop.py                       # shipped rules/, runs until Ctrl-C
    python scripts/loop.py --rules my-pack.yaml --playbooks rules/ --incidents incidents.yaml --every 20m

Uses Debian's binaries (`prometheus`, `prometheus-alertmanager`, `promtool`: `make system-deps`). Every process is
a child of this one, in its process group: Ctrl-C or SIGTERM stops them all. Everything lands in --workdir
(default: a new temp dir, removed at exit unless --keep): generated files, history, TSDB, logs, and
`loop.json` (every URL and token, written once the loop is up). The person's receiver is a webhook inside this
script: each notification it gets is printed as a `PAGE` line and appended to person.jsonl.
"""
from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rules_engine.cli"]
DEFAULT_INCIDENTS = [{"kind": "queue_buildup", "instance": "vllm-1", "start": "1m", "duration": "20m",
                      "magnitude": 1.3}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stamp(when: float | None = None) -> str:
    when = time.time() if when is None else when
    return time.strftime("%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


class Loop:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager", "serve", "monitor",
                                                     "person")}
        self.url = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}

    # --- processes -------------------------------------------------------------------------------------------
    def start(self, name: str, cmd: list[str], ready: str | None, timeout: float = 300,
              may_exit: str | None = None) -> subprocess.Popen | None:
        """Start a child and wait until `ready` answers; None when it exits saying `may_exit` (not needed)."""
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        log.close()
        self.children.append((name, proc))
        if ready:
            deadline = time.monotonic() + timeout
            while not self._answers(ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                    if proc.poll() is not None and may_exit and may_exit in tail:
                        self.children.remove((name, proc))
                        print(f"{stamp()} {name} not running: {tail.strip().splitlines()[-1]}", flush=True)
                        return None
                    raise SystemExit(f"{name} did not become ready at {ready}:\n{tail}")
                time.sleep(0.2)
        print(f"{stamp()} started {name} (pid {proc.pid})" + (f" at {'/'.join(ready.split('/')[:3])}" if ready else ""),
              flush=True)
        return proc

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def run(self, name: str, cmd: list[str]) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        (self.workdir / f"{name}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(f"{name} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
        for line in result.stdout.strip().splitlines() or ["done"]:
            print(f"{stamp()} {name}: {line}", flush=True)

    def stop(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in reversed(self.children):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- the loop --------------------------------------------------------------------------------------------
    def up(self, person_url: str) -> dict:
        args, work = self.args, self.workdir
        tokens = {"alertmanager": secrets.token_hex(16), "operator": secrets.token_hex(16)}
        (work / "am-token").write_text(tokens["alertmanager"] + "\n")
        fast = args.fast
        base = {"global": {"resolve_timeout": "5m"},
                "route": {"receiver": "person", "group_by": ["alertname"],
                          "group_wait": "1s" if fast else "30s", "group_interval": "5s" if fast else "5m"},
                "receivers": [{"name": "person", "webhook_configs": [{"url": person_url, "send_resolved": True}]}]}
        (work / "alertmanager-base.yml").write_text(yaml.safe_dump(base, sort_keys=False))
        monitor = not args.no_monitor and self._has_monitor()
        self.run("generate", [*CLI, "generate", *[a for r in args.rules for a in ("--rules", r)],
                              "--out", str(work / "generated"), "--interval", args.interval,
                              "--webhook-url", f"{self.url['serve']}/alertmanager/webhook",
                              "--token-file", str(work / "am-token"),
                              "--alertmanager-config", str(work / "alertmanager-base.yml"),
                              *(["--monitor"] if monitor else [])])

        incidents = work / "incidents.yaml"
        if args.incidents:
            shutil.copy(args.incidents, incidents)
        else:
            incidents.write_text(yaml.safe_dump(DEFAULT_INCIDENTS, sort_keys=False))
        self.start("exporter", [*CLI, "simulate", "--serve", f"127.0.0.1:{self.ports['exporter']}",
                                "--scenario", "none", "--instances", str(args.instances), "--duration", args.history,
                                "--step", args.step, "--horizon", args.horizon, "--out", str(work / "history.om"),
                                "--truth", str(work / "truth.json"), "--incidents", str(incidents),
                                *(["--every", args.every] if args.every else [])],
                   f"{self.url['exporter']}/-/ready")
        self.run("backfill", [*CLI, "backfill", "--data", str(work / "prometheus"),
                              "--openmetrics", str(work / "history.om"), "--rules", str(work / "generated/prometheus")])
        (work / "history.om").unlink()

        alertmanager_yml = yaml.safe_load((work / "generated/alertmanager/alertmanager.yml").read_text())
        if fast:  # the engine's route batches for 30s and re-sends every 5m: seconds in a test
            alertmanager_yml["route"]["routes"][0].update(group_wait="1s", group_interval="5s")
        (work / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_yml, sort_keys=False))
        self.start("alertmanager", ["prometheus-alertmanager", f"--config.file={work / 'alertmanager.yml'}",
                                    f"--storage.path={work / 'alertmanager-data'}",
                                    f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
                                    "--cluster.listen-address="], f"{self.url['alertmanager']}/-/ready")

        serve_yml = {
            "listen": f"127.0.0.1:{self.ports['serve']}", "database_url": f"sqlite:///{work / 'engine.db'}",
            "playbooks": [str(Path(p).resolve()) for p in args.playbooks], "prometheus_url": self.url["prometheus"],
            "variables": {"orchestrator_url": "http://orchestrator.invalid:8000"}, "dry_run": True,
            "alertmanager_auth": {"bearer_token": {"file": str(work / "am-token")}},
            "operators": [{"name": "operator", "roles": ["admin"], "token": {"file": str(work / "operator-token")}}],
            "workers": 1, "threads": 4,
        }
        (work / "operator-token").write_text(tokens["operator"] + "\n")
        (work / "serve.yaml").write_text(yaml.safe_dump(serve_yml, sort_keys=False))
        self.start("serve", [*CLI, "serve", "--config", str(work / "serve.yaml")], f"{self.url['serve']}/api/v1/ready")

        if monitor:
            # It exits when every rule is exact in PromQL (Prometheus alone alerts on them then).
            monitor = self.start("monitor", [*CLI, "monitor", *[a for r in args.rules for a in ("--rules", r)],
                                             "--prometheus", self.url["prometheus"], "--alertmanager",
                                             self.url["alertmanager"], "--interval", args.interval,
                                             "--listen", f"127.0.0.1:{self.ports['monitor']}"],
                                 f"{self.url['monitor']}/metrics", may_exit="nothing for the monitor to evaluate"
                                 ) is not None
        else:
            print(f"{stamp()} monitor not started" + (" (--no-monitor)" if args.no_monitor else
                                                      " (this checkout has no `rules-engine monitor`)"), flush=True)
        scrape = args.scrape_interval
        prometheus_yml = {
            "global": {"scrape_interval": scrape, "evaluation_interval": args.interval},
            "rule_files": [str(work / "generated/prometheus/*.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.ports['alertmanager']}"]}]}]},
            "scrape_configs": [
                {"job_name": "vllm", "honor_labels": True,
                 "static_configs": [{"targets": [f"127.0.0.1:{self.ports['exporter']}"]}]},
                {"job_name": "rules-engine", "static_configs": [{"targets": [f"127.0.0.1:{self.ports['serve']}"]}]},
            ] + ([{"job_name": "rules-engine-monitor",  # started, so it has rules to evaluate
                   "static_configs": [{"targets": [f"127.0.0.1:{self.ports['monitor']}"]}]}] if monitor else []),
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(prometheus_yml, sort_keys=False))

        self.start("prometheus", ["prometheus", f"--config.file={work / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={work / 'prometheus'}", "--storage.tsdb.retention.time=18250d",
                                  f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
                                  *(["--rules.alert.resend-delay=1s"] if fast else [])],
                   f"{self.url['prometheus']}/-/ready")
        state = {"workdir": str(work), "urls": self.url, "monitor": monitor, "operator_token": tokens["operator"],
                 "person_log": str(work / "person.jsonl"), "pids": {n: p.pid for n, p in self.children}}
        (work / "loop.json").write_text(json.dumps(state, indent=1) + "\n")
        return state

    @staticmethod
    def _has_monitor() -> bool:
        return subprocess.run([*CLI, "monitor", "--help"], capture_output=True, cwd=ROOT).returncode == 0


@contextlib.contextmanager
def person_receiver(port: int, log_path: Path):
    """The person's pager: a webhook receiver that prints and records every notification."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            received = time.time()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with lock, open(log_path, "a") as out:
                out.write(json.dumps({"received": received, "notification": body}) + "\n")
            for alert in body.get("alerts", []):
                labels = alert.get("labels", {})
                print(f"{stamp(received)} PAGE {alert.get('status')}: {labels.get('alertname')} "
                      f"{labels.get('instance', '')} {labels.get('model_name', '')} severity={labels.get('severity')}",
                      flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/page"
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", action="append", help="rule pack file or folder (repeatable; default rules/)")
    parser.add_argument("--playbooks", action="append", help="playbook file or folder for serve (default rules/)")
    parser.add_argument("--incidents", help="incident YAML for the live fleet; offsets count from the start "
                                            "(default: a queue build-up on vllm-1 after 1m)")
    parser.add_argument("--every", help="repeat the incidents this often, e.g. 30m")
    parser.add_argument("--instances", type=int, default=4, help="simulated vLLM instances (default 4)")
    parser.add_argument("--history", default="2h", help="history backfilled before now (default 2h)")
    parser.add_argument("--horizon", default="1d", help="how long the live fleet runs (default 1d)")
    parser.add_argument("--step", default="5s", help="simulation step (default 5s)")
    parser.add_argument("--scrape-interval", default="5s", help="Prometheus scrape interval (default 5s)")
    parser.add_argument("--interval", default="15s", help="rule evaluation and monitor interval (default 15s)")
    parser.add_argument("--fast", action="store_true", help="Alertmanager and Prometheus timers of seconds")
    parser.add_argument("--no-monitor", action="store_true", help="do not run `rules-engine monitor`")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir at exit")
    parser.add_argument("--for", dest="run_for", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    args.rules = args.rules or [str(ROOT / "rules")]
    args.playbooks = args.playbooks or [str(ROOT / "rules")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rules-engine-loop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    loop = Loop(args, workdir)
    try:
        with person_receiver(loop.ports["person"], workdir / "person.jsonl") as person_url:
            state = loop.up(person_url)
            print(f"{stamp()} loop up: Prometheus {state['urls']['prometheus']}, Alertmanager "
                  f"{state['urls']['alertmanager']}, serve {state['urls']['serve']} (operator token in "
                  f"{workdir / 'operator-token'}), exporter {state['urls']['exporter']}/metrics; workdir {workdir}",
                  flush=True)
            deadline = None if args.run_for is None else time.monotonic() + args.run_for
            while not stopping.wait(0.5):
                if deadline is not None and time.monotonic() > deadline:
                    break
                dead = [(name, proc.returncode) for name, proc in loop.children if proc.poll() is not None]
                if dead:
                    print(f"{stamp()} stopping: {dead[0][0]} exited with {dead[0][1]} "
                          f"(log: {workdir / (dead[0][0] + '.log')})", flush=True)
                    return 1
    finally:
        loop.stop()
        print(f"{stamp()} stopped", flush=True)
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
