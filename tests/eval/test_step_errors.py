"""``step_errors`` feeds each recorded call to the model on the model's device, nested inputs included."""

import torch
from torch import nn

from segquant.eval.harness import FPCall, step_errors
from segquant.pipeline.steps import StepInfo


class NestedInputModel(nn.Module):
    """A model on the meta device (as if on a GPU) that takes a UNet-style nested ``added_cond_kwargs`` and
    refuses any input left elsewhere; returns a real CPU tensor so the error can be computed."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1, device="meta"))

    def forward(self, sample, added_cond_kwargs):
        for name, t in {"sample": sample, **added_cond_kwargs}.items():
            assert t.device.type == "meta", f"{name} is on {t.device}, the model on meta"
        return (torch.full((1, 4), 2.0),)


def test_nested_call_inputs_follow_the_model_device():
    call = FPCall(StepInfo(step_index=0, timestep=1.0, branches=("cond",)),
                  {"sample": torch.ones(1, 4), "added_cond_kwargs": {"text_embeds": torch.ones(1, 3),
                                                                     "time_ids": torch.ones(1, 6)}},
                  torch.full((1, 4), 1.0))
    errors = step_errors(NestedInputModel(), [call], num_steps=1)
    assert errors == [1.0]  # |2 - 1| / |1|
