"""Quantized modules and the swap of nn.Linear for them."""
