"""Load-time checks of the names playbook templates read (rules_engine.spec.template_names): what the loader
accepts must be what the executor renders, and each name that will not be there is refused at its field.
The broken-file view of the same checks is tests/corpus/playbooks/missing_step_reference.yaml."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from rules_engine.playbooks import store as st
from rules_engine.playbooks.executor import template_context
from rules_engine.spec.template_names import CONTEXT, Reference, references
from tests.test_playbooks import alert, get, ingest, playbook, runtime, store  # noqa: F401 (fixture)


def _http(name: str, **json) -> dict:
    return {"name": name, "type": "http", "request": {"url": "{{ vars.orchestrator_url }}/v1", "json": json}}


def _problems(steps: list[dict]) -> list[tuple[tuple, str]]:
    try:
        playbook(steps=steps)
    except ValidationError as error:
        return [(item["loc"], item["msg"]) for item in error.errors()]
    return []


def test_the_names_declared_are_the_names_the_executor_renders(store):  # noqa: F811
    pb = playbook()
    rt = runtime(store, pb)
    ingest(rt, alert())
    with store.read() as conn:
        (workflow,) = st.list_workflows(conn)
    workflow = get(rt, workflow.id)
    context = template_context(rt, workflow, pb)
    assert set(context) == set(CONTEXT)
    for name, keys in CONTEXT.items():
        if keys is not None:
            assert set(context[name]) == keys, name


def test_references_are_read_with_jinja2s_parser():
    assert references("{{ steps.scale.output.changes }}") == [Reference("steps", "scale")]
    assert references("{{ steps['queue-drained'].value }} {{ percent }}") == [
        Reference("steps", "queue-drained"), Reference("percent")]
    # Methods are not keys; names the template sets itself and Jinja2's globals are not context names.
    assert references("{{ alert.get('x') }}{% for k, v in labels.items() %}{{ k }}{{ loop.index }}{% endfor %}"
                      "{% set n = range(3) | list %}{{ n }}") == [Reference("alert"), Reference("labels")]
    assert references("{{ region | default('eu') }}") == [Reference("region")]


def test_each_name_that_will_not_be_there_is_refused_at_its_field():
    problems = _problems([
        {"name": "recommend", "type": "recommend", "bottleneck": "queue_buildup"},
        _http("apply", changes="{{ recommendation.changes }}", previous="{{ steps.undo.status }}",
              when="{{ workflow.created }}", later="{{ steps.check }}", itself="{{ steps.apply }}"),
        {"name": "check", "type": "verify", "query": "up{instance=\"{{ labels.instance }}\"}", "below": 1},
        {"name": "undo", "type": "rollback", "request": {"url": "{{ vars.orchestrator_url }}/v1/undo",
                                                          "json": {"applied": "{{ steps.apply.status }}",
                                                                   "checked": "{{ steps.check }}"}}},
    ])
    assert problems == [
        (("steps", 1, "request", "json", "previous"), "playbook 'pb', step 'apply': `steps.undo` has not run when "
                                                      "this step renders (steps run before it: recommend)"),
        (("steps", 1, "request", "json", "when"), "playbook 'pb', step 'apply': `workflow.created` is never set; "
                                                  "`workflow` has dry_run, id, playbook"),
        (("steps", 1, "request", "json", "later"), "playbook 'pb', step 'apply': `steps.check` has not run when "
                                                   "this step renders (steps run before it: recommend)"),
        (("steps", 1, "request", "json", "itself"), "playbook 'pb', step 'apply': `steps.apply` has not run when "
                                                    "this step renders (steps run before it: recommend)"),
    ]  # the rollback runs after every main step, so it may read theirs


def test_recommendation_needs_a_recommend_step_before():
    assert _problems([_http("apply", changes="{{ recommendation.changes }}")]) == [
        (("steps", 0, "request", "json", "changes"), "playbook 'pb', step 'apply': `recommendation` is a recommend "
                                                     "step's output, and no recommend step runs before this one")]


@pytest.mark.parametrize("source", ["{{ labels.instance | default('') }}", "{{ vars.anything }}",
                                    "{{ annotations['summary'] }}", "{{ baselines }}", "{{ alert.alertname }}"])
def test_open_and_known_names_pass(source):
    assert _problems([_http("apply", x=source)]) == []
