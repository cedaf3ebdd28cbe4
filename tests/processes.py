"""Run the real Prometheus, Alertmanager and promtool binaries in tests.

Plain functions and context managers, no framework: each binary listens on a free 127.0.0.1 port with its own
temp dir, readiness is polled on `/-/ready` against a deadline, and the process is always stopped on exit
(terminate, then kill after a grace period). A start failure raises with the tail of the binary's log, so a
broken config reads as the binary's own error message.
"""
from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import requests
import yaml

PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "prometheus")
PROMTOOL = os.environ.get("PROMTOOL_BIN", "promtool")
ALERTMANAGER = os.environ.get("ALERTMANAGER_BIN", "prometheus-alertmanager")

# Prometheus deletes blocks whose max time is older than (newest block's max time - retention) when it opens
# the TSDB and after compactions. Backfilled history can sit far in the past while a test also has recent data
# (a second backfill, or rule results compacted from the head), so the window must cover any history a test
# loads; 50 years covers any timestamp since 1990 (tests/test_processes.py shows 15d deleting such history).
RETENTION = "18250d"

# promtool re-parses the whole input once per block window, and windows are 2h x 3^k (2h, 6h, 18h, 54h, 162h,
# 486h): asking for 486h puts a week of history in one or two windows. Measured on the 8-instance x 2-day demo
# file (721 MB): 58.5 s with the default 2h, 12.6 s with 486h. Prometheus opens such blocks fine (they span only
# the data's own range).
MAX_BLOCK_DURATION = "486h"

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class ProcessStartError(RuntimeError):
    """A binary exited or never became ready; the message carries the tail of its log."""


@contextlib.contextmanager
def serving(handler: type, poll_interval: float = 0.02) -> Iterator[str]:
    """A ThreadingHTTPServer with `handler` on a free 127.0.0.1 port, serving in a thread; yields its base URL and
    stops it on exit (a short poll interval: shutdown() waits up to one interval for the serve loop to notice)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def wait_for(what: str, probe: Callable[[], object], timeout: float = 60.0, interval: float = 0.2):
    """Poll `probe` until it returns something truthy (returned), or fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def have_binary(name: str) -> bool:
    return shutil.which(name) is not None


def backfill(openmetrics: str | os.PathLike | Sequence[str | os.PathLike], data_dir: str | os.PathLike,
             max_block_duration: str = MAX_BLOCK_DURATION, jobs: int = 1, timeout: float = 1800.0) -> None:
    """Load OpenMetrics file(s) with timestamps into TSDB blocks under `data_dir` with promtool.

    Several files (e.g. the shards of a large simulation) are loaded by up to `jobs` promtool processes at once,
    each into its own directory, and their blocks moved into `data_dir`: promtool holds its whole input in memory
    and parses on one core, so shards bound the memory and use both cores. Raises with promtool's stderr.
    """
    paths = [openmetrics] if isinstance(openmetrics, (str, os.PathLike)) else list(openmetrics)
    data_path = Path(data_dir)
    data_path.mkdir(parents=True, exist_ok=True)
    pending = list(enumerate(paths))
    running: list[tuple[subprocess.Popen, Path, Path]] = []
    failures = []
    deadline = time.monotonic() + timeout
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                number, path = pending.pop(0)
                target = data_path if len(paths) == 1 else Path(tempfile.mkdtemp(prefix=f".backfill-{number}-",
                                                                                  dir=data_path))
                cmd = [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                       f"--max-block-duration={max_block_duration}", str(path), str(target)]
                running.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                                Path(path), target))
            proc, path, target = running.pop(0)
            try:
                stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise RuntimeError(f"promtool backfill of {path} did not finish within {timeout:.0f}s") from None
            if proc.returncode != 0:
                failures.append(f"promtool backfill of {path} failed (exit {proc.returncode}):\n"
                                f"{stderr.strip() or stdout.strip()}")
            if target != data_path and proc.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
            elif target != data_path:
                for block in target.iterdir():
                    block.rename(data_path / block.name)
                target.rmdir()
    finally:
        for proc, _, _ in running:
            _stop(proc)
    if failures:
        raise RuntimeError("\n".join(failures))


def _log_tail(log_path: Path, lines: int = 30) -> str:
    """The last lines of a log, preceded by its error lines: a start failure's cause is often buried under
    a dozen shutdown lines."""
    try:
        text = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    # Run-time errors are logged with level=error; a bad flag makes kingpin print "<binary>: error: ..." first.
    errors = [line for line in text if "level=error" in line or ": error:" in line][:5]
    head = ("errors:\n" + "\n".join(errors) + "\n--- tail:\n") if errors else ""
    return head + "\n".join(text[-lines:])


def stop_process_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """Stop a process started with start_new_session=True and everything it forked (gunicorn and its workers)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, what: str, timeout: float,
                ready_statuses: tuple[int, ...] = (200,)) -> None:
    """Poll `url` until it answers one of `ready_statuses`; fail early if the process exits, and at the
    deadline. (Behind basic auth `/-/ready` answers 401 once the server is up, which is as good a sign.)"""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if proc.poll() is not None:
            raise ProcessStartError(f"{what} exited with code {proc.returncode} before becoming ready; "
                                    f"log tail ({log_path}):\n{_log_tail(log_path)}")
        try:
            # verify=False: a test TLS server has a self-signed certificate; this only probes readiness.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if requests.get(url, timeout=1.0, verify=False).status_code in ready_statuses:
                    return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ProcessStartError(f"{what} not ready at {url} after {timeout:.0f}s; "
                                    f"log tail ({log_path}):\n{_log_tail(log_path)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


_wait_ready = wait_ready  # the name tests/test_e2e_alerting.py uses


@contextlib.contextmanager
def _spawn(cmd: list[str], log_path: Path, ready_url: str, what: str, ready_timeout: float,
           cwd: Path, ready_statuses: tuple[int, ...] = (200,)) -> Iterator[subprocess.Popen]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    try:
        wait_ready(proc, ready_url, log_path, what, ready_timeout, ready_statuses)
        yield proc
    finally:
        _stop(proc)


@dataclass
class RunningPrometheus:
    url: str
    port: int
    data_dir: Path
    log_path: Path
    config_path: Path
    pid: int = 0

    def query(self, expr: str, time: float | None = None) -> list[dict]:
        """Instant query; returns the result list (raises on an API error)."""
        params = {"query": expr}
        if time is not None:
            params["time"] = str(time)
        return _api_result(requests.get(f"{self.url}/api/v1/query", params=params, timeout=60))

    def query_range(self, expr: str, start: float, end: float, step: float | str) -> list[dict]:
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        return _api_result(requests.get(f"{self.url}/api/v1/query_range", params=params, timeout=120))


def _api_result(response: requests.Response) -> list[dict]:
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus API error {response.status_code}: {body.get('errorType')}: "
                           f"{body.get('error')}")
    return body["data"]["result"]


def prometheus_config(rule_files: Sequence[str | os.PathLike] = (), alertmanager_url: str | None = None,
                      evaluation_interval: str = "15s", scrape_interval: str = "15s",
                      scrape_configs: list[dict] | None = None, config_extra: dict | None = None) -> dict:
    """The prometheus.yml `running_prometheus` writes, as a dict (exposed so tests can assert on it)."""
    config: dict = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": list(scrape_configs or []),
    }
    if alertmanager_url:
        host_port = alertmanager_url.split("://", 1)[-1].rstrip("/")
        scheme = alertmanager_url.split("://", 1)[0] if "://" in alertmanager_url else "http"
        config["alerting"] = {"alertmanagers": [
            {"scheme": scheme, "static_configs": [{"targets": [host_port]}]}]}
    if config_extra:
        config.update(config_extra)
    return config


@contextlib.contextmanager
def running_prometheus(data_dir: str | os.PathLike | None = None, rule_files: Sequence[str | os.PathLike] = (),
                       config_extra: dict | None = None, web_config: dict | str | os.PathLike | None = None,
                       alertmanager_url: str | None = None, evaluation_interval: str = "15s",
                       scrape_configs: list[dict] | None = None, enable_lifecycle: bool = False,
                       alert_resend_delay: str | None = "1s", retention: str = RETENTION,
                       extra_args: Sequence[str] = (), ready_timeout: float = READY_TIMEOUT,
                       ) -> Iterator[RunningPrometheus]:
    """Start `prometheus` on 127.0.0.1:<free port> over `data_dir` (a fresh temp dir if None).

    `config_extra` is merged at the top level of the generated prometheus.yml; `web_config` is a dict (written
    to a file) or a path for `--web.config.file` (TLS/basic auth). Without `scrape_configs` nothing is scraped,
    so the TSDB holds only what was backfilled plus what rules write. `alert_resend_delay` (Prometheus'
    default is 1m) is short so alerts reach `alertmanager_url` within seconds; None keeps the default.
    """
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        tmp_path = Path(tmp)
        data_path = Path(data_dir) if data_dir is not None else tmp_path / "data"
        data_path.mkdir(parents=True, exist_ok=True)
        config_path = tmp_path / "prometheus.yml"
        config = prometheus_config(rule_files, alertmanager_url, evaluation_interval,
                                   scrape_configs=scrape_configs, config_extra=config_extra)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        cmd = [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={data_path}",
               f"--storage.tsdb.retention.time={retention}", f"--web.listen-address=127.0.0.1:{port}"]
        if enable_lifecycle:
            cmd.append("--web.enable-lifecycle")
        if alert_resend_delay:
            # Alerts from the first evaluations are dropped until the notifier has discovered the
            # Alertmanager; with the default 1m resend delay a test would wait a minute for the next send.
            cmd.append(f"--rules.alert.resend-delay={alert_resend_delay}")
        if web_config is not None:
            if isinstance(web_config, dict):
                web_config_path = tmp_path / "web.yml"
                web_config_path.write_text(yaml.safe_dump(web_config, sort_keys=False))
            else:
                web_config_path = Path(web_config)
            cmd.append(f"--web.config.file={web_config_path}")
        cmd.extend(extra_args)
        log_path = tmp_path / "prometheus.log"
        scheme = "http"
        ready_statuses: tuple[int, ...] = (200,)
        if web_config is not None:
            web = web_config if isinstance(web_config, dict) else yaml.safe_load(Path(web_config).read_text())
            scheme = "https" if (web or {}).get("tls_server_config") else "http"
            ready_statuses = (200, 401)
        url = f"{scheme}://127.0.0.1:{port}"
        with _spawn(cmd, log_path, f"{url}/-/ready", "prometheus", ready_timeout, tmp_path,
                    ready_statuses) as proc:
            yield RunningPrometheus(url=url, port=port, data_dir=data_path, log_path=log_path,
                                    config_path=config_path, pid=proc.pid)


@dataclass
class RunningAlertmanager:
    url: str
    port: int
    cluster_address: str  # "" when clustering is disabled
    storage_dir: Path
    log_path: Path
    config_path: Path
    pid: int = 0

    def alerts(self, **filters: str) -> list[dict]:
        """GET /api/v2/alerts (optionally `filter=` label matchers, e.g. alertname="X")."""
        params = [("filter", f'{k}="{v}"') for k, v in filters.items()]
        response = requests.get(f"{self.url}/api/v2/alerts", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def post_alerts(self, alerts: list[dict]) -> None:
        requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()


@contextlib.contextmanager
def running_alertmanager(config: str | os.PathLike | dict, peers: Sequence[str] = (), cluster: bool | None = None,
                         extra_args: Sequence[str] = (), ready_timeout: float = READY_TIMEOUT,
                         ) -> Iterator[RunningAlertmanager]:
    """Start `prometheus-alertmanager` on 127.0.0.1:<free port> with a temp `--storage.path`.

    `config` is the YAML text, a dict, or a path to an existing file (a str naming an existing file counts as
    a path). Clustering is off unless `peers` are given or `cluster=True`; then the cluster listens on a free
    loopback port (`.cluster_address`) that a second Alertmanager can name in its `peers`.
    """
    with tempfile.TemporaryDirectory(prefix="alertmanager-") as tmp:
        tmp_path = Path(tmp)
        config_path = tmp_path / "alertmanager.yml"
        if isinstance(config, dict):
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        elif isinstance(config, os.PathLike) or ("\n" not in config and Path(config).is_file()):
            config_path = Path(config)
        else:
            config_path.write_text(config)
        storage = tmp_path / "storage"
        storage.mkdir()
        port = free_port()
        clustered = bool(peers) if cluster is None else cluster
        cluster_address = f"127.0.0.1:{free_port()}" if clustered else ""
        cmd = [ALERTMANAGER, f"--config.file={config_path}", f"--storage.path={storage}",
               f"--web.listen-address=127.0.0.1:{port}", f"--cluster.listen-address={cluster_address}"]
        if clustered:
            # Gossip would otherwise advertise a non-loopback address (or fail to find a private one).
            cmd += [f"--cluster.advertise-address={cluster_address}", "--cluster.settle-timeout=2s",
                    "--cluster.gossip-interval=50ms", "--cluster.pushpull-interval=1s"]
            cmd += [f"--cluster.peer={peer}" for peer in peers]
        cmd.extend(extra_args)
        log_path = tmp_path / "alertmanager.log"
        url = f"http://127.0.0.1:{port}"
        with _spawn(cmd, log_path, f"{url}/-/ready", "alertmanager", ready_timeout, tmp_path) as proc:
            yield RunningAlertmanager(url=url, port=port, cluster_address=cluster_address, storage_dir=storage,
                                      log_path=log_path, config_path=config_path, pid=proc.pid)


@contextlib.contextmanager
def simulated_prometheus(spec, incidents=(), shards: int = 1, jobs: int = 1, **prometheus_kwargs,
                         ) -> Iterator[tuple[RunningPrometheus, Any]]:
    """Simulate a vLLM fleet (`rules_engine.simulate.FleetSpec`, incidents), backfill it into a temp data dir
    and serve it: yields (RunningPrometheus, Simulation); `simulation.truth` has the injected incidents.
    Extra keyword arguments go to `running_prometheus` (rule_files, alertmanager_url, ...)."""
    from rules_engine.simulate import simulate

    with tempfile.TemporaryDirectory(prefix="simulated-") as tmp:
        root = Path(tmp)
        simulation = simulate(root / "fleet.om", spec, incidents, shards=shards, jobs=jobs)
        backfill(simulation.paths, root / "data", jobs=jobs)
        for path in simulation.paths:  # the blocks hold the samples now; the text can be large
            path.unlink()
        with running_prometheus(data_dir=root / "data", **prometheus_kwargs) as prometheus:
            yield prometheus, simulation


def postgres_bindir() -> str | None:
    """The newest Debian PostgreSQL server's bin directory (apt-get install postgresql), or None."""
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


@contextlib.contextmanager
def running_postgres(fsync: bool = True, timeout: float = 30.0) -> Iterator[str]:
    """A throwaway PostgreSQL cluster (initdb in a temp dir, run as the `postgres` system user when root, since the
    server refuses root; TCP on a free loopback port, trust auth); yields its URL and always stops it. `fsync=False`
    suits tests (nothing survives them anyway); a benchmark of durable commits needs True."""
    import pwd

    bindir = postgres_bindir()
    if bindir is None:
        raise ProcessStartError("PostgreSQL server binaries not installed (apt-get install -y postgresql)")
    user = pwd.getpwnam("postgres")
    tmp = tempfile.mkdtemp(prefix="pg-")
    os.chown(tmp, user.pw_uid, user.pw_gid)
    data = os.path.join(tmp, "data")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    port = free_port()
    log = os.path.join(tmp, "postgres.log")
    proc = subprocess.Popen([*as_postgres, f"{bindir}/postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1",
                             "-k", tmp, "-c", f"fsync={'on' if fsync else 'off'}"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ProcessStartError(f"postgres did not start: {open(log).read()[-2000:]}")
            time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"  # the plain URL an operator writes
    finally:
        _stop(proc, 15)
        shutil.rmtree(tmp, ignore_errors=True)
