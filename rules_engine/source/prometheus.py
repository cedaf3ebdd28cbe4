"""Range queries against Prometheus, or anything that speaks its HTTP API (Thanos, Mimir, VictoriaMetrics).

The connection (session, auth, headers, TLS verification, retries, timeout) is set up by prometheus-api-client's
`PrometheusConnect`. Range queries go through its requests session directly because the library lacks three
things the evaluator needs: form-encoded POST (its POST puts the query in the URL), the raw answer body (it decodes
with `json`, which costs ~1 s per million samples before any frame is built), and Prometheus' own error text.

Long ranges are split on the step grid so no request exceeds Prometheus' 11,000 points per series, and the chunks
are joined per label set into one `RangeFrame`; the chunks of one query are fetched `chunk_concurrency` at a time.
"""
from __future__ import annotations

import ast
import contextlib
import json
import logging
import re
import socket
import ssl
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util.retry import Retry

from rules_engine.source.base import SourceError
from rules_engine.source.frame import RangeFrame, evaluation_grid

log = logging.getLogger(__name__)

# Prometheus rejects a range query whose (end - start) / step exceeds 11,000 ("exceeded maximum resolution of
# 11,000 points per timeseries"); a chunk of 11,000 grid points spans 10,999 steps.
MAX_POINTS_PER_QUERY = 11_000

# Worth retrying: the server or something in front of it is overloaded or restarting. Any other 4xx is an answer.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

_NS_PER_MS = 1_000_000


class PrometheusSource:
    """A `Source` that evaluates range queries on a Prometheus-compatible HTTP API.

    `url` may carry a path prefix (Mimir: http://mimir/prometheus, a Thanos or VictoriaMetrics path, a reverse
    proxy's prefix); every request goes to `url` + /api/v1/... Only query_range, series and label values are called.
    Failed requests are retried `retries` times on connection errors, timeouts, 429 and 5xx, waiting 0, 2×backoff,
    4×backoff, ... seconds (urllib3's schedule); a 4xx answer is final.
    """

    def __init__(self, url: str, *, bearer_token: str | None = None, bearer_token_file: str | Path | None = None,
                 basic_auth: tuple[str, str] | None = None, ca_file: str | Path | None = None,
                 insecure_skip_verify: bool = False, headers: Mapping[str, str] | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 max_points_per_query: int = MAX_POINTS_PER_QUERY, chunk_concurrency: int = 2) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SourceError(f"Prometheus URL must look like http(s)://host[:port][/prefix], got {url!r}")
        if bearer_token is not None and bearer_token_file is not None:
            raise SourceError("give a bearer token or a bearer token file, not both")
        if not 1 <= max_points_per_query <= MAX_POINTS_PER_QUERY:
            raise SourceError(f"max_points_per_query must be 1..{MAX_POINTS_PER_QUERY}, got {max_points_per_query}")
        if timeout <= 0:
            raise SourceError(f"timeout must be positive, got {timeout}")
        if retries < 0 or backoff < 0:
            raise SourceError(f"retries and backoff must not be negative, got {retries} and {backoff}")
        self.url = _redacted(url.rstrip("/"))
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.max_points_per_query = max_points_per_query
        self.chunk_concurrency = max(1, int(chunk_concurrency))

        request_headers = dict(headers or {})
        if bearer_token_file is not None:
            bearer_token = read_secret(bearer_token_file, "bearer token file")
        if bearer_token:
            request_headers["Authorization"] = f"Bearer {bearer_token}"

        session = requests.Session()
        if insecure_skip_verify:
            session.verify = False
            # The user asked for it; a warning per request would only bury the report.
            urllib3.disable_warnings(InsecureRequestWarning)
        elif ca_file is not None:
            if not Path(ca_file).is_file():
                raise SourceError(f"CA file {ca_file} does not exist")
            session.verify = str(ca_file)
        retry = Retry(total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
                      other=0,  # TLS and other protocol errors do not heal by retrying
                      backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                      allowed_methods=frozenset({"GET", "POST"}),  # query_range is read-only, POST included
                      raise_on_status=False,  # keep the last answer: its body says what went wrong
                      respect_retry_after_header=False)  # a proxy's Retry-After could stall a backtest for hours
        self._client = PrometheusConnect(url=url.rstrip("/"), headers=request_headers, auth=basic_auth,
                                         retry=retry, session=session, timeout=self.timeout, method="POST")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PrometheusSource":
        """Build from a mapping of the constructor's keyword names (`url` required).

        `basic_auth` may be [user, password] or {username, password | password_file}; `headers` a mapping.
        """
        known = {"url", "bearer_token", "bearer_token_file", "basic_auth", "ca_file", "insecure_skip_verify",
                 "headers", "timeout", "retries", "backoff", "max_points_per_query", "chunk_concurrency"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise SourceError(f"unknown Prometheus setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not config.get("url"):
            raise SourceError("Prometheus setting 'url' is required")
        settings = {key: value for key, value in config.items() if value is not None}
        if "basic_auth" in settings:
            settings["basic_auth"] = _basic_auth_pair(settings["basic_auth"])
        return cls(settings.pop("url"), **settings)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "PrometheusSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusSource({self.url!r})"

    # -- the Source protocol -----------------------------------------------------------------------------------

    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        """Evaluate `query` on evaluation_grid(start, end, step), in as many requests as the 11,000-point limit needs."""
        if step < pd.Timedelta(milliseconds=1):
            raise SourceError(f"step must be at least 1ms, got {step} (query: {query})")
        grid = evaluation_grid(start, end, step)
        if len(grid) == 0:
            raise SourceError(f"range end {end} is before its start {start} (query: {query})")
        pieces = list(_split_grid(grid, self.max_points_per_query))

        def fetch(piece: pd.DatetimeIndex) -> MatrixChunk:
            return self._query_chunk(query, piece[0], piece[-1], step)

        if len(pieces) == 1:
            return frame_from_chunks(query, [fetch(pieces[0])], grid)
        # Prometheus evaluates one request on one core: the pieces of a long range go in parallel.
        with ThreadPoolExecutor(max_workers=min(len(pieces), self.chunk_concurrency)) as pool:
            return frame_from_chunks(query, list(pool.map(fetch, pieces)), grid)

    def _query_chunk(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> "MatrixChunk":
        form = {"query": query, "start": _api_seconds(start.value), "end": _api_seconds(end.value),
                "step": _api_seconds(step.value),
                # Lets the server stop the query when the client stops waiting.
                "timeout": f"{self.timeout:g}s"}
        body = self._post("/api/v1/query_range", form, query)
        return decode_matrix(body, lambda reason: self._answer_error(query, reason))

    # -- small lookups -----------------------------------------------------------------------------------------

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Values of `label` over all series, or over series selected by `match` (a series selector)."""
        params = {"match[]": match} if match else None
        what = f"values of label {label}" + (f" for {match}" if match else "")
        with self._library_errors(what):
            return list(self._client.get_label_values(label, params=params))

    def series_exists(self, match: str, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> bool:
        """Whether any series matches the selector `match` between start and end (default: the last hour)."""
        end = end if end is not None else pd.Timestamp.now(tz="UTC")
        start = start if start is not None else end - pd.Timedelta(hours=1)
        with self._library_errors(f"series {match}"):
            return bool(self._client.get_series(start.to_pydatetime(), end.to_pydatetime(),
                                                params={"match[]": match}))

    # -- HTTP and its failures ---------------------------------------------------------------------------------

    def _post(self, path: str, form: Mapping[str, str], query: str) -> bytes:
        client = self._client
        try:
            # verify passed explicitly like the library does: requests lets REQUESTS_CA_BUNDLE override the session's.
            response = client._session.request("POST", client.url + path, data=form, headers=client.headers,
                                               auth=client.auth, timeout=self.timeout,
                                               verify=client._session.verify)
        except requests.RequestException as exc:
            raise SourceError(self._transport_error(exc, f"query {query}")) from exc
        if response.status_code != 200:
            raise SourceError(self._status_error(response.status_code, response.reason, response.content,
                                                 response.headers.get("Content-Type", ""), f"query {query}"))
        return response.content

    @contextlib.contextmanager
    def _library_errors(self, what: str) -> Iterator[None]:
        """Turn what prometheus-api-client raises into a SourceError a person can act on."""
        try:
            yield
        except PrometheusApiClientException as exc:
            # The library keeps only "HTTP Status Code <n> (<body repr>)" in its message.
            match = re.match(r"HTTP Status Code (\d+) \((b'.*'|b\".*\")\)$", str(exc), re.S)
            if not match:
                raise SourceError(f"Prometheus at {self.url} failed on {what}: {exc}") from exc
            body = ast.literal_eval(match.group(2))
            raise SourceError(self._status_error(int(match.group(1)), "", body, "", what)) from exc
        except requests.JSONDecodeError as exc:
            raise SourceError(f"Prometheus at {self.url} answered {what} with something that is not JSON: a login "
                              f"page or proxy in front of it? Check the URL") from exc
        except requests.RequestException as exc:
            raise SourceError(self._transport_error(exc, what)) from exc

    def _transport_error(self, exc: BaseException, what: str) -> str:
        causes = list(_causes(exc))
        attempts = f", after {self.retries + 1} attempts" if self.retries else ""
        for cause in causes:
            if isinstance(cause, ssl.SSLCertVerificationError):
                return (f"TLS certificate of Prometheus at {self.url} not trusted: {cause.verify_message}; pass the "
                        f"CA that signed it with --ca-file, or --insecure-skip-verify ({what})")
        for cause in causes:
            if isinstance(cause, ssl.SSLError):
                reason = getattr(cause, "reason", None) or str(cause)
                return f"TLS handshake with Prometheus at {self.url} failed: {reason} ({what})"
        for cause in causes:
            if isinstance(cause, (requests.Timeout, socket.timeout, TimeoutError)) or "timed out" in str(cause):
                return (f"no answer from Prometheus at {self.url} within {self.timeout:g}s{attempts} for {what}; "
                        f"a slow query needs a larger --timeout or a shorter range / longer step")
        for cause in causes:
            if isinstance(cause, ConnectionRefusedError):
                return f"cannot reach Prometheus at {self.url}: connection refused{attempts} ({what})"
            if isinstance(cause, socket.gaierror):
                return f"cannot reach Prometheus at {self.url}: host {urlsplit(self.url).hostname} not found ({what})"
            if isinstance(cause, OSError) and cause.strerror:
                return f"cannot reach Prometheus at {self.url}: {cause.strerror.lower()}{attempts} ({what})"
        return f"cannot reach Prometheus at {self.url}: {_innermost_message(causes)}{attempts} ({what})"

    def _status_error(self, status: int, reason: str, body: bytes, content_type: str, what: str) -> str:
        if not reason:
            with contextlib.suppress(ValueError):
                reason = HTTPStatus(status).phrase
        answer = _error_answer(body)
        detail = f"{answer[0]}: {answer[1]}" if answer else _text_excerpt(body, content_type)
        if status in (401, 407):
            return (f"Prometheus at {self.url} refused the credentials (HTTP {status} {reason}): check the bearer "
                    f"token or basic auth ({what}){_suffix(detail)}")
        if status == 403:
            return f"Prometheus at {self.url} denied access (HTTP 403 Forbidden) ({what}){_suffix(detail)}"
        if status == 404:
            return (f"no Prometheus API at {self.url} (HTTP 404 for /api/v1/...): check the URL and its path "
                    f"prefix, e.g. http://mimir/prometheus ({what}){_suffix(detail)}")
        retried = f" after {self.retries + 1} attempts" if status in RETRY_STATUSES and self.retries else ""
        if answer:
            return f"Prometheus at {self.url} rejected {what} (HTTP {status}{retried}): {detail}"
        return f"Prometheus at {self.url} answered HTTP {status} {reason}{retried} to {what}{_suffix(detail)}"

    def _answer_error(self, query: str, reason: str) -> SourceError:
        return SourceError(f"Prometheus at {self.url} gave an unusable answer to query {query}: {reason}")


# -- splitting and encoding the range ---------------------------------------------------------------------------

def _split_grid(grid: pd.DatetimeIndex, points: int) -> Iterator[pd.DatetimeIndex]:
    """Consecutive runs of at most `points` grid points: every grid point in exactly one chunk."""
    for first in range(0, len(grid), points):
        yield grid[first:first + points]


def _api_seconds(nanoseconds: int) -> str:
    # Prometheus works in milliseconds; exact decimal text avoids float rounding moving a chunk off the grid.
    ms = nanoseconds // _NS_PER_MS
    sign = "-" if ms < 0 else ""
    return f"{sign}{abs(ms) // 1000}.{abs(ms) % 1000:03d}"


# -- decoding a matrix answer without per-sample Python work ----------------------------------------------------

@dataclass(frozen=True)
class MatrixChunk:
    """One range-query answer: series labels, and every sample as flat arrays (series i owns counts[i] samples)."""

    metrics: list[dict[str, str]]
    counts: np.ndarray  # int64, samples per series
    timestamps_ms: np.ndarray  # int64
    values: np.ndarray  # float64


_VALUES_KEY = b'"values":['


def decode_matrix(body: bytes, error: Callable[[str], SourceError]) -> MatrixChunk:
    """Decode a query_range answer body.

    `json.loads` would build two Python objects per sample (~1 s per million). Instead each series' "values" array
    is cut out of the body as text and the remaining skeleton (status, labels) is parsed as JSON; the cut-out arrays
    are parsed in one numpy call. The cut is safe: inside a JSON string a quote is escaped, so `"values":[` can
    only be the key itself. An answer laid out differently (whitespace, other key order inside pairs) takes the
    plain JSON path.
    """
    arrays, skeleton = _cut_values_arrays(body)
    try:
        answer = json.loads(skeleton)
    except ValueError:
        answer = None
    if answer is not None:
        result = _matrix_result(answer, error)
        if not arrays:  # nothing was cut out: the skeleton is the whole answer, already decoded
            return _chunk_from_lists(result, error)
        if len(arrays) == len(result) and all(series.get("values") == i for i, series in enumerate(result)):
            chunk = _chunk_from_arrays(result, arrays)
            if chunk is not None:
                return chunk
    return _chunk_from_lists(_matrix_result(_plain_json(body, error), error), error)


def _cut_values_arrays(body: bytes) -> tuple[list[bytes], bytes]:
    """The text inside each `"values":[...]`, and the body with each array replaced by its index."""
    skeleton: list[bytes] = []
    arrays: list[bytes] = []
    position = 0
    while (found := body.find(_VALUES_KEY, position)) >= 0:
        inner = found + len(_VALUES_KEY)
        if body.startswith(b"]", inner):
            close = inner  # an empty array
        else:
            close = body.find(b"]]", inner) + 1
            if close == 0:
                break
        skeleton += [body[position:found], b'"values":%d' % len(arrays)]
        arrays.append(body[inner:close])
        position = close + 1
    skeleton.append(body[position:])
    return arrays, b"".join(skeleton)


def _plain_json(body: bytes, error: Callable[[str], SourceError]) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise error(f"not JSON ({_text_excerpt(body, '')}): a login page or proxy in front of Prometheus? "
                    f"Check the URL") from None


def _matrix_result(answer: Any, error: Callable[[str], SourceError]) -> list[dict]:
    if not isinstance(answer, dict) or "status" not in answer:
        raise error("JSON without the Prometheus API's status/data fields: is the URL a Prometheus API?")
    if answer["status"] != "success":
        raise error(f"{answer.get('errorType', 'error')}: {answer.get('error', '(no message)')}")
    for warning in answer.get("warnings") or ():
        log.warning("Prometheus warning: %s", warning)
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        kind = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise error(f"expected a matrix result, got {kind}")
    for series in data["result"]:
        if "histograms" in series:
            raise error("native histogram samples, which are not evaluated; query a float series such as "
                        "histogram_quantile(...) or a classic _bucket series")
    return data["result"]


def _chunk_from_arrays(result: list[dict], arrays: list[bytes]) -> MatrixChunk | None:
    """Parse the cut-out "values" arrays: `[t,"v"],[t,"v"]` per series. None when the text is not of that form."""
    # A series of n pairs holds 2n - 1 commas; the `],[` separators between series arrays are added by the join.
    counts = np.fromiter(((array.count(b",") + 1) // 2 if array else 0 for array in arrays), dtype=np.int64,
                         count=len(arrays))
    text = b",".join(array for array in arrays if array).translate(None, b'[]"')
    if counts.sum() == 0:
        numbers = np.empty(0)
    else:
        try:
            with warnings.catch_warnings():
                # Text that is not all numbers stops the parse early with a warning; the count check catches it.
                warnings.simplefilter("ignore", DeprecationWarning)
                numbers = np.fromstring(text.decode("ascii"), sep=",")  # strtod: exact; reads NaN, +Inf, -Inf
        except (ValueError, UnicodeDecodeError):
            return None
    if numbers.size != 2 * counts.sum():
        return None
    pairs = numbers.reshape(-1, 2)
    return MatrixChunk(metrics=[series.get("metric", {}) for series in result], counts=counts,
                       timestamps_ms=np.rint(pairs[:, 0] * 1000).astype(np.int64), values=pairs[:, 1].copy())


def _chunk_from_lists(result: list[dict], error: Callable[[str], SourceError]) -> MatrixChunk:
    """The plain path for an answer already decoded by json (a layout the text cut does not recognise)."""
    try:
        counts = np.array([len(series["values"]) for series in result], dtype=np.int64)
        flat = [item for series in result for pair in series["values"] for item in pair]
        pairs = np.array(flat, dtype=object).reshape(-1, 2)
        timestamps = pairs[:, 0].astype(np.float64)
        values = pairs[:, 1].astype(str).astype(np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise error(f"malformed matrix samples ({exc})") from None
    return MatrixChunk(metrics=[series.get("metric", {}) for series in result], counts=counts,
                       timestamps_ms=np.rint(timestamps * 1000).astype(np.int64), values=values)


def frame_from_chunks(query: str, chunks: list[MatrixChunk], grid: pd.DatetimeIndex) -> RangeFrame:
    """Join chunk answers into one frame on `grid`: the same label set in two chunks is the same series.

    Series are ordered by label set the way Prometheus orders a range result, so a split query yields the same
    frame as an unsplit one.
    """
    column_of: dict[tuple, int] = {}
    metrics: list[dict[str, str]] = []
    chunk_columns = []
    for chunk in chunks:
        ids = np.empty(len(chunk.metrics), dtype=np.int64)
        for i, metric in enumerate(chunk.metrics):
            key = tuple(sorted(metric.items()))
            if key not in column_of:
                column_of[key] = len(metrics)
                metrics.append(metric)
            ids[i] = column_of[key]
        chunk_columns.append(np.repeat(ids, chunk.counts))
    order = sorted(range(len(metrics)), key=lambda i: tuple(sorted(metrics[i].items())))
    rank = np.empty(len(metrics), dtype=np.int64)
    rank[order] = np.arange(len(metrics))

    values = np.full((len(grid), len(metrics)), np.nan)
    if chunks and metrics:
        columns = rank[np.concatenate(chunk_columns)]
        timestamps_ns = np.concatenate([chunk.timestamps_ms for chunk in chunks]) * _NS_PER_MS
        samples = np.concatenate([chunk.values for chunk in chunks])
        start_ns = grid[0].value
        step_ns = grid[1].value - start_ns if len(grid) > 1 else 1
        rows = np.rint((timestamps_ns - start_ns) / step_ns).astype(np.int64)
        # Prometheus answers at whole milliseconds; a grid with a sub-millisecond start still matches within 1ms.
        on_grid = (np.abs(timestamps_ns - (start_ns + rows * step_ns)) < _NS_PER_MS) & (rows >= 0) & (rows < len(grid))
        values[rows[on_grid], columns[on_grid]] = samples[on_grid]
    labels = pd.DataFrame([metrics[i] for i in order]).fillna("")
    labels.index = pd.RangeIndex(len(metrics))
    frame = pd.DataFrame(values, index=grid, columns=pd.RangeIndex(len(metrics)))
    return RangeFrame(query=query, values=frame, labels=labels)


# -- error text -------------------------------------------------------------------------------------------------

def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests → urllib3 MaxRetryError.reason → OSError ...)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        pending += [item for item in linked if isinstance(item, BaseException)]


def _innermost_message(causes: list[BaseException]) -> str:
    message = str(causes[-1]) if causes else "unknown error"
    # urllib3 prefixes its messages with object reprs ("<urllib3.connection.HTTPConnection object at 0x..>: ").
    return re.sub(r"<[^>]+>: ", "", message)


def _error_answer(body: bytes) -> tuple[str, str] | None:
    """(errorType, error) from a Prometheus API error body, if the body is one."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("status") == "error":
        return str(answer.get("errorType", "error")), str(answer.get("error", "(no message)"))
    return None


def _text_excerpt(body: bytes, content_type: str, limit: int = 160) -> str:
    text = body[:4096].decode("utf-8", errors="replace")
    is_html = "html" in content_type.lower() or text.lstrip().lower().startswith(("<!doctype html", "<html"))
    if is_html:
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
        text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", text, flags=re.S | re.I)
        text = re.sub(r"<[^>]+>", " ", text)
        if title:
            text = title.group(1)
    text = " ".join(text.split())
    if not text:
        return "an empty body"
    kind = "an HTML page" if is_html else "text"
    return f"{kind}: {text[:limit]!r}" + ("..." if len(text) > limit else "")


def _suffix(detail: str) -> str:
    return f": {detail}" if detail and detail != "an empty body" else ""


# -- configuration ---------------------------------------------------------------------------------------------

def _redacted(url: str) -> str:
    """The URL without user:password, for messages and snapshot files."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_secret(path: str | Path, what: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise SourceError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not secret:
        raise SourceError(f"{what} {path} is empty")
    return secret


def _basic_auth_pair(value: Any) -> tuple[str, str]:
    if isinstance(value, Mapping):
        if "username" not in value or ("password" in value) == ("password_file" in value):
            raise SourceError("basic_auth needs username and one of password / password_file")
        password = value.get("password")
        if password is None:
            password = read_secret(value["password_file"], "basic auth password file")
        return str(value["username"]), str(password)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return str(value[0]), str(value[1])
    raise SourceError("basic_auth must be [user, password] or {username, password | password_file}")
