"""PrometheusSource against a real Prometheus holding generated history, and against small local HTTP servers that
misbehave on purpose (5xx then success, 4xx, 429, slow, HTML login pages)."""
from __future__ import annotations

import base64
import contextlib
import http.server
import json
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import bcrypt
import click
import numpy as np
import pandas as pd
import pytest
import requests
from click.testing import CliRunner

from rules_engine.source import PrometheusClient, PrometheusSource, SourceError
from rules_engine.source.frame import evaluation_grid
from rules_engine.commands.options import prometheus_options, source_from_options
from rules_engine.source.prometheus import MAX_POINTS_PER_QUERY, decode_matrix, frame_from_chunks
from tests import processes
from tests.conftest import require_binary

# Two days of 15 s samples: a range query at a 15 s step over them has 11,521 points, more than one request allows.
HISTORY_START = pd.Timestamp("2026-10-01T00:00:00Z")
HISTORY_END = HISTORY_START + pd.Timedelta(days=2)
SCRAPE = pd.Timedelta(seconds=15)
LOOKBACK = pd.Timedelta(minutes=5)  # Prometheus' default lookback delta; 2.x includes its left edge
METRIC = "llm_queue_depth"


@dataclass(frozen=True)
class History:
    """Generated samples: labels of each series and its samples as a pandas Series indexed by UTC time."""

    series: list[tuple[dict[str, str], pd.Series]]

    def expected_frame(self, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> pd.DataFrame:
        """What `METRIC` evaluates to on the grid, computed from the samples: the latest sample within the lookback."""
        grid = evaluation_grid(start, end, step)
        columns = [samples.reindex(grid, method="ffill", tolerance=LOOKBACK) for _, samples in self.series]
        # A series with no sample within the lookback of any grid point is not in Prometheus' answer at all.
        keep = [column for column in columns if column.notna().any()]
        frame = pd.concat(keep, axis=1, ignore_index=True) if keep else pd.DataFrame(index=grid)
        frame.columns = pd.RangeIndex(frame.shape[1])
        return frame


def generate_history() -> History:
    rng = np.random.default_rng(7)
    times = pd.date_range(HISTORY_START, HISTORY_END, freq=SCRAPE)
    series = []
    for instance in ("a", "b", "c"):
        values = pd.Series(np.round(rng.gamma(2.0, 3.0, len(times)), rng.integers(0, 9)), index=times)
        if instance == "b":
            # Special values travel as strings ("NaN", "+Inf"); the decoder must read them.
            values.iloc[[100, 5000, 11000]] = [np.nan, np.inf, -np.inf]
            values.iloc[200:210] = rng.random(10) * 1e-300  # full-precision values must round-trip exactly
        if instance == "c":
            # Starts late and has a 1 h hole: absent points at the start and inside the range.
            values = values[times >= HISTORY_START + pd.Timedelta(hours=2)]
            values = values[(values.index < HISTORY_START + pd.Timedelta(hours=20))
                            | (values.index >= HISTORY_START + pd.Timedelta(hours=21))]
        series.append(({"__name__": METRIC, "instance": instance, "job": "vllm"}, values))
    return History(series)


def write_openmetrics(history: History, path: Path) -> None:
    lines = [f"# TYPE {METRIC} gauge"]
    for labels, samples in history.series:
        selector = METRIC + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__") + "}"
        seconds = samples.index.as_unit("s").asi8
        lines += [f"{selector} {_openmetrics_value(v)} {t}" for t, v in zip(seconds, samples.to_numpy())]
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n")


def _openmetrics_value(value: float) -> str:
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@pytest.fixture(scope="session")
def history() -> History:
    return generate_history()


@pytest.fixture(scope="session")
def history_blocks(history, tmp_path_factory) -> Path:
    require_binary(processes.PROMTOOL)
    directory = tmp_path_factory.mktemp("history")
    write_openmetrics(history, directory / "history.om")
    processes.backfill(directory / "history.om", directory / "blocks")
    return directory / "blocks"


@pytest.fixture(scope="session")
def history_prometheus(history_blocks, tmp_path_factory) -> Iterator[processes.RunningPrometheus]:
    """A plain Prometheus over the generated history (a copy of the blocks: Prometheus owns its data dir)."""
    require_binary(processes.PROMETHEUS)
    data_dir = tmp_path_factory.mktemp("history-prometheus") / "data"
    subprocess.run(["cp", "-r", str(history_blocks), str(data_dir)], check=True)
    with processes.running_prometheus(data_dir) as prometheus:
        yield prometheus


# -- queries against the real Prometheus ----------------------------------------------------------------------

@pytest.mark.integration
def test_long_range_is_split_and_matches_the_generated_samples(history, history_prometheus):
    step = SCRAPE
    grid = evaluation_grid(HISTORY_START, HISTORY_END, step)
    assert len(grid) > MAX_POINTS_PER_QUERY
    # Unsplit, Prometheus refuses the range: the split is what makes the query possible.
    refused = requests.get(f"{history_prometheus.url}/api/v1/query_range", timeout=30, params={
        "query": METRIC, "start": HISTORY_START.timestamp(), "end": HISTORY_END.timestamp(), "step": "15s"})
    assert refused.status_code == 400 and "11,000 points" in refused.json()["error"]

    with PrometheusSource(history_prometheus.url) as source:
        frame = source.query_range(METRIC, HISTORY_START, HISTORY_END, step)

    assert frame.values.index.equals(grid)
    pd.testing.assert_frame_equal(frame.values, history.expected_frame(HISTORY_START, HISTORY_END, step))
    expected_labels = pd.DataFrame([labels for labels, _ in history.series])
    pd.testing.assert_frame_equal(frame.labels, expected_labels, check_dtype=False)
    assert frame.series_labels(2) == {"__name__": METRIC, "instance": "c", "job": "vllm"}


@pytest.mark.integration
def test_many_seams_off_the_sample_grid_lose_and_repeat_nothing(history, history_prometheus):
    # A start between samples and a step that is not a multiple of the scrape interval: values come from the
    # lookback, and a chunk size that is not a round number puts seams everywhere.
    start, end, step = HISTORY_START + pd.Timedelta(seconds=7), HISTORY_END, pd.Timedelta(seconds=40)
    with PrometheusSource(history_prometheus.url, max_points_per_query=997) as source:
        many_chunks = source.query_range(METRIC, start, end, step)
    with PrometheusSource(history_prometheus.url) as source:
        one_chunk = source.query_range(METRIC, start, end, step)
    expected = history.expected_frame(start, end, step)
    pd.testing.assert_frame_equal(many_chunks.values, expected)
    pd.testing.assert_frame_equal(one_chunk.values, expected)
    pd.testing.assert_frame_equal(many_chunks.labels, one_chunk.labels)


@pytest.mark.integration
def test_a_series_present_in_only_some_chunks_keeps_one_column(history, history_prometheus):
    # Instance c is absent for the first 2 h: with 1 h chunks it first shows up in the third chunk.
    start, end, step = HISTORY_START, HISTORY_START + pd.Timedelta(hours=4), pd.Timedelta(minutes=1)
    with PrometheusSource(history_prometheus.url, max_points_per_query=60) as source:
        frame = source.query_range(f"sum by (instance) ({METRIC})", start, end, step)
    assert list(frame.labels["instance"]) == ["a", "b", "c"]
    c_column = frame.values[2]
    assert c_column[: start + pd.Timedelta(hours=2) - step].isna().all()
    assert c_column[start + pd.Timedelta(hours=2):].notna().all()


@pytest.mark.integration
def test_bad_query_names_the_parse_error_the_url_and_the_query(history_prometheus):
    source = PrometheusSource(history_prometheus.url)
    with pytest.raises(SourceError) as error:
        source.query_range(f"rate({METRIC}[5m]", HISTORY_START, HISTORY_END, pd.Timedelta(minutes=1))
    message = str(error.value)
    assert history_prometheus.url in message and f"rate({METRIC}[5m]" in message
    assert "bad_data" in message and "parse error" in message


@pytest.mark.integration
def test_wrong_path_prefix_says_check_the_prefix(history_prometheus):
    source = PrometheusSource(history_prometheus.url + "/prometheus")
    with pytest.raises(SourceError, match=r"HTTP 404.*path prefix"):
        source.query_range(METRIC, HISTORY_START, HISTORY_END, pd.Timedelta(hours=1))


@pytest.mark.integration
def test_label_values_and_series_exists(history_prometheus):
    source = PrometheusSource(history_prometheus.url)
    assert source.label_values("instance", match=METRIC) == ["a", "b", "c"]
    assert source.series_exists(f'{METRIC}{{instance="c"}}', HISTORY_START, HISTORY_END)
    assert not source.series_exists(f'{METRIC}{{instance="zzz"}}', HISTORY_START, HISTORY_END)
    with pytest.raises(SourceError, match="bad_data"):
        source.series_exists(f"{METRIC}{{instance=", HISTORY_START, HISTORY_END)


def test_unreachable_port_says_connection_refused():
    url = f"http://127.0.0.1:{processes.free_port()}"
    source = PrometheusSource(url, retries=2, backoff=0.01)
    with pytest.raises(SourceError) as error:
        source.query_range("up", HISTORY_START, HISTORY_END, pd.Timedelta(hours=1))
    assert str(error.value) == f"cannot reach Prometheus at {url}: connection refused, after 3 attempts (query up)"


# -- a secured Prometheus: TLS, basic auth, a small sample limit ----------------------------------------------

@dataclass(frozen=True)
class SecuredPrometheus:
    url: str
    ca_file: Path
    user: str
    password: str
    password_file: Path


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert, "-days", "2", "-subj", "/CN=rules-engine test CA")
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "2", "-extfile", directory / "san.ext")
    return ca_cert, cert, key


@pytest.fixture(scope="module")
def secured_prometheus(history_blocks, tmp_path_factory) -> Iterator[SecuredPrometheus]:
    require_binary(processes.PROMETHEUS)
    directory = tmp_path_factory.mktemp("secured")
    ca_cert, cert, key = _make_certificates(directory)
    password = "s3cret-pass"
    (directory / "password").write_text(password + "\n")
    web_config = {
        "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
        # Cost 4 keeps each request's hash check fast; the strength of a test password does not matter.
        "basic_auth_users": {"alice": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()},
    }
    data_dir = directory / "data"
    subprocess.run(["cp", "-r", str(history_blocks), str(data_dir)], check=True)
    with processes.running_prometheus(data_dir, web_config=web_config,
                                      extra_args=["--query.max-samples=5000"]) as prometheus:
        yield SecuredPrometheus(prometheus.url, ca_cert, "alice", password, directory / "password")


ONE_HOUR = (HISTORY_START + pd.Timedelta(hours=3), HISTORY_START + pd.Timedelta(hours=4), pd.Timedelta(minutes=1))


@pytest.mark.integration
def test_tls_and_basic_auth_with_the_right_credentials(secured_prometheus):
    assert secured_prometheus.url.startswith("https://")
    source = PrometheusSource(secured_prometheus.url, basic_auth=(secured_prometheus.user, secured_prometheus.password),
                              ca_file=secured_prometheus.ca_file)
    frame = source.query_range(METRIC, *ONE_HOUR)
    assert frame.series_count == 3 and frame.values.notna().all().all()


@pytest.mark.integration
def test_wrong_password_is_said_to_be_an_auth_failure(secured_prometheus):
    source = PrometheusSource(secured_prometheus.url, basic_auth=("alice", "wrong"), ca_file=secured_prometheus.ca_file)
    with pytest.raises(SourceError) as error:
        source.query_range(METRIC, *ONE_HOUR)
    assert "refused the credentials (HTTP 401" in str(error.value)
    assert secured_prometheus.url in str(error.value)


@pytest.mark.integration
def test_untrusted_certificate_points_to_ca_file(secured_prometheus):
    source = PrometheusSource(secured_prometheus.url, basic_auth=("alice", secured_prometheus.password), retries=0)
    with pytest.raises(SourceError, match=r"TLS certificate of Prometheus at https://127\.0\.0\.1:\d+ not trusted.*--ca-file"):
        source.query_range(METRIC, *ONE_HOUR)


@pytest.mark.integration
def test_insecure_skip_verify_accepts_the_unknown_certificate(secured_prometheus):
    source = PrometheusSource(secured_prometheus.url, basic_auth=("alice", secured_prometheus.password),
                              insecure_skip_verify=True)
    assert source.query_range(METRIC, *ONE_HOUR).series_count == 3


@pytest.mark.integration
def test_too_many_samples_is_reported_with_prometheus_own_words(secured_prometheus):
    source = PrometheusSource(secured_prometheus.url, basic_auth=("alice", secured_prometheus.password),
                              ca_file=secured_prometheus.ca_file)
    with pytest.raises(SourceError) as error:
        source.query_range(METRIC, HISTORY_START, HISTORY_START + pd.Timedelta(days=1), SCRAPE)
    assert "query processing would load too many samples into memory" in str(error.value)
    assert "HTTP 422" in str(error.value) and "execution" in str(error.value)


@pytest.mark.integration
def test_cli_options_build_a_working_source(secured_prometheus):
    @click.command()
    @prometheus_options
    def count(**options):
        try:
            source = source_from_options(**options)
        except SourceError as error:
            raise click.UsageError(str(error))
        click.echo(source.query_range(METRIC, *ONE_HOUR).series_count)

    runner = CliRunner()
    result = runner.invoke(count, ["--prometheus", secured_prometheus.url, "--ca-file", str(secured_prometheus.ca_file),
                                   "--basic-auth", f"alice:{secured_prometheus.password_file}", "--timeout", "10",
                                   "--header", "X-Scope-OrgID: tenant-1"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "3"

    bad_header = runner.invoke(count, ["--prometheus", secured_prometheus.url, "--header", "no-colon"])
    assert bad_header.exit_code == 2 and "--header" in bad_header.output and "NAME:VALUE" in bad_header.output
    missing_file = runner.invoke(count, ["--prometheus", secured_prometheus.url, "--basic-auth", "alice:/nonexistent"])
    assert missing_file.exit_code == 2 and "/nonexistent" in missing_file.output


# -- retries and odd answers, from a local HTTP server --------------------------------------------------------

@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeServer:
    url: str
    requests: list[SeenRequest] = field(default_factory=list)


Answer = Callable[[int, SeenRequest], "tuple[int, str, bytes]"]


@contextlib.contextmanager
def fake_prometheus(answer: Answer, prefix: str = "") -> Iterator[FakeServer]:
    """An HTTP server on 127.0.0.1 that records every request and answers `answer(attempt_number, request)`."""
    server_state = FakeServer(url="")
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self._answer()

        def do_GET(self) -> None:
            self._answer()

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen = SeenRequest(self.path, dict(self.headers), body)
            with lock:
                server_state.requests.append(seen)
                attempt = len(server_state.requests)
            status, content_type, content = answer(attempt, seen)
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, *args: object) -> None:
            pass

    with processes.serving(Handler) as url:
        server_state.url = url + prefix
        yield server_state


def _json_error(error_type: str, error: str) -> bytes:
    return json.dumps({"status": "error", "errorType": error_type, "error": error}).encode()


@pytest.mark.integration
def test_503_twice_then_success_is_retried_through_a_path_prefix(history, history_prometheus, tmp_path):
    """Like Mimir behind /prometheus with a tenant header: two 503s, then the request reaches the real Prometheus."""
    def answer(attempt: int, seen: SeenRequest) -> tuple[int, str, bytes]:
        if attempt <= 2:
            return 503, "text/plain", b"upstream connect error"
        assert seen.path.startswith("/prometheus/api/v1/query_range")
        upstream = requests.post(history_prometheus.url + seen.path.removeprefix("/prometheus"), data=seen.body,
                                 headers={"Content-Type": seen.headers["Content-Type"]}, timeout=30)
        return upstream.status_code, "application/json", upstream.content

    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    start, end, step = HISTORY_START, HISTORY_START + pd.Timedelta(hours=6), pd.Timedelta(minutes=1)
    with fake_prometheus(answer, prefix="/prometheus") as server:
        source = PrometheusSource(server.url, headers={"X-Scope-OrgID": "tenant-1"}, bearer_token_file=token_file,
                                  retries=3, backoff=0.01)
        frame = source.query_range(METRIC, start, end, step)
    assert len(server.requests) == 3
    assert all(seen.headers["X-Scope-OrgID"] == "tenant-1" for seen in server.requests)
    assert all(seen.headers["Authorization"] == "Bearer tok-123" for seen in server.requests)
    # The query travels as a form body, not in the URL, so long queries do not hit URL length limits.
    assert server.requests[0].path == "/prometheus/api/v1/query_range"
    assert b"query=llm_queue_depth" in server.requests[0].body
    assert b"timeout=60s" in server.requests[0].body  # the server gives up when the client would
    pd.testing.assert_frame_equal(frame.values, history.expected_frame(start, end, step))


def test_a_4xx_answer_is_not_retried():
    with fake_prometheus(lambda attempt, seen: (400, "application/json",
                                                _json_error("bad_data", "invalid parameter \"query\""))) as server:
        source = PrometheusSource(server.url, retries=3, backoff=0.01)
        with pytest.raises(SourceError) as error:
            source.query_range("up", *ONE_HOUR)
    assert len(server.requests) == 1
    assert str(error.value) == (f"Prometheus at {server.url} rejected query up (HTTP 400): "
                                f"bad_data: invalid parameter \"query\"")


def test_429_is_retried_then_reported_with_the_attempt_count():
    with fake_prometheus(lambda attempt, seen: (429, "text/plain", b"rate limited")) as server:
        source = PrometheusSource(server.url, retries=2, backoff=0.01)
        with pytest.raises(SourceError) as error:
            source.query_range("up", *ONE_HOUR)
    assert len(server.requests) == 3
    assert "HTTP 429 Too Many Requests after 3 attempts" in str(error.value)
    assert "rate limited" in str(error.value)


def test_a_slow_server_times_out_with_a_hint():
    release = threading.Event()

    def answer(attempt: int, seen: SeenRequest) -> tuple[int, str, bytes]:
        release.wait(timeout=5)
        return 200, "application/json", b"{}"

    with fake_prometheus(answer) as server:
        source = PrometheusSource(server.url, timeout=0.3, retries=1, backoff=0.01)
        try:
            with pytest.raises(SourceError) as error:
                source.query_range("up", *ONE_HOUR)
        finally:
            release.set()
    assert len(server.requests) == 2
    assert f"no answer from Prometheus at {server.url} within 0.3s, after 2 attempts for query up" in str(error.value)


def test_an_html_login_page_is_not_taken_for_an_answer():
    page = b"<!DOCTYPE html><html><head><title>Sign in - Corp SSO</title></head><body><form></form></body></html>"
    with fake_prometheus(lambda attempt, seen: (200, "text/html", page)) as server:
        source = PrometheusSource(server.url)
        with pytest.raises(SourceError) as error:
            source.query_range("up", *ONE_HOUR)
    message = str(error.value)
    assert "not JSON" in message and "Sign in - Corp SSO" in message and server.url in message


def test_403_is_said_to_be_access_denied():
    with fake_prometheus(lambda attempt, seen: (403, "text/plain", b"tenant not allowed")) as server:
        with pytest.raises(SourceError, match="denied access \\(HTTP 403 Forbidden\\).*tenant not allowed"):
            PrometheusSource(server.url).query_range("up", *ONE_HOUR)


# -- pure decoding and configuration --------------------------------------------------------------------------

def _matrix_body(result: list[dict], **dumps: object) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}, **dumps).encode()


def test_decode_takes_the_same_frame_from_compact_and_spaced_json():
    result = [{"metric": {"a": '"values":[[ tricky'}, "values": [[10, "1.5"], [20, "NaN"], [30, "+Inf"]]},
              {"metric": {"a": "x"}, "values": [[20, "-Inf"], [40, "2e-308"]]}]
    grid = evaluation_grid(pd.Timestamp(10, unit="s", tz="UTC"), pd.Timestamp(40, unit="s", tz="UTC"),
                           pd.Timedelta(seconds=10))
    compact = frame_from_chunks("q", [decode_matrix(_matrix_body(result, separators=(",", ":")), SourceError)], grid)
    spaced = frame_from_chunks("q", [decode_matrix(_matrix_body(result, indent=1), SourceError)], grid)
    expected = pd.DataFrame({0: [1.5, np.nan, np.inf, np.nan], 1: [np.nan, -np.inf, np.nan, 2e-308]}, index=grid)
    expected.columns = pd.RangeIndex(2)
    for frame in (compact, spaced):
        pd.testing.assert_frame_equal(frame.values, expected)
        assert frame.series_labels(0) == {"a": '"values":[[ tricky'}


def test_config_mapping_rejects_unknown_settings_and_reads_password_files(tmp_path):
    with pytest.raises(SourceError, match="unknown Prometheus setting\\(s\\) passwd"):
        PrometheusSource.from_config({"url": "http://localhost:9090", "passwd": "x"})
    (tmp_path / "pw").write_text("hunter2\n")
    source = PrometheusSource.from_config({"url": "http://bob:pw@localhost:9090/prometheus",
                                           "basic_auth": {"username": "u", "password_file": str(tmp_path / "pw")}})
    assert source.url == "http://localhost:9090/prometheus"  # credentials never reach messages or snapshots
    with fake_prometheus(lambda attempt, seen: (200, "application/json", b'{"status":"success","data":[]}')) as server:
        PrometheusSource.from_config({"url": server.url, "max_points_per_query": 100, "basic_auth": {
            "username": "u", "password_file": str(tmp_path / "pw")}}).label_values("instance")
    assert server.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"u:hunter2").decode()
    with pytest.raises(SourceError, match="cannot read bearer token file /nonexistent"):
        PrometheusSource("http://localhost:9090", bearer_token_file="/nonexistent")
    with pytest.raises(SourceError, match="must look like http"):
        PrometheusSource("localhost:9090")


# -- instant queries (playbook verify steps, baselines, current settings) ---------------------------------------

def _instant_body(result_type: str, result: object) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}}).encode()


def test_instant_query_sends_the_tenant_header_and_basic_auth():
    vector = [{"metric": {"instance": "a"}, "value": [1.0, "0.25"]},
              {"metric": {"instance": "b"}, "value": [1.0, "NaN"]}]
    with fake_prometheus(lambda attempt, seen: (200, "application/json", _instant_body("vector", vector)),
                         prefix="/prometheus") as server:
        client = PrometheusClient.from_config({"url": server.url, "headers": {"X-Scope-OrgID": "tenant-1"},
                                               "basic_auth": ["alice", "pw"]})
        series = client.instant_query("up", time=pd.Timestamp("2026-10-01T00:00:00Z"))
    seen = server.requests[0]
    assert seen.path == "/prometheus/api/v1/query"
    assert seen.headers["X-Scope-OrgID"] == "tenant-1"
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()
    assert b"query=up" in seen.body and b"time=1790812800.000" in seen.body
    assert series[0] == ({"instance": "a"}, 0.25) and np.isnan(series[1][1])  # NaN is the caller's to judge


def test_instant_query_reads_a_scalar_and_refuses_a_range_vector_by_name():
    answers = iter([_instant_body("scalar", [1.0, "2"]), _instant_body("matrix", [])])
    with fake_prometheus(lambda attempt, seen: (200, "application/json", next(answers))) as server:
        client = PrometheusClient(server.url)
        assert client.instant_query("scalar(up)") == [({}, 2.0)]
        with pytest.raises(SourceError) as error:
            client.instant_query("up[5m]")
    assert str(error.value) == (f"Prometheus at {server.url} gave an unusable answer to query up[5m]: "
                                f"expected an instant vector or a scalar, got matrix")


def test_instant_query_errors_read_like_range_query_errors():
    with fake_prometheus(lambda attempt, seen: (400, "application/json",
                                                _json_error("bad_data", "parse error"))) as server:
        with pytest.raises(SourceError, match=r"rejected query up\{ \(HTTP 400\): bad_data: parse error"):
            PrometheusClient(server.url).instant_query("up{")


PARTIAL = "PromQL info: store eu-1 did not answer, partial data"


def _answer_with_a_warning(attempt: int, seen: SeenRequest) -> tuple[int, str, bytes]:
    """Every chunk answers one series of 1.0s at its own grid points, and warns that the data is partial."""
    form = dict(pair.split("=", 1) for pair in seen.body.decode().split("&"))
    start, end, step = (float(form[name]) for name in ("start", "end", "step"))
    points = [[start + i * step, "1"] for i in range(int(round((end - start) / step)) + 1)]
    body = {"status": "success", "warnings": [PARTIAL],
            "data": {"resultType": "matrix", "result": [{"metric": {"instance": "a"}, "values": points}]}}
    return 200, "application/json", json.dumps(body).encode()


def test_prometheus_warnings_are_carried_once_per_query_into_the_report_and_export(caplog):
    import rules_engine
    from rules_engine.report.export import backtest_record
    from rules_engine.report.text import render_text
    from rules_engine.spec import load_ruleset

    ruleset = load_ruleset([Path(__file__).resolve().parents[1] / "rules" / "vllm.yaml"])
    start, end = pd.Timestamp("2026-01-01T00:00:00Z"), pd.Timestamp("2026-01-01T06:00:00Z")
    with fake_prometheus(_answer_with_a_warning) as server, PrometheusSource(server.url, max_points_per_query=20) as source:
        frame = source.query_range("up", start, start + pd.Timedelta(minutes=30), pd.Timedelta(minutes=1))
        assert len(server.requests) == 2 and frame.warnings == (PARTIAL,)
        result = rules_engine.backtest(ruleset, source, start, end, "1m", rules=["VLLMQueueBuildup"],
                                       reader="query")  # the fake answers the query API only
    assert not caplog.records  # carried, not logged once per chunk
    [rule] = backtest_record(result, server.url)["rules"]
    assert rule["warnings"] == [PARTIAL] and rule["error"] is None
    report = render_text(result, server.url)
    assert "partial data: Prometheus warned about 1 answer(s)" in report
    assert report.count(PARTIAL) == 1 and "(rules: VLLMQueueBuildup)" in report
