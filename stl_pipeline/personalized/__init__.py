"""Personalized recommendation from purchase histories in the H&M format (docs/design.md §8).

generate.py (with population.py) writes the embedded default data; ingest.py validates the
three CSVs and splits time into windows; graph.py builds the customer-article graph and the
snapshot of it each window may see; model.py trains heterogeneous GraphSAGE; candidates.py
and ranker.py are the two-stage ranker (generators, then LightGBM) that uses it as a signal;
evaluate.py and report.py score every method against the heuristics; assets/ wires them to
Dagster, one module per stage.
"""
