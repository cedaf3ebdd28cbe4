"""What the store can hold, checked before anything is written, so a value it would refuse is a 4xx naming the
field instead of an acknowledged event that fails in the intake later.

The limits sit far above anything a real Alertmanager sends and below what the store refuses:
- no NUL character in any text: PostgreSQL `text` cannot hold one (and SQLite would cut C strings at it);
- a fingerprint of at most 64 characters (the `fingerprint` columns): Alertmanager sends 16 hex digits;
- a label name of at most 256 bytes: Prometheus label names are identifiers, in practice under 100 bytes;
- a label value of at most 2048 bytes (UTF-8): Kubernetes caps label values at 63 bytes and Prometheus users
  who set `label_value_length_limit` pick 1-2 KiB; it also keeps a workflow's series key (`instance=<value>`
  by default) under PostgreSQL's 2704-byte btree index entry.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

FINGERPRINT_MAX_CHARS = 64
LABEL_NAME_MAX_BYTES = 256
LABEL_VALUE_MAX_BYTES = 2048


def text_problem(value: str) -> str | None:
    """Why the store cannot hold `value` as text, or None."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which the store cannot hold"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate), which the store cannot hold"
    return None


def size_problem(value: str, max_bytes: int) -> str | None:
    size = len(value.encode("utf-8", "surrogatepass"))
    return f"is {size} bytes long; at most {max_bytes} are accepted" if size > max_bytes else None


def _checked(problem_of) -> AfterValidator:
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value
    return AfterValidator(check)


# Field types for request models that hold texts the store keeps (the API's findings and recommendations): the same
# limits, checked per field. The webhook checks a whole alert at once instead (playbooks/payload.py), for speed.
StoredText = Annotated[str, _checked(text_problem)]
LabelName = Annotated[StoredText, _checked(lambda v: size_problem(v, LABEL_NAME_MAX_BYTES))]
LabelValue = Annotated[StoredText, _checked(lambda v: size_problem(v, LABEL_VALUE_MAX_BYTES))]
Labels = dict[LabelName, LabelValue]
