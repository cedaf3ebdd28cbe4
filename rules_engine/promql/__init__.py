"""What a rule means in PromQL, below both engines: window statistics, quantiles, signal and histogram queries,
alert conditions per severity level, burn-window catalogs. The pandas engine (evaluate/), the PromQL engine
(evaluate/promql_engine.py) and the compiler (compile/) all read a rule's meaning from here, so they cannot drift."""
