"""Quantized modules (``SegLinear``), their typed layout/settings, and the conversion of one ``nn.Linear``."""
