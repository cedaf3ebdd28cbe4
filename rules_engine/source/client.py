"""One HTTP client for every call the engine makes to a Prometheus-compatible API (Prometheus, Thanos, Mimir,
VictoriaMetrics).

Range queries of backtests (`PrometheusSource`), instant queries of playbook verify steps, baselines and current
settings, label values and series lookups all go through `PrometheusClient`, so every caller reaches the same
servers (path prefix, bearer token or basic auth, CA file, tenant header) and reports failures in the same words
(`rules_engine.source.failures`). It is a plain requests session we own: form-encoded POST (long queries never hit
URL length limits), the raw answer body for the range decoder, urllib3's retry schedule.
"""
from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote, urlsplit

import requests
import urllib3
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util.retry import Retry

from rules_engine.source.base import SourceError
from rules_engine.source.failures import (RETRY_STATUSES, broken_answer, status_error, text_excerpt,
                                          transport_error)
from rules_engine.urls import redacted_url

log = logging.getLogger(__name__)


class PrometheusClient:
    """Requests to `url` + /api/v1/..., with the connection settings every caller shares.

    `url` may carry a path prefix (Mimir: http://mimir/prometheus, a Thanos or VictoriaMetrics path, a reverse
    proxy's prefix). `headers` are sent with every request (Mimir's tenant: {"X-Scope-OrgID": "tenant"}).
    Failed requests are retried `retries` times on connection errors, timeouts, 429 and 5xx, waiting 0, 2×backoff,
    4×backoff, ... seconds (urllib3's schedule); a 4xx answer is final. Every failure is a SourceError whose
    message names the server (without credentials) and what was asked.
    """

    def __init__(self, url: str, *, bearer_token: str | None = None, bearer_token_file: str | Path | None = None,
                 basic_auth: tuple[str, str] | None = None, ca_file: str | Path | None = None,
                 insecure_skip_verify: bool = False, headers: Mapping[str, str] | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5) -> None:
        try:
            parts = urlsplit(url)
        except ValueError as error:  # urllib refuses some text outright, e.g. an unclosed IPv6 bracket
            raise SourceError(f"Prometheus URL {redacted_url(url)!r} is not a URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SourceError(f"Prometheus URL must look like http(s)://host[:port][/prefix], got {redacted_url(url)!r}")
        if bearer_token is not None and bearer_token_file is not None:
            raise SourceError("give a bearer token or a bearer token file, not both")
        if timeout <= 0:
            raise SourceError(f"timeout must be positive, got {timeout}")
        if retries < 0 or backoff < 0:
            raise SourceError(f"retries and backoff must not be negative, got {retries} and {backoff}")
        self._base = url.rstrip("/")  # may hold user:password, which requests sends as basic auth
        self.url = redacted_url(self._base)
        self.timeout = float(timeout)
        self.retries = int(retries)

        session = requests.Session()
        session.headers.update(headers or {})
        if bearer_token_file is not None:
            bearer_token = read_secret(bearer_token_file, "bearer token file")
        if bearer_token:
            session.headers["Authorization"] = f"Bearer {bearer_token}"
        if basic_auth is not None:
            session.auth = tuple(basic_auth)
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
                      allowed_methods=frozenset({"GET", "POST"}),  # every call here is read-only, POST included
                      raise_on_status=False,  # keep the last answer: its body says what went wrong
                      respect_retry_after_header=False)  # a proxy's Retry-After could stall a backtest for hours
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session

    @classmethod
    def from_config(cls, config: "Mapping[str, Any] | PrometheusSettings") -> "PrometheusClient":
        """Build from a mapping of the constructor's keyword names (`url` required), e.g. a config file's section.

        `basic_auth` may be [user, password] or {username, password | password_file}; `headers` a mapping.
        """
        settings = config if isinstance(config, PrometheusSettings) else parse_settings(config, PrometheusSettings)
        return cls(settings.url, **settings.connection())

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "PrometheusClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r})"

    # -- the API calls -----------------------------------------------------------------------------------------

    def post(self, path: str, form: Mapping[str, str], what: str) -> bytes:
        """POST `form` to `url` + `path` and return the body of a 200 answer undecoded (the range decoder parses
        it without building Python objects per sample). `what` names the request in error messages."""
        return self._request("POST", path, what, data=form)

    def post_bytes(self, path: str, body: bytes, headers: Mapping[str, str], what: str) -> bytes:
        """POST an encoded body (remote read's snappy protobuf) with its own content headers; the answer undecoded."""
        return self._request("POST", path, what, data=body, headers=dict(headers))

    @contextlib.contextmanager
    def post_streamed(self, path: str, body: bytes, headers: Mapping[str, str], what: str
                      ) -> Iterator[tuple[str, Iterator[bytes]]]:
        """POST an encoded body and read a 200 answer as it arrives: (its Content-Type, its body in blocks), for
        answers decoded while they stream (remote read's STREAMED_XOR_CHUNKS). The request is retried like any
        other; a failure once the body flows is not (blocks already handed on), and is a SourceError too."""
        response = self._send("POST", path, what, stream=True, data=body, headers=dict(headers))
        try:
            yield response.headers.get("Content-Type", ""), self._blocks(response, what)
        finally:
            response.close()

    def _blocks(self, response: requests.Response, what: str) -> Iterator[bytes]:
        try:
            yield from response.iter_content(chunk_size=1 << 16)
        except requests.RequestException as exc:
            raise SourceError(broken_answer(exc, self.url, self.timeout, what)) from exc

    def instant_query(self, expr: str, time: datetime | float | None = None) -> list[tuple[dict[str, str], float]]:
        """(labels, value) per series of an instant vector at `time` (default: now); a scalar comes back as one
        series without labels. Values are as Prometheus answered them, NaN included."""
        what = f"query {expr}"
        form = {"query": expr, "timeout": f"{self.timeout:g}s"}  # the server stops when the client stops waiting
        if time is not None:
            form["time"] = f"{time.timestamp() if isinstance(time, datetime) else float(time):.3f}"
        error = self.unusable_answer(what)
        data = answer_data(json_answer(self.post("/api/v1/query", form, what), error), error)
        kind = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        try:
            if kind == "vector":
                return [(item["metric"], float(item["value"][1])) for item in data["result"]]
            if kind == "scalar":
                return [({}, float(data["result"][1]))]
        except KeyError as missing:  # a native histogram sample has "histogram" where a float has "value"
            raise error(f"a sample without {missing} (a native histogram? query a float series)") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise error(f"malformed {kind} ({exc})") from None
        raise error(f"expected an instant vector or a scalar, got {kind}")

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Values of `label` over all series, or over series selected by `match` (a series selector)."""
        what = f"values of label {label}" + (f" for {match}" if match else "")
        params = {"match[]": match} if match else None
        error = self.unusable_answer(what)
        body = self._request("GET", f"/api/v1/label/{quote(label, safe='')}/values", what, params=params)
        values = answer_data(json_answer(body, error), error)
        if not isinstance(values, list):
            raise error(f"expected a list of values, got {type(values).__name__}")
        return [str(value) for value in values]

    def series_exists(self, match: str, start: datetime | None = None, end: datetime | None = None) -> bool:
        """Whether any series matches the selector `match` between start and end (default: the last hour)."""
        what = f"series {match}"
        end = end if end is not None else datetime.now(timezone.utc)
        start = start if start is not None else end - timedelta(hours=1)
        form = {"match[]": match, "start": f"{start.timestamp():.3f}", "end": f"{end.timestamp():.3f}"}
        error = self.unusable_answer(what)
        return bool(answer_data(json_answer(self.post("/api/v1/series", form, what), error), error))

    def unusable_answer(self, what: str) -> Callable[[str], SourceError]:
        """The error for a 200 answer that cannot be used (not JSON, not Prometheus' shape, an error status)."""
        return lambda reason: SourceError(f"Prometheus at {self.url} gave an unusable answer to {what}: {reason}")

    def _request(self, method: str, path: str, what: str, **arguments: Any) -> bytes:
        return self._send(method, path, what, **arguments).content

    def _send(self, method: str, path: str, what: str, **arguments: Any) -> requests.Response:
        try:
            # verify passed explicitly: otherwise requests lets REQUESTS_CA_BUNDLE override the session's.
            response = self._session.request(method, self._base + path, timeout=self.timeout,
                                             verify=self._session.verify, **arguments)
        except requests.RequestException as exc:
            raise SourceError(transport_error(exc, self.url, self.timeout, self.retries, what)) from exc
        if response.status_code != 200:
            raise SourceError(status_error(response.status_code, response.reason, response.content,
                                           response.headers.get("Content-Type", ""), self.url, self.retries, what))
        return response


# -- the API's answer envelope ----------------------------------------------------------------------------------

def json_answer(body: bytes, error: Callable[[str], SourceError]) -> Any:
    """The body as JSON; anything else is most often a login page or proxy answering in Prometheus' place."""
    try:
        return json.loads(body)
    except ValueError:
        raise error(f"not JSON ({text_excerpt(body, '')}): a login page or proxy in front of Prometheus? "
                    f"Check the URL") from None


def answer_data(answer: Any, error: Callable[[str], SourceError]) -> Any:
    """The `data` of a successful API answer; its warnings are logged (a range source carries them instead)."""
    data, warnings = answer_parts(answer, error)
    for warning in warnings:
        log.warning("Prometheus warning: %s", warning)
    return data


def answer_parts(answer: Any, error: Callable[[str], SourceError]) -> tuple[Any, tuple[str, ...]]:
    """The `data` of a successful API answer and its `warnings`: Prometheus answers, but says the data is partial
    (a store or shard did not answer, a limit was hit)."""
    if not isinstance(answer, dict) or "status" not in answer:
        raise error("JSON without the Prometheus API's status/data fields: is the URL a Prometheus API?")
    if answer["status"] != "success":
        raise error(f"{answer.get('errorType', 'error')}: {answer.get('error', '(no message)')}")
    return answer.get("data"), tuple(str(warning) for warning in answer.get("warnings") or ())


# -- settings as a mapping (config files) -----------------------------------------------------------------------

class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    username: str
    password: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one_password(self) -> "BasicAuth":
        if (self.password is None) == (self.password_file is None):
            raise ValueError("basic_auth needs username and one of password / password_file")
        return self

    def pair(self) -> tuple[str, str]:
        password = self.password
        if password is None:
            password = read_secret(self.password_file, "basic auth password file")
        return self.username, password


class PrometheusSettings(BaseModel):
    """`PrometheusClient`'s keyword arguments as a mapping (a config file's `prometheus:` section).

    Only the shape is checked here; values are checked, and secret files read, when the client is built.
    An unset field (None) takes the constructor's default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str
    bearer_token: str | None = None
    bearer_token_file: str | None = None
    basic_auth: BasicAuth | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool | None = None
    headers: dict[str, str] | None = None  # e.g. {X-Scope-OrgID: tenant} for Mimir
    timeout: float | None = None
    retries: int | None = None
    backoff: float | None = None

    @field_validator("basic_auth", mode="before")
    @classmethod
    def _basic_auth_forms(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return {"username": value[0], "password": value[1]}
        if value is None or isinstance(value, (Mapping, BasicAuth)):
            return value
        raise ValueError("basic_auth must be [user, password] or {username, password | password_file}")

    def connection(self) -> dict[str, Any]:
        """The client's keyword arguments besides `url` (the password file of basic_auth is read here)."""
        arguments = {name: getattr(self, name) for name in PrometheusSettings.model_fields
                     if name != "url" and getattr(self, name) is not None}
        if self.basic_auth is not None:
            arguments["basic_auth"] = self.basic_auth.pair()
        return arguments


def parse_settings(config: Mapping[str, Any], model: type[PrometheusSettings]) -> PrometheusSettings:
    """Validate a settings mapping into `model`; problems become one SourceError naming each setting."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as error:
        problems = error.errors(include_url=False)
        unknown = [str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden"]
        messages = [f"Prometheus setting {'.'.join(str(part) for part in p['loc']) or '(mapping)'}: {p['msg']}"
                    for p in problems if p["type"] != "extra_forbidden"]
        if unknown:
            messages.insert(0, f"unknown Prometheus setting(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(model.model_fields))}")
        raise SourceError("; ".join(messages)) from None


def read_secret(path: str | Path, what: str) -> str:
    """A credential from a file (surrounding whitespace stripped); an unreadable or empty file is a SourceError."""
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise SourceError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not secret:
        raise SourceError(f"{what} {path} is empty")
    return secret
