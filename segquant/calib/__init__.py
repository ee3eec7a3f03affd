"""Calibration sets: timestep samplers, the capture hook, chunked (compressed) shard storage.

Public API: ``generate_calibrate_set``, ``load_calibrate_set``, ``CalibrationSet``, ``RecordInfo``
and the samplers. ``diffusers`` and ``zstandard`` are imported only when used.
"""

from segquant.calib.dataset import CalibrationSet, load_calibrate_set
from segquant.calib.generate import generate_calibrate_set
from segquant.calib.records import RecordInfo, collate_records
from segquant.calib.samplers import (
    NormalSampler,
    StepListSampler,
    TimestepSampler,
    UniformSampler,
    sampler_from_dict,
)

__all__ = [
    "CalibrationSet",
    "NormalSampler",
    "RecordInfo",
    "StepListSampler",
    "TimestepSampler",
    "UniformSampler",
    "collate_records",
    "generate_calibrate_set",
    "load_calibrate_set",
    "sampler_from_dict",
]
