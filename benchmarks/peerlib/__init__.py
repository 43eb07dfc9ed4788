"""Helpers for benchmarks/peers.py: deepzip beside NNCodec and coremltools on real models.

One concept a module: `target` (what a benchmarked model is, and a measured point),
`minilm` and `classifier` (the two models and their fidelity measures), `efficientnet_lite`
(the architecture), `photos` (evaluation and calibration images), `deepzip_peer`,
`nncodec_peer` and `coreml_peer` (one tool each), `machine` (what ran it) and `report`
(tables, summaries, JSON). Nothing here unpickles: state dicts are read with safetensors or
`torch.load(weights_only=True)`.
"""
