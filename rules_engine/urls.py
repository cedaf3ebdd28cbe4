"""URLs as we show them: in messages, logs and recorded files a URL never carries its credentials.

Used for Prometheus URLs (http://user:password@host/prefix) and store URLs (postgresql://user:password@host/db)
alike, so there is one rule for what a printed URL may contain.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redacted_url(url: str) -> str:
    """The URL without its user:password part; anything else (scheme, host, port, path, query) is kept."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not splittable (an unclosed IPv6 bracket): drop what precedes an "@" in the authority
        scheme, separator, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        return f"{scheme}{separator}{authority.rpartition('@')[2]}{slash}{path}"
    if "@" not in parts.netloc:
        return url
    # The host part is what follows the last "@" (a password may contain "@"); brackets of IPv6 hosts are kept.
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
