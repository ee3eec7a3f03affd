"""Trained demo models for judging quantization quality.

Three small denoisers built from the stock diffusers classes (``SD3Transformer2DModel``,
``FluxTransformer2DModel``, ``UNet2DConditionModel``) trained on Fashion-MNIST with rectified flow,
a Fashion-MNIST classifier, and ``SegQuantDemoPipeline`` to run them (``pipeline.load_demo_pipeline``).
Submodules import diffusers / transformers only when used; this package imports nothing heavy.
"""
