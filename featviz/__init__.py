"""featviz: show what a vision network (a CNN or a vision transformer) sees.

``import featviz`` is cheap: torch and friends load on first use of the API below.

>>> import featviz
>>> results = featviz.visualize("sample_images/chelsea.jpg", model="alexnet", layers=[0], weights="none")
>>> results[0].grid()            # PIL image of every channel
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "FeatvizError",
    "LayerResult",
    "RenderOptions",
    "Visualizer",
    "__version__",
    "load_image",
    "load_model",
    "optimize_layer",
    "sweep",
    "visualize",
]

_LAZY = {
    "visualize": "featviz.output.pipeline",
    "sweep": "featviz.output.pipeline",
    "Visualizer": "featviz.output.pipeline",
    "LayerResult": "featviz.output.result",
    "RenderOptions": "featviz.output.options",
    "load_model": "featviz.models.build",
    "load_image": "featviz.inputs.images",
    "optimize_layer": "featviz.optimize.api",
    "FeatvizError": "featviz.errors",
}

if TYPE_CHECKING:
    from featviz.errors import FeatvizError
    from featviz.inputs.images import load_image
    from featviz.models.build import load_model
    from featviz.optimize.api import optimize_layer
    from featviz.output.options import RenderOptions
    from featviz.output.pipeline import Visualizer, sweep, visualize
    from featviz.output.result import LayerResult


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featviz' has no attribute {name!r}")
