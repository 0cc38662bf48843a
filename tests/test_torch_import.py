"""PyTorch state dicts and .pt files -> Flax variables and model checkpoints."""

import os

import jax
import numpy as np
import pytest

from pcmelgan_jax import checkpointing
from pcmelgan_jax.interop import parity, torch_import

GOLDEN = {os.path.basename(f)[:-4]: f for f in parity.parity_files()}


def golden_state_dict(name):
    data = np.load(GOLDEN[name])
    return {k[6:]: data[k] for k in data.files if k.startswith("param/")}


@pytest.mark.parametrize(
    "name, network, arch",
    [
        ("unet_filter", "unet_filter", {}),
        ("unet_generator", "unet_generator", {}),
        ("alexnet_k3", "alexnet", {"num_classes": 3}),
        ("audionet_k2", "audionet", {"num_classes": 2}),
        ("melgan_generator", "melgan_generator", {}),
        ("melgan_discriminator_2scales", "melgan_discriminator", {"num_scales": 2}),
    ],
)
def test_recognise_convert_and_export_roundtrip(name, network, arch):
    state_dict = golden_state_dict(name)
    assert torch_import.infer_network(state_dict) == (network, arch)
    variables = torch_import.convert_state_dict(network, state_dict, **arch)
    exported = torch_import.export_state_dict(network, variables, **arch)
    # Every key the original has comes back with the same shape and values, except the
    # filter's unused conditioning layers, which the Flax filter does not carry.
    expected = set(state_dict) - torch_import.ignored_keys(network, state_dict)
    assert set(exported) - {k for k in exported if k.endswith("num_batches_tracked")} == expected
    for key in expected:
        np.testing.assert_array_equal(exported[key], state_dict[key].astype(np.float32), key)


def test_errors_list_unknown_missing_and_misshaped_keys():
    state_dict = golden_state_dict("alexnet_k3")
    state_dict["features.99.weight"] = np.zeros(3)
    del state_dict["classifier.4.bias"]
    state_dict["features.0.weight"] = np.zeros((64, 1, 3, 3))
    with pytest.raises(torch_import.StateDictError) as info:
        torch_import.convert_state_dict("alexnet", state_dict, source="x.pt", num_classes=3)
    message = str(info.value)
    assert "x.pt" in message
    assert "unknown keys (1): features.99.weight" in message
    assert "missing keys (1): classifier.4.bias" in message
    assert "mis-shaped keys (1): features.0.weight" in message


def test_wrong_class_count_is_a_shape_error():
    with pytest.raises(torch_import.StateDictError, match="classifier.6.weight"):
        torch_import.convert_state_dict("alexnet", golden_state_dict("alexnet_k3"), num_classes=10)


def test_dataparallel_prefix_is_stripped():
    sd = {f"module.{k}": v for k, v in golden_state_dict("audionet_k2").items()}
    variables = torch_import.convert_state_dict("audionet", sd, num_classes=2)
    assert variables["params"]["fc3"]["kernel"].shape == (512, 2)


def test_model_checkpoint_roundtrip(tmp_path):
    variables = torch_import.convert_state_dict(
        "melgan_generator", golden_state_dict("melgan_generator")
    )
    # the arch as the vocoder stage writes it: JSON turns the ratios tuple into a list
    arch = {"ratios": [8, 8, 2, 2]}
    path = checkpointing.save_model(tmp_path / "gen", "melgan_generator", variables, arch)
    with pytest.raises(FileExistsError):
        checkpointing.save_model(tmp_path / "gen", "melgan_generator", variables)
    model, restored = checkpointing.load_model(path)
    assert model.ratios == (8, 8, 2, 2)
    hash(model)  # hashable again: usable as a jit static argument
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    assert sorted(os.listdir(tmp_path)) == ["gen"]  # no temporary folders left behind
    data = np.load(GOLDEN["melgan_generator"])
    out = jax.jit(model.apply)(restored, data["input/log_mel"])
    np.testing.assert_allclose(out, data["output/audio"][:, 0], atol=1e-4)


class TestPtFiles:
    torch = pytest.importorskip("torch")

    def save(self, path, obj):
        self.torch.save(obj, path)
        return str(path)

    def tensors(self, name):
        return {
            k: self.torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v)
            for k, v in golden_state_dict(name).items()
        }

    def test_import_torch_command_converts_every_network(self, tmp_path):
        from pcmelgan_jax import cli

        files = [
            self.save(tmp_path / "netF_eps0.05.pt", self.tensors("unet_filter")),
            self.save(tmp_path / "netG_eps0.05.pt", {"state_dict": self.tensors("unet_generator")}),
            self.save(tmp_path / "best_netG_epoch_2120.pt", self.tensors("melgan_generator")),
            self.save(tmp_path / "netGD_eps0.05.pt", self.tensors("alexnet_k3")),
            self.save(tmp_path / "audionet_gender.pt", self.tensors("audionet_k2")),
        ]
        out = tmp_path / "converted"
        assert cli.main(["import-torch", *files, "--out", str(out)]) == 0
        expected = {
            "netF_eps0.05": "unet_filter",
            "netG_eps0.05": "unet_generator",
            "best_netG_epoch_2120": "melgan_generator",
            "netGD_eps0.05": "alexnet",
            "audionet_gender": "audionet",
        }
        for stem, network in expected.items():
            assert checkpointing.read_model_info(out / stem)["network"] == network
        # The converted filter reproduces the original's eval-mode output.
        model, variables = checkpointing.load_model(out / "netF_eps0.05")
        data = np.load(GOLDEN["unet_filter"])
        got = model.apply(variables, data["input/x"].transpose(0, 2, 3, 1), data["input/z"])
        np.testing.assert_allclose(
            np.asarray(got).transpose(0, 3, 1, 2), data["output/eval_mode"], atol=1e-4
        )
        # Re-running refuses to overwrite; --overwrite replaces.
        assert cli.main(["import-torch", files[0], "--out", str(out)]) == 1
        assert cli.main(["import-torch", files[0], "--out", str(out), "--overwrite"]) == 0

    def test_pickled_module_is_refused_without_running_code(self, tmp_path):
        path = self.save(tmp_path / "module.pt", self.torch.nn.Linear(2, 2))
        with pytest.raises(torch_import.StateDictError, match="weights_only"):
            torch_import.load_torch_state_dict(path)

    def test_mismatched_file_reports_keys(self, tmp_path, capsys):
        from pcmelgan_jax import cli

        sd = self.tensors("unet_generator")
        del sd["project_cond.bias"]
        path = self.save(tmp_path / "netG_broken.pt", sd)
        assert cli.main(["import-torch", path, "--out", str(tmp_path / "o")]) == 1
        assert "missing keys (1): project_cond.bias" in capsys.readouterr().out
        assert not (tmp_path / "o" / "netG_broken").exists()
