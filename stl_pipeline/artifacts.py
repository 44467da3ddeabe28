"""Annotations for what the assets hand each other, without importing what makes them.

Dagster reads every asset's annotations when the code location loads; naming
``HeteroData`` there would import torch and PyG into every process that loads
the definitions (the webserver, the daemon, each step), though only the steps
that compute need them. Type checkers see the real classes; at run time the
names are ``Any``, and the IO managers guarantee the types.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

    from stl_pipeline.serving.index import ProductIndex
else:
    HeteroData = ProductIndex = Any

__all__ = ["HeteroData", "ProductIndex"]
