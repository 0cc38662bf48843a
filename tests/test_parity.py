"""Every golden vector file of the original PyTorch modules is reproduced by our modules."""

import os

import pytest

from pcmelgan_jax.interop import parity

FILES = parity.parity_files()


def test_parity_directory_has_every_network():
    names = {os.path.basename(f) for f in FILES}
    assert {
        "audio2mel.npz",
        "unet_filter.npz",
        "unet_generator.npz",
        "melgan_generator.npz",
    } <= names
    assert any(n.startswith("alexnet_k") for n in names)
    assert any(n.startswith("audionet_k") for n in names)
    assert any(n.startswith("melgan_discriminator_") for n in names)


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_parity(path):
    comparisons = parity.check_parity_file(path)  # raises on an unrecognised file
    assert comparisons, f"{path}: nothing compared"
    failures = [c for c in comparisons if not c.passed]
    assert not failures, "\n".join(
        f"{c.output}: max abs error {c.max_abs_error:.3e} > {c.tolerance:.3e}" for c in failures
    )


def test_unrecognised_file_fails(tmp_path):
    import numpy as np

    path = tmp_path / "mystery_net.npz"
    np.savez(path, **{"input/x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unrecognised parity file"):
        parity.check_parity_file(str(path))
