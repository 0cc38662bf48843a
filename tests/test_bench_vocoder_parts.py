"""bench/bench_vocoder_parts.py: HLO op attribution of a trace (the report's table is in
test_bench_report.py)."""


import pytest

from bench import bench_vocoder_parts as bvp

HLO = """HloModule jit_wrapped, entry_computation_layout={(f32[2]{0})->f32[2]{0}}

ENTRY %main.4 (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  %cudnn-conv.3 = (f32[2]{0}, u8[0]{0}) custom-call(f32[2]{0} %p), """ + (
    'metadata={op_name="jit(step)/D/conv_general_dilated" source_file="a.py" source_line=1}\n'
) + """  ROOT fusion.1 = f32[2]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(step)/G/add"}
}
"""


def _event(pid, op, dur, module="jit_wrapped", name="kernel"):
    return {"ph": "X", "pid": pid, "dur": dur, "name": name,
            "args": {"hlo_op": op, "hlo_module": module}}


def test_hlo_op_names_reads_instructions_with_and_without_percent_and_root():
    assert bvp.hlo_op_names(HLO) == {
        "cudnn-conv.3": "jit(step)/D/conv_general_dilated",
        "fusion.1": "jit(step)/G/add",
    }


def test_device_time_by_op_counts_device_kernels_of_the_module_per_call():
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/host:CPU"}}]
    events = meta + [
        _event(1, "cudnn-conv.3", 3000, name="sm90_conv"),
        _event(1, "cudnn-conv.3", 3000, name="sm90_conv"),
        _event(1, "fusion.1", 600),
        _event(7, "fusion.1", 10**6),  # host thread: not counted when a device exists
        _event(1, "fusion.9", 10**6, module="jit_other"),  # another program
    ]
    ops = bvp.device_time_by_op({"traceEvents": events}, 2, bvp.hlo_op_names(HLO),
                                module="jit_wrapped")
    assert [o["hlo_op"] for o in ops] == ["cudnn-conv.3", "fusion.1"]
    assert ops[0] == {"hlo_op": "cudnn-conv.3", "ms_per_call": 3.0, "launches_per_call": 1.0,
                      "op_name": "jit(step)/D/conv_general_dilated", "top_kernel": "sm90_conv"}
    assert ops[1]["ms_per_call"] == 0.3
    # no device process (XLA:CPU): the host threads' op events
    host = bvp.device_time_by_op({"traceEvents": meta[1:] + [_event(7, "fusion.1", 4000)]}, 2,
                                 {}, module="jit_wrapped")
    assert host == [{"hlo_op": "fusion.1", "ms_per_call": 2.0, "launches_per_call": 0.5,
                     "op_name": "", "top_kernel": "kernel"}]


def test_profile_part_must_be_timed(tmp_path):
    with pytest.raises(SystemExit) as e:
        bvp.main(["--only", "log_mel", "--profile", str(tmp_path), "--profile-part", "step"])
    assert e.value.code == 2
