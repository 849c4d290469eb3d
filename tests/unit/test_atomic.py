"""llie.atomic: the one local writer behind outputs, reports, checkpoints and synthetic pairs."""

import os

import numpy as np
import pytest
import torch

from llie import atomic


def test_a_writer_that_fails_half_way_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic.write_bytes(target, b"old")

    def half_then_crash(f):
        f.write(b"half of the new")
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        atomic.write_file(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_streamed_writes_land_whole_with_the_umask_mode_and_in_new_folders(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    target = tmp_path / "deep" / "best.pt"
    atomic.write_file(target, lambda f: torch.save(state, f))
    assert torch.equal(torch.load(target, weights_only=True)["w"], state["w"])
    arrays = tmp_path / "inputs.npz"
    atomic.write_file(arrays, lambda f: np.savez(f, a=np.arange(3)))
    np.testing.assert_array_equal(np.load(arrays)["a"], np.arange(3))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(os.listdir(target.parent)) == ["best.pt"]


def test_the_temp_name_is_hidden_and_says_whose_it_is_unless_the_name_is_too_long(tmp_path):
    assert atomic.temp_prefix("a.png", str(tmp_path)) == ".a.png."
    long_name = "x" * 250 + ".png"
    prefix = atomic.temp_prefix(long_name, str(tmp_path))
    assert prefix.startswith(".") and long_name not in prefix and len(prefix) == 34
    atomic.write_bytes(tmp_path / long_name, b"data")
    assert os.listdir(tmp_path) == [long_name]
