"""Personalized recommendation from purchase histories in the H&M format (docs/design.md §8).

generate.py writes the embedded default data; ingest.py validates the three CSVs
and splits time into windows; graph.py builds the customer-article graph and the
snapshot of it each window may see; model.py trains heterogeneous GraphSAGE;
evaluate.py ranks with it and with the baselines; assets.py wires them to Dagster.
"""
