"""Shared pytest setup: puts the repository root on sys.path (for ``import bench``)."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# The training tests compare a step on 1 and on 4 CPU devices; the device count must be set
# before the JAX backend initialises, so for the whole test session.
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


import pytest  # noqa: E402

# The files with the longest runs (module fixtures that train, many compiled programs) go
# first, in this order; the rest follow in their usual order. With the README's two xdist
# workers taking a file at a time, the longest-first order keeps one worker from running a
# long file alone at the end. Only the order of files changes, never that within a file.
LONGEST_FIRST = (
    "test_seeds.py", "test_pcmelgan.py", "test_evaluation_attackers.py",
    "test_evaluation.py", "test_inference.py", "test_mixed_precision.py", "test_layers.py",
    "test_models.py", "test_vocoder.py", "test_compilation.py", "test_loop.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture
def conv_groups():
    """``conv_groups(fun, *args)``: (feature_group_count, batch_group_count) of every
    convolution in ``jax.make_jaxpr(fun)(*args)``, nested jaxprs (jit, custom rules) included."""

    def groups(fun, *args):
        found = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "conv_general_dilated":
                    found.append(
                        (eqn.params["feature_group_count"], eqn.params["batch_group_count"])
                    )
                for sub in jax.core.jaxprs_in_params(eqn.params):
                    walk(sub)

        walk(jax.make_jaxpr(fun)(*args).jaxpr)
        return found

    return groups


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """The prepared TFDS data of a tiny synthetic corpus (6 speakers x 10 digits x 2
    repetitions: 1 F + 1 M speaker in each of train, validation and test; 40 utterances per
    split), shared read-only by the training tests."""
    from pcmelgan_jax.data.prepare import prepare
    from pcmelgan_jax.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("tiny_data")
    synthesize_corpus(root / "corpus", speakers=6, reps=2, seed=0)
    prepare(root / "corpus", root / "data", "all")
    return str(root / "data")
