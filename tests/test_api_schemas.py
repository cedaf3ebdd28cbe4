"""The API's workflow model is derived from the store's record (rules_engine/server/schemas.py): what the store's
`to_json` writes must validate against it, field for field, so the OpenAPI description says what the API answers."""
from __future__ import annotations

import dataclasses

from rules_engine.playbooks import store as st
from rules_engine.server import schemas
from tests.test_playbooks import alert, get, ingest, playbook, runtime, store  # noqa: F401 (fixture)


def test_the_api_workflow_is_the_store_record_as_written(store):  # noqa: F811
    rt = runtime(store, playbook())
    workflow = get(rt, ingest(rt, alert()).created[0])
    body = workflow.to_json()
    assert list(schemas.Workflow.model_fields) == [*body, "audit"]
    assert schemas.Workflow.model_validate(body).model_dump(exclude={"audit"}) == body
    record_fields = [f.name for f in dataclasses.fields(st.Workflow)]
    assert [name for name in record_fields if name not in body] == ["lease_owner", "lease_until"]
