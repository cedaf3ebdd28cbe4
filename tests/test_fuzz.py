"""Fuzzing: the webhook and the operator API from their OpenAPI description (schemathesis, valid and invalid
requests), and property tests of the payload parser (hypothesis). The contract: never a 5xx, every refusal a
4xx with a message; whatever the webhook accepts, the intake then stores and processes without an error.
Bounded runs (a few hundred cases each), on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import collections
import json
import string

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from schemathesis import GenerationMode
from sqlalchemy import select

from rules_engine.playbooks import limits
from rules_engine.playbooks import store as st
from rules_engine.playbooks.payload import PayloadError, canonical_time, parse_payload
from rules_engine.server.app import create_app, shutdown
from tests.processes import free_port
from tests.test_playbooks import alert, payload, playbook
from tests.test_server import AM_TOKEN, config, drain

FUZZ_CASES = 300  # per dialect: about 30 s on 2 shared cores, mostly schemathesis generating the analysis and
# recommendation bodies (their models are large); under a minute, so not marked slow


@pytest.fixture
def app(tmp_path, database_url):
    """The served app on each store, its Prometheus a closed port that refuses at once: analysis requests are
    planned and queued, recommendations go on without current settings."""
    prometheus = {"url": f"http://127.0.0.1:{free_port()}", "retries": 0, "timeout": 1}
    application = create_app(config(tmp_path, database_url=database_url, prometheus=prometheus),
                             playbooks={"pb": playbook()}, start_runner=False)
    yield application
    shutdown(application)


def test_the_http_api_never_answers_5xx(app, capsys):
    client = app.test_client()
    client.post("/alertmanager/webhook", data=payload(alert()), headers={"Authorization": f"Bearer {AM_TOKEN}"})
    drain(app)  # a workflow waiting for approval, so decisions meet a real one now and then
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: collections.Counter = collections.Counter()
    refusals_without_message = []

    @settings(max_examples=FUZZ_CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(hs.data())
    def one_request(data):
        operation = data.draw(hs.sampled_from(operations), label="operation")
        mode = data.draw(hs.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]), label="mode")
        case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
        token = AM_TOKEN if operation.path == "/alertmanager/webhook" else "senior-token"
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        response = case.call()
        seen[response.status_code // 100 * 100] += 1
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} " \
                                           f"{response.text[:300]}"
        if response.status_code >= 400 and not response.json().get("error"):
            refusals_without_message.append((case.method, case.formatted_path, response.status_code))

    one_request()
    assert not refusals_without_message
    drain(app)  # every accepted delivery is stored and processed without an error
    with app.extensions["rules_engine"].runtime.store.read() as conn:
        failed = conn.execute(select(st.events.c.id, st.events.c.error).where(st.events.c.error.is_not(None))).all()
        assert st.unprocessed_event_count(conn) == 0
    assert failed == []
    with capsys.disabled():
        print(f"\nfuzzed {sum(seen.values())} requests on {app.extensions['rules_engine'].runtime.store.dialect}: "
              f"{dict(sorted(seen.items()))} by status class")


# --- the payload parser ---------------------------------------------------------------------------------------------
JSON_SCALARS = hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) | hs.text()
JSON_VALUES = hs.recursive(JSON_SCALARS, lambda inner: hs.lists(inner, max_size=3)
                           | hs.dictionaries(hs.text(max_size=5), inner, max_size=3), max_leaves=8)
TEXT = hs.text(alphabet=hs.characters(codec="utf-8"), max_size=80) | hs.text(max_size=3000).map(lambda t: t * 2)
PATHS = [("groupKey",), ("receiver",), ("status",), ("version",), ("externalURL",), ("truncatedAlerts",),
         ("commonLabels",), ("alerts",), ("alerts", 0, "labels", "alertname"), ("alerts", 0, "labels"),
         ("alerts", 0, "annotations", "summary"), ("alerts", 0, "startsAt"), ("alerts", 0, "endsAt"),
         ("alerts", 0, "fingerprint"), ("alerts", 0, "generatorURL"), ("alerts", 0, "status")]
TIMES = hs.builds(lambda y, mo, d, h, mi, s, frac, off: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
                  f"{frac}{off}", hs.integers(0, 9999), hs.integers(0, 13), hs.integers(0, 32), hs.integers(0, 25),
                  hs.integers(0, 61), hs.integers(0, 61), hs.sampled_from(["", ".5", ".123456789"]),
                  hs.sampled_from(["Z", "+00:00", "-05:00", "+14:00", "-23:59", "+99:99"]))


def _replace(document, path, value):
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@settings(max_examples=300, deadline=None, database=None)
@given(hs.lists(hs.tuples(hs.sampled_from(PATHS), JSON_VALUES | TEXT | TIMES), max_size=4),
       hs.dictionaries(TEXT, TEXT, max_size=3))
def test_the_parser_accepts_only_storable_payloads_and_names_every_refusal(changes, extra_labels):
    document = json.loads(payload(alert()))
    document["alerts"][0]["labels"].update(extra_labels)
    for path, value in changes:
        try:
            _replace(document, path, value)
        except (KeyError, IndexError, TypeError):  # an earlier change replaced a parent
            pass
    try:
        parsed = parse_payload(json.dumps(document))
    except PayloadError as error:
        assert error.problems and all(problem.strip() for problem in error.problems)
        return
    texts = [parsed.group_key, parsed.receiver, parsed.external_url]
    for found in parsed.alerts:
        assert len(found.fingerprint) <= limits.FINGERPRINT_MAX_CHARS
        assert all(len(n.encode()) <= limits.LABEL_NAME_MAX_BYTES for n in found.labels)
        assert all(len(v.encode()) <= limits.LABEL_VALUE_MAX_BYTES for v in found.labels.values())
        texts += [found.fingerprint, found.generator_url, *found.labels, *found.labels.values(),
                  *found.annotations, *found.annotations.values()]
        canonical_time(found.starts_at)  # canonical times are canonical
    assert all(limits.text_problem(t) is None for t in texts)


@settings(max_examples=300, deadline=None, database=None)
@given(TIMES | hs.text(alphabet=string.digits + "-:TZ+.", max_size=35))
def test_a_timestamp_is_canonical_or_refused_with_a_value_error(text):
    try:
        canonical = canonical_time(text)
    except ValueError:
        return
    assert canonical_time(canonical) == canonical and len(canonical) == 30
