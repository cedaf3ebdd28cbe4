"""`rules-engine monitor`: the engine's own evaluation run live, in rounds, with alerts pushed to Alertmanager.

Each round is a backtest (rules_engine.api.backtest, the code `evaluate` runs) over a sliding range ending now,
on a source that keeps earlier rounds' frames and fetches only their new tail (cache.py). Episodes the backtest
reports as firing become Alertmanager API v2 alerts with the labels and annotations of the generated rules
(rules_engine/compile/alerts.py), pushed to every Alertmanager independently (alertmanager.py). rounds.py holds the round (a function
of `now`, so a recorded history can be replayed through it) and the loop around it.
"""
