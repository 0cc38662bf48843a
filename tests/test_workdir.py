"""The run-folder layout helpers and the atomic writers of ``pcmelgan_jax.workdir``."""

import json
import os

import pytest

from pcmelgan_jax import workdir


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_atomic_path_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"  # the parent folder is created
    with workdir.atomic_path(path) as tmp:
        assert os.path.dirname(tmp) == str(path.parent)
        assert os.path.basename(tmp).startswith(".out.txt.")
        with open(tmp, "w") as f:
            f.write("new")
        assert not path.exists()  # nothing visible until the block ends
    assert path.read_text() == "new"
    assert _leftovers(path.parent) == []


def test_atomic_path_keeps_the_old_file_on_an_error(tmp_path):
    path = tmp_path / "marker.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), workdir.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_write_json_atomic_round_trips(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"nested": "é"}, "flag": True}
    path = tmp_path / "x.json"
    workdir.write_json_atomic(path, obj, indent=1)
    assert workdir.read_json(path) == obj
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')  # sorted keys
    assert json.loads(text) == obj


def test_write_text_atomic(tmp_path):
    workdir.write_text_atomic(tmp_path / "t.md", "# table\n")
    assert (tmp_path / "t.md").read_text() == "# table\n"


def test_read_json_missing_and_broken(tmp_path):
    assert workdir.read_json(tmp_path / "absent.json") == {}
    broken = tmp_path / "broken.json"
    broken.write_text('{"eps": 0.5,')
    with pytest.raises(ValueError, match="broken.json: not valid JSON") as info:
        workdir.read_json(broken)
    assert "\n" not in str(info.value)


def test_layout_helpers(tmp_path):
    run = tmp_path / "run"
    assert workdir.config_path(run) == str(run / "config.json")
    assert workdir.final_metrics_path(run) == str(run / "final_metrics.json")
    assert workdir.models_dir(run) == str(run / "models")
    assert workdir.model_dir(run, "filter") == str(run / "models" / "filter")
    assert workdir.seed_dir(run, 3) == str(run / "seed_3")
    assert not workdir.is_complete(run)
    workdir.write_json_atomic(workdir.final_metrics_path(run), {"step": 1})
    assert workdir.is_complete(run)
    assert not workdir.has_model(run, "filter")
    workdir.write_json_atomic(os.path.join(workdir.model_dir(run, "filter"), "model.json"), {})
    assert workdir.has_model(run, "filter") and not workdir.has_model(run, "generator")


def test_existing_path(tmp_path, monkeypatch):
    (tmp_path / "vocoder").mkdir()
    monkeypatch.chdir(tmp_path.parent)
    base = str(tmp_path)
    # empty candidates are skipped; a relative one is tried as given, then below base
    assert workdir.existing_path([None, "", "vocoder"], base) == str(tmp_path / "vocoder")
    assert workdir.existing_path([str(tmp_path / "nope"), "nope"], base) is None
    assert workdir.existing_path([tmp_path.name], base) == str(tmp_path)


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """The written file has the mode a plain open() gives (not a private 0600 temporary's)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    workdir.write_text_atomic(tmp_path / "atomic.txt", "x")
    assert os.stat(tmp_path / "atomic.txt").st_mode == os.stat(plain).st_mode
