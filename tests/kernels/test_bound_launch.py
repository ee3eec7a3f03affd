"""Replayed Triton launches (``segquant.kernels.gpu.bound_launch``) against a stand-in for a Triton kernel: which calls
go through the kernel, and what a replayed launch passes to the compiled kernel's launcher."""

import gc
import subprocess
import sys
import types
import weakref

import pytest
import torch

pytest.importorskip("triton")

from segquant.kernels.gpu import bound_launch  # noqa: E402
from segquant.kernels.gpu.bound_launch import BOUND_LAUNCH, clear_bound_launches, launch, triton_read  # noqa: E402


class CompiledStandIn:
    """Triton's compiled kernel: ``run(grid x, y, z, stream, function, metadata, launch metadata, hooks, *params)``."""

    function, packed_metadata = "function", "packed metadata"

    def __init__(self):
        self.launches = []

    def run(self, gx, gy, gz, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *params):
        self.launches.append(((gx, gy, gz), params))


class KernelStandIn:
    """``kernel[grid](x, n, SCALE=..)`` as Triton binds it: the parameters ``x, n, SCALE`` and the constexpr ``BLOCK``
    an autotuner chose (32), the grid evaluated on them, launched on its compiled kernel, which it returns."""

    def __init__(self):
        self.compiled, self.calls, self.configs = CompiledStandIn(), 0, []

    def __getitem__(self, grid):
        def run(x, n, SCALE=1.0, **options):
            self.calls += 1
            meta = {"x": x, "n": n, "SCALE": SCALE, "BLOCK": 32}
            size = tuple(grid(meta) if callable(grid) else grid)
            self.compiled.run(*size, *(1,) * (3 - len(size)), 0, "function", "packed metadata", None, None, None,
                              *meta.values())
            return self.compiled
        return run


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setitem(BOUND_LAUNCH, "enabled", True)
    monkeypatch.setattr(bound_launch, "_current_device", lambda: 0)
    monkeypatch.setattr(bound_launch, "_current_stream", lambda device: 0)
    monkeypatch.setattr(bound_launch, "triton_read", lambda: True)  # the stand-in launches as the versions read do
    clear_bound_launches()
    yield KernelStandIn()
    clear_bound_launches()


def grid(meta):
    return (-(-meta["n"] // meta["BLOCK"]),)


def test_later_calls_of_a_key_replay_the_first_launch_with_their_own_tensors(kernel):
    first, second = torch.zeros(64), torch.ones(64)
    launch(kernel, grid, first, 64, SCALE=2.0)
    launch(kernel, grid, second, 64, SCALE=2.0)
    assert kernel.calls == 1
    (grid_first, params_first), (grid_second, params_second) = kernel.compiled.launches
    assert grid_first == grid_second == (2, 1, 1)
    assert params_first[0] is first and params_second[0] is second
    assert params_first[1:] == params_second[1:] == (64, 2.0, 32)


def test_a_binding_keeps_no_tensor_of_its_first_launch_alive(kernel):
    first = torch.zeros(64)
    launch(kernel, grid, first, 64, SCALE=2.0)
    kernel.compiled.launches.clear()  # the stand-in's own record of its parameters
    first_alive = weakref.ref(first)
    del first
    gc.collect()
    assert first_alive() is None
    second = torch.ones(64)
    launch(kernel, grid, second, 64, SCALE=2.0)
    assert kernel.calls == 1 and kernel.compiled.launches[-1][1] == (second, 64, 2.0, 32)


def test_a_new_key_goes_through_the_kernel(kernel):
    x = torch.zeros(80)
    launch(kernel, grid, x[:64], 64, SCALE=2.0)
    launch(kernel, grid, x[:48], 48, SCALE=2.0)  # another int
    launch(kernel, grid, x[1:65], 64, SCALE=2.0)  # a tensor 4 bytes past 16-byte alignment
    launch(kernel, grid, x[:64].double(), 64, SCALE=2.0)  # another dtype
    launch(kernel, grid, x[:64], 64, SCALE=2)  # an int where a float was
    launch(kernel, grid, x[:64], 64)  # the keyword left out
    assert kernel.calls == 6
    y = x[4:68]
    launch(kernel, grid, y, 64, SCALE=2.0)  # aligned again: the first key
    assert kernel.calls == 6 and kernel.compiled.launches[-1][1][0] is y
    launch(kernel, grid, y, 64, SCALE=0.5)  # keywords are keyed by value
    launch(kernel, grid, y, 64, 0.5)
    launch(kernel, grid, y, 64, 0.25)  # a positional float by its type, passed on
    assert kernel.calls == 8 and kernel.compiled.launches[-1][1][1:] == (64, 0.25, 32)


def test_calls_that_cannot_be_bound_go_through_the_kernel(kernel, monkeypatch):
    x = torch.zeros(64)
    launch(kernel, grid, x, 64, (2.0,))  # a tuple, positionally
    launch(kernel, grid, x, 64, (2.0,))
    assert kernel.calls == 2
    with pytest.raises(TypeError, match="pass tensors positionally"):
        launch(kernel, grid, x, 64, SCALE=torch.ones(1))
    monkeypatch.setitem(BOUND_LAUNCH, "enabled", False)
    launch(kernel, grid, x, 64)
    launch(kernel, grid, x, 64)
    assert kernel.calls == 4


def test_the_versions_read_are_the_only_ones_replayed(kernel, monkeypatch):
    assert [triton_read(version) for version in ("3.5.1", "3.6.0", "3.9.0+git", "3.10.0", "4.0.0")] == [
        False, True, True, False, False]
    monkeypatch.setattr(bound_launch, "triton_read", lambda: False)
    x = torch.zeros(64)
    for _ in range(3):
        launch(kernel, grid, x, 64)
    assert kernel.calls == 3


def test_on_unless_the_environment_says_0():
    def enabled(value):
        code = "from segquant.kernels.gpu.bound_launch import BOUND_LAUNCH; print(BOUND_LAUNCH['enabled'])"
        env = {"PATH": "", **({} if value is None else {"SEGQUANT_BOUND_LAUNCH": value})}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert [enabled(value) for value in (None, "1", "0")] == ["True", "True", "False"]


def test_a_launch_hook_takes_tritons_path(kernel, monkeypatch):
    from triton import knobs

    x = torch.zeros(64)
    launch(kernel, grid, x, 64)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    launch(kernel, grid, x, 64)
    assert kernel.calls == 2


def test_the_chosen_configs_pre_hook_runs_before_each_replayed_launch(kernel):
    """As the TMA kernel's autotuner sets its descriptors' block shapes: on each launch's own parameters."""
    hooked = []

    class Autotuned:
        """An autotuner around ``kernel`` that chose a config with a pre-hook."""

        best_config = types.SimpleNamespace(pre_hook=hooked.append)

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                self.best_config.pre_hook({"x": args[0], "n": args[1], "SCALE": 1.0, "BLOCK": 32})
                return kernel[grid](*args, **kwargs)
            return run

    first, second = torch.zeros(64), torch.ones(64)
    autotuned = Autotuned()
    launch(autotuned, grid, first, 64)
    launch(autotuned, grid, second, 64)
    assert kernel.calls == 1 and len(hooked) == 2
    assert hooked[0]["x"] is first and hooked[1]["x"] is second
    assert {name: value for name, value in hooked[1].items() if name != "x"} == {"n": 64, "SCALE": 1.0, "BLOCK": 32}


def test_a_kernel_without_a_compiled_kernel_is_not_bound(kernel):
    calls = []

    class Interpreted:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append(args)  # Triton's interpreter returns None

    interpreted, x = Interpreted(), torch.zeros(64)
    launch(interpreted, grid, x, 64)
    launch(interpreted, grid, x, 64)
    assert len(calls) == 2
