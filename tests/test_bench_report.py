"""``python -m bench.report``: the report from small fake results shaped like the scripts'
JSON; the run mode with tiny fake scripts (the real benchmarks are never run here)."""

import json
import textwrap
from pathlib import Path

import pytest

from bench import report as br

ENV = {
    "devices": ["NVIDIA H100 (gpu:0)"], "cpu": "Test CPU", "cores": 2, "platform": "Linux-x",
    "python": "3.11.7", "versions": {"jax": "0.1", "torch": "not installed"},
    "date": "2025-01-01T00:00:00+00:00", "load_average": [1.0, 0.5, 0.25],
}

MODELS = {
    "environment": {"jax_device": "cpu", "torch": "2.13.0+cpu", "torch_threads": 2,
                    "load_average_start": [4.0, 3.0, 2.0], "load_average_end": [6.0, 5.0, 4.0]},
    "batch_size": 16, "repeats": 5, "warmup": 1,
    "networks": {
        "unet_filter": {
            "jax": {"params": 5, "forward": {"median_ms": 50.0, "first_ms": 3000.0},
                    "train_step": {"median_ms": 150.0, "first_ms": 9000.0}},
            "torch": {"params": 5, "forward": {"median_ms": 200.0},
                      "train_step": {"median_ms": 600.0}},
            "ratio_forward": 0.25, "ratio_train_step": 0.25,
        },
        "melgan_discriminator": {  # measured without torch
            "jax": {"params": 7, "forward": {"median_ms": 1250.0},
                    "train_step": {"median_ms": 14000.0}},
        },
    },
    "upsampling": {"layers": [{
        "c_in": 512, "c_out": 256, "ratio": 8, "length_in": 32,
        "polyphase": {"forward": {"median_ms": 50.0}, "forward_backward": {"median_ms": 200.0}},
        "torch": {"forward": {"median_ms": 70.0}, "forward_backward": {"median_ms": 250.0}},
    }]},
}
TRAIN = {
    "environment": {"jax_device": "cpu", "load_average": [2.0, 1.0, 1.0]},
    "results": [
        {"stage": "classifier", "batch_size": 16, "repeats": 3,
         "jax": {"median_s": 0.1, "examples_per_s": 160.0},
         "torch": {"median_s": 0.2, "examples_per_s": 80.0}},
        {"stage": "pcmelgan", "batch_size": 128, "repeats": 2,
         "jax": {"median_s": 4.0, "examples_per_s": 32.0}},
    ],
}
DATA = {
    "benchmark": "input pipeline, train mode", "step_examples_per_sec": 9.25,
    "step_source": "the paper's training speed",
    "results": [{"workers": 0, "threads": 2, "batch_size": 128, "examples_per_sec": 1541.4,
                 "ratio_to_step": 166.7, "meets_10x": True}],
}


def _rtf(x):
    return {"audio_seconds": 30.0, "wall_seconds": 30.0 / x, "rtf": x}


ANONYMIZE = {
    "environment": {"jax_device": "cpu", "load_average_start": [0.3, 0, 0],
                    "load_average_end": [1.1, 0, 0]},
    "seconds": 30.0, "clips": 20, "repeats": 2, "batch_size": 8, "vocoder_batch_size": 4,
    "target_rtf": 50.0,
    "anonymize": {"jax": {"long": _rtf(25.0), "clips": _rtf(35.0)},
                  "torch": {"long": _rtf(20.0), "clips": _rtf(28.0)}},
    "copy_synthesis": {"jax": {"long": _rtf(30.0), "clips": _rtf(42.0)}},
    "vocoder_network_batch": 16,
    "vocoder_network": {"jax": _rtf(40.0), "torch": _rtf(32.0)},
}
SEEDS = {"results": [{"stage": "pcmelgan", "num_seeds": 4, "batch_size": 32,
                      "discriminator_width": 1.0, "vmapped": {"examples_per_s": 300.0},
                      "sequential": {"examples_per_s": 100.0}},
                     {"stage": "pcmelgan", "num_seeds": 4, "batch_size": 8,
                      "discriminator_width": 0.25, "unrolled": {"examples_per_s": 6.0},
                      "sequential": {"examples_per_s": 10.0}}]}
HOST_MEMORY = {  # bench_host_memory.py's shape, without the per-process runs
    "batch_size": 16, "rounds": 3, "steps": 5,
    "networks": {"melgan_generator": {
        "plain": {"median_ms": 2000.0, "faults_per_step": 232000.0},
        "huge_pages": {"median_ms": 1700.0, "faults_per_step": 1200.0}, "ratio": 0.85}},
}
VOCODER_PARTS = {"batch_size": 128, "repeats": 10, "parts": {
    "step": {"median_ms": 176.0}, "step_d_strided": {"median_ms": 300.0},
    "torch_step": {"median_ms": 110.0}}}


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "bench" / "results").mkdir(parents=True)
    (root / "bench" / "__init__.py").write_text("")
    return root


def write_results(root: Path, **files) -> None:
    for name, data in files.items():
        (root / "bench" / "results" / f"{name}.json").write_text(json.dumps(data))


def table_rows(report: str, section: str) -> dict[str, list[str]]:
    """label -> the other cells of the table rows in ``## section`` of the report."""
    body = report.split(f"## {section}:", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("|---") and cells[1] != "batch size":
            rows[cells[0]] = cells[1:]
    return rows


def test_report_from_results(tmp_path):
    root = fake_root(tmp_path)
    write_results(root, models=MODELS, train=TRAIN, data=DATA, anonymize=ANONYMIZE, seeds=SEEDS,
                  vocoder_parts=VOCODER_PARTS, host_memory=HOST_MEMORY)
    report, outcomes = br.build_report(root, run=False, env=ENV, recorded=[])
    assert [o.status for o in outcomes] == ["ok"] * 7
    assert "NVIDIA H100 (gpu:0)" in report and "Python 3.11.7" in report
    assert "torch not installed" in report and "1.00 / 0.50 / 0.25" in report
    assert "(--from-results)" in report

    models = table_rows(report, "models")
    assert models["UNet filter F, forward"] == ["16", "50.0", "200", "0.25"]
    assert models["UNet filter F, train step"] == ["16", "150", "600", "0.25"]
    assert models["MelGAN discriminator (3 scales), train step"] == ["16", "14,000", "n/a", "n/a"]
    up = [k for k in models if k.startswith("upsampling")]
    assert models[up[0]] == ["16", "200", "250", "0.80"]
    assert "| network | batch size | JAX (ms) | PyTorch (ms) | JAX / PyTorch time |" in report
    assert "load average (1 min) at start / end 4.0 / 6.0" in report

    train = table_rows(report, "train")
    assert train["classifier"] == ["16", "160", "80.0", "2.00"]
    assert train["pcmelgan"] == ["128", "32.0", "n/a", "n/a"]

    data = table_rows(report, "data")
    assert data["pipeline, 0 workers, 2 reader threads"] == ["128", "1,541", "n/a", "n/a"]
    assert "166.7x" in report

    anon = table_rows(report, "anonymize")
    assert anon["anonymize (F + G + vocoder), 30 s recording"] == ["8 / 4", "25.0", "20.0", "1.25"]
    assert anon["copy synthesis (vocoder), 20 x 1 s clips"] == ["8 / 4", "42.0", "n/a", "n/a"]
    assert anon["vocoder network forward"] == ["16", "40.0", "32.0", "1.25"]

    assert table_rows(report, "seeds") == {
        "pcmelgan 4 seeds": ["32", "300", "100", "3.00"],
        "pcmelgan 4 seeds (FD/GD width 0.25) unrolled": ["8", "6.00", "10.0", "0.60"]}

    parts = table_rows(report, "vocoder_parts")
    assert parts == {"step": ["128", "176", "110", "1.60"],
                     "step_d_strided": ["128", "300", "n/a", "n/a"]}

    host = table_rows(report, "host_memory")
    assert host["MelGAN generator"] == ["16", "1,700", "2,000", "0.85"]
    assert "MelGAN generator 232,000 / 1,200." in report


def test_missing_or_bad_results(tmp_path):
    root = fake_root(tmp_path)
    write_results(root, train={"results": [{"stage": "x"}]})
    report, outcomes = br.build_report(root, only="train,seeds", run=False, env=ENV, recorded=[])
    assert [o.status for o in outcomes] == ["failed", "no results"]
    assert "**FAILED**: cannot read" in report
    assert "python -m bench.report --only seeds" in report
    with pytest.raises(SystemExit):  # an unknown name is a usage error
        br.main(["--only", "models,nope"])


def test_recorded_results_get_their_own_section(tmp_path):
    """Results recorded on another machine (bench/measured/<name>/) follow the report: the
    README's first paragraph, then one table per JSON named after a benchmark."""
    root = fake_root(tmp_path)
    write_results(root, train=TRAIN)
    gpu = root / "bench" / "measured" / "gpu-x"
    gpu.mkdir(parents=True)
    (gpu / "README.md").write_text("# GPU X\n\nOne GPU X, 2026.\n\nMore.\n")
    bf16 = {"environment": {"jax_device": "GPU X (gpu)", "torch_cuda_device": "GPU X"},
            "results": [{"stage": "pcmelgan", "batch_size": 16, "dtype": "bfloat16",
                         "jax": {"examples_per_s": 100.0}}]}
    (gpu / "train_bf16.json").write_text(json.dumps(bf16))
    (gpu / "seeds.json").write_text(json.dumps(SEEDS))
    (gpu / "notes.json").write_text("{}")  # no benchmark of that name: ignored
    report, outcomes = br.build_report(root, only="train", run=False, env=ENV)
    assert [o.status for o in outcomes] == ["ok"]
    section = report[report.index("## Recorded results: `bench/measured/gpu-x`"):]
    assert "One GPU X, 2026." in section and "More." not in section
    assert "PyTorch CUDA device GPU X" in section and "notes.json" not in section
    assert "| pcmelgan (bfloat16) | 16 | 100 | n/a | n/a |" in section
    assert "| pcmelgan 4 seeds | 32 | 300 | 100 | 3.00 |" in section


def test_run_mode_with_fake_scripts(tmp_path, monkeypatch):
    """Runs scripts as ``python -m bench.bench_x``: one writes its JSON, one fails; the
    command writes the report and exits 1."""
    root = fake_root(tmp_path)
    (root / "bench" / "bench_train.py").write_text(textwrap.dedent(f"""
        import json, pathlib, sys
        out = pathlib.Path(__file__).resolve().parents[1] / "bench" / "results" / "train.json"
        if "--out" in sys.argv:
            out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
        print("args", sys.argv[1:])
        out.write_text(json.dumps({TRAIN!r}))
    """))
    (root / "bench" / "bench_anonymize.py").write_text(
        "import sys\nprint('loading model ...', file=sys.stderr)\n"
        "raise SystemExit('out of memory in vocoder')\n"
    )
    monkeypatch.setattr(br, "ROOT", root)
    monkeypatch.setattr(br, "environment", lambda: ENV)
    out = tmp_path / "report.md"
    assert br.main(["--only", "train,anonymize", "--quick", "--no-torch", "--out", str(out)]) == 1
    report = out.read_text()
    assert table_rows(report, "train")["classifier"] == ["16", "160", "80.0", "2.00"]
    logged = (root / "bench" / "results" / "logs" / "train.stdout.txt").read_text()
    assert "'--batch-sizes', '16', '--repeats', '2', '--no-torch'" in logged
    assert "**FAILED**: exited with status 1" in report
    assert "loading model ...\nout of memory in vocoder" in report
    assert "small --quick settings" in report
    # a separate results folder is passed to the scripts with --out
    other = tmp_path / "other"
    assert br.main(["--only", "train", "--results-dir", str(other), "--out", str(out)]) == 0
    assert (other / "train.json").is_file()
