"""Assets of the ``personalized`` group, one module per stage: H&M-format purchases to top-12
lists, and their checks."""

from stl_pipeline.personalized.assets import graph, models, recommendations, report, tables

MODULES = [tables, graph, models, report, recommendations]
