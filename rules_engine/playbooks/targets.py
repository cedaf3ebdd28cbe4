"""Where http steps may send: base URLs fixed by configuration, never chosen by an alert.

The serve config's `targets:` lists them; without it, the http(s) URLs among its `variables:` (such as
`orchestrator_url`) are the targets, so a playbook written `{{ vars.orchestrator_url }}/v1/scale` works as configured.
A rendered URL must have a target's scheme, host and port, a path under the target's path, no `.` or `..` segment
and no user info: whatever a label renders into, a request cannot leave the configured orchestrator.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit


def base_url_problem(url: str) -> str | None:
    """Why `url` cannot be a target (None if it can): an http(s) URL with a host and no user info, query or
    fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL with a host"
    if "@" in parts.netloc or parts.query or parts.fragment:
        return f"{url!r}: a target has no user info, query or fragment"
    return None


def configured_targets(targets: Iterable[str], variables: Mapping[str, Any]) -> tuple[str, ...]:
    """The explicit targets, or when there are none, the variables whose values are usable base URLs."""
    explicit = tuple(targets)
    if explicit:
        return explicit
    return tuple(value for value in variables.values()
                 if isinstance(value, str) and base_url_problem(value) is None)


def target_problem(url: str, allowed: Iterable[str]) -> str | None:
    """Why an http step may not send to `url` (None if it may)."""
    allowed = tuple(allowed)
    parts = urlsplit(url)
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        return f"{url} has a '.' or '..' path segment"
    for base in allowed:
        target = urlsplit(base)
        prefix = target.path.rstrip("/") + "/"
        if ((parts.scheme, parts.netloc.lower()) == (target.scheme, target.netloc.lower())
                and (parts.path + "/").startswith(prefix)):
            return None
    if not allowed:
        return (f"{url}: no targets are configured; list the orchestrator's base URL in the serve config's "
                "`targets:` (or set it as a variable such as `orchestrator_url`)")
    return f"{url} is not under an allowed target ({', '.join(allowed)})"
