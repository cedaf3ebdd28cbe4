"""What every source of range vectors offers: one method, one error type."""
from __future__ import annotations

from typing import Protocol

import pandas as pd

from rules_engine.source.frame import RangeFrame


class SourceError(Exception):
    """A query could not be answered: unreachable server, an error answer, or a query missing from a snapshot.

    The message is meant for a person and names the query and the server or file.
    """


class Source(Protocol):
    def query_range(self, query: str, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> RangeFrame:
        """Evaluate `query` at start, start+step, ... <= end (UTC timestamps) and return every series."""
        ...
