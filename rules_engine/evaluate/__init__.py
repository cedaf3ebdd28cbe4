"""pandas evaluation of rules over range frames: windows, conditions, for/severity, and (by kind) trend, regression, SLO."""
