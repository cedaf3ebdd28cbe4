"""Range frames built directly for unit tests: one column per instance on a given grid."""
from __future__ import annotations

import numpy as np
import pandas as pd

from rules_engine.source.frame import RangeFrame


def instance_frame(grid: pd.DatetimeIndex, columns: dict[str, np.ndarray], query: str = "q") -> RangeFrame:
    """A RangeFrame whose series are labelled only by `instance` (the dict keys), values on `grid`."""
    values = pd.DataFrame(np.column_stack(list(columns.values())), index=grid)
    values.columns = pd.RangeIndex(len(columns))
    return RangeFrame(query=query, values=values, labels=pd.DataFrame({"instance": list(columns)}))
