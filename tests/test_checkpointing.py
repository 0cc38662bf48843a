"""Model checkpoints: save, read back, replace, and the checked, cached loader."""

import json
import os

import numpy as np
import pytest

from pcmelgan_jax import checkpointing
from pcmelgan_jax.models.registry import numpy_random_variables

ARCH = {"num_classes": 2, "width": 0.125}  # a small AlexNet


def _save(directory, seed: int, overwrite: bool = False) -> str:
    variables = numpy_random_variables("alexnet", seed, **ARCH)
    return checkpointing.save_model(directory, "alexnet", variables, arch=ARCH,
                                    extra={"note": "test"}, overwrite=overwrite)


def _first_leaf(variables) -> np.ndarray:
    import jax

    return np.asarray(jax.tree.leaves(variables)[0])


def test_save_then_load_and_model_json(tmp_path):
    directory = _save(tmp_path / "m", seed=1)
    info = checkpointing.read_model_info(directory)
    assert info == {"format": 1, "network": "alexnet", "arch": ARCH, "note": "test"}
    with open(os.path.join(directory, "model.json")) as f:
        assert json.load(f) == info
    module, variables = checkpointing.load_model(directory)
    want = numpy_random_variables("alexnet", 1, **ARCH)
    np.testing.assert_array_equal(_first_leaf(variables), _first_leaf(want))
    assert module.num_classes == 2
    assert [n for n in os.listdir(tmp_path) if n != "m"] == []  # no temporary left


def test_save_refuses_an_existing_directory_unless_overwrite(tmp_path):
    _save(tmp_path / "m", seed=1)
    with pytest.raises(FileExistsError):
        _save(tmp_path / "m", seed=2)
    _save(tmp_path / "m", seed=2, overwrite=True)
    _, variables = checkpointing.load_model(tmp_path / "m")
    want = numpy_random_variables("alexnet", 2, **ARCH)
    np.testing.assert_array_equal(_first_leaf(variables), _first_leaf(want))


def test_load_network_checks_the_network_and_reloads_a_resaved_checkpoint(tmp_path):
    directory = _save(tmp_path / "m", seed=1)
    module, first = checkpointing.load_network(directory, "alexnet")
    assert checkpointing.load_network(directory, ("unet_filter", "alexnet"))[1] is first  # cached
    with pytest.raises(checkpointing.CheckpointError, match="holds a alexnet, expected unet_"):
        checkpointing.load_network(directory, "unet_filter")
    with pytest.raises(checkpointing.CheckpointError, match="missing model checkpoint"):
        checkpointing.load_network(tmp_path / "absent", "alexnet")
    _save(directory, seed=2, overwrite=True)
    os.utime(os.path.join(directory, "model.json"), ns=(1, 1))  # a new stamp, whatever the clock
    _, second = checkpointing.load_network(directory, "alexnet")
    want = numpy_random_variables("alexnet", 2, **ARCH)
    np.testing.assert_array_equal(_first_leaf(second), _first_leaf(want))
