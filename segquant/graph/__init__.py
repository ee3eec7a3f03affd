"""Graph capture (torch.export) and the SegPattern matchers.

Importing this package imports torch only (no diffusers).
"""

from segquant.graph.capture import CapturedGraph, GraphCaptureError, capture_graph
from segquant.graph.patterns import LayerSegments, find_layer_segments

__all__ = ["CapturedGraph", "GraphCaptureError", "LayerSegments", "capture_graph", "find_layer_segments"]
