"""capsim scenario from-triton: the protobuf text reader, the mapping of a Triton config onto a
scenario, and the command line."""

from pathlib import Path

import pytest
import yaml

from capsim.cli import main
from capsim.config import load_scenario, parse_scenario
from capsim.simulate import simulate
from capsim.triton import Enum, Message, TritonError, from_triton, from_triton_text, parse_pbtxt

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "triton" / "resnet50" / "config.pbtxt"
PROFILE = "calibration/resnet50-torch-cuda-fp16.json"


def values(msg: Message, name: str) -> list:
    return [f.value for f in msg.fields if f.name == name]


# --------------------------------------------------------------------------- reader


def test_reader_nested_repeated_lists_comments_strings():
    text = '''# a comment line
name: "my model"   # trailing comment, "quotes" in it
max_batch_size: 8
dims: [ 3, -224, 0x10 ]
dims: 7
ratio: 1.5e3
kind: KIND_GPU
flag: true
label: "tab\\there" ' single' "adjacent"
dynamic_batching { preferred_batch_size: [4, 8], max_queue_delay_microseconds: 100; }
version_policy: { latest { num_versions: 1 } }
angle < a: 1 >
instance_group [ { count: 2 }, { count: 3 gpus: [0, 1] } ]
empty_list: []
empty_block {}
'''
    m = parse_pbtxt(text)
    assert values(m, "name") == ["my model"]
    assert values(m, "max_batch_size") == [8]
    assert values(m, "dims") == [3, -224, 16, 7]  # a list and a repeated key are the same thing
    assert values(m, "ratio") == [1500.0]
    (kind,) = values(m, "kind")
    assert kind == "KIND_GPU" and isinstance(kind, Enum)
    assert not isinstance(values(m, "name")[0], Enum)  # quoted: a string, not an enum
    assert values(m, "flag") == [True]
    assert values(m, "label") == ["tab\there single" + "adjacent"]
    (dyn,) = values(m, "dynamic_batching")
    assert values(dyn, "preferred_batch_size") == [4, 8] and values(dyn, "max_queue_delay_microseconds") == [100]
    (vp,) = values(m, "version_policy")
    assert values(values(vp, "latest")[0], "num_versions") == [1]
    assert values(values(m, "angle")[0], "a") == [1]
    groups = values(m, "instance_group")
    assert [values(g, "count") for g in groups] == [[2], [3]]
    assert values(groups[1], "gpus") == [0, 1]
    assert values(m, "empty_list") == [] and values(m, "empty_block")[0].fields == []
    assert [f.line for f in m.fields if f.name == "instance_group"] == [13, 13]


@pytest.mark.parametrize("text, line, problem", [
    ('name: "x"\ndynamic_batching {\n  max_queue_delay_microseconds: 5\n', 2,
     "dynamic_batching: the '{' opened here is never closed"),
    ('name: "x\nmax_batch_size: 8\n', 1, "string is not closed"),
    ('name: "x"\nmax_batch_size 8\n', 2, "max_batch_size: expected ':' or '{' after the field name, got 8"),
    ('a { b: 1 }\n}\n', 2, "expected a field name, got '}'"),
    ('\n\ndims: [1, 2 3]\n', 3, "dims: expected ',' or ']'"),
    ('x: 1\ny: @\n', 2, "unexpected character '@'"),
    ('x: }\n', 1, "x: expected a value after ':', got }"),
    ('x: "a\\qb"\n', 1, "unknown escape"),
])
def test_reader_errors_name_the_line(text, line, problem):
    with pytest.raises(TritonError) as exc:
        parse_pbtxt(text, "m/config.pbtxt")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"m/config.pbtxt: line {line}: ")
    assert problem in msg


# --------------------------------------------------------------------------- the sample


def test_sample_round_trip_every_mapped_field(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "resnet50.yaml"
    imp = from_triton(SAMPLE, profile=PROFILE, rate_rps=800, out=out)
    out.write_text(imp.to_yaml())
    sc = load_scenario(out)

    pb = parse_pbtxt(SAMPLE.read_text())
    (dyn,) = values(pb, "dynamic_batching")
    assert sc.name == values(pb, "name")[0] == "resnet50"
    assert "pytorch_libtorch" in sc.description
    assert sc.batching.mode == "triton"
    assert sc.batching.max_batch_size == values(pb, "max_batch_size")[0] == 32
    assert sc.batching.preferred_batch_sizes == values(dyn, "preferred_batch_size") == [8, 16]
    assert sc.batching.max_queue_delay_ms == values(dyn, "max_queue_delay_microseconds")[0] / 1000 == 2.0
    # Priority: Triton level 1 (highest) = capsim level 0; level 2 has no own policy -> the default one.
    levels = sc.priority.levels
    assert len(levels) == values(dyn, "priority_levels")[0] == 2
    (ppq,) = values(dyn, "priority_queue_policy")
    assert values(ppq, "key") == [1]
    (lv1,) = values(ppq, "value")
    (default,) = values(dyn, "default_queue_policy")
    assert levels[0].max_size == values(lv1, "max_queue_size")[0] == 64
    assert levels[0].timeout_ms == values(lv1, "default_timeout_microseconds")[0] / 1000 == 50
    assert levels[1].max_size == values(default, "max_queue_size")[0] == 512
    assert levels[1].timeout_ms == values(default, "default_timeout_microseconds")[0] / 1000 == 500
    assert [lv.on_full for lv in levels] == ["reject", "reject"]
    assert [lv.share for lv in levels] == [0.5, 0.5]
    assert sc.queue.max_size == 0 and sc.queue.timeout_ms == 0  # per-level replaces the shared queue
    # instance_group {count: 2, kind: KIND_GPU, gpus: [0, 1]}: two GPUs with two instances each.
    (group,) = values(pb, "instance_group")
    assert sc.devices.count == len(values(group, "gpus")) == 2
    assert sc.devices.instances_per_device == values(group, "count")[0] == 2
    assert sc.instances == 4
    assert sc.service.profile == PROFILE and sc.service.allow_mismatch is False
    assert sc.service.loaded_profile is not None
    assert sc.arrivals.process == "poisson" and sc.arrivals.rate_rps == 800

    w = "\n".join(imp.warnings)
    assert "optimization.cuda.graphs: set to true: not modelled" in w
    assert "optimization.input_pinned_memory.enable" in w
    assert "input, output, version_policy, model_warmup: ignored (no effect on capacity)" in w
    assert "priority.levels[].share: " in w and "1/2" in w
    assert len(imp.warnings) == 4  # nothing else: every other field was mapped


def _variant_without_priority(text: str) -> str:
    """The sample on one GPU without priority levels (what this branch's engines can run)."""
    start = text.index("  priority_levels: 2")
    end = text.index("  # Every other level")
    text = text[:start] + text[end:]
    assert "priority" not in text.split("dynamic_batching")[1].split("instance_group")[0]
    return text.replace("gpus: [ 0, 1 ]", "gpus: [ 0 ]")


def test_sample_without_priority_simulates(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    imp = from_triton_text(_variant_without_priority(SAMPLE.read_text()), "variant.pbtxt", profile=PROFILE,
                           rate_rps=800, out_dir=tmp_path)
    data = dict(imp.data, run={"requests": 4000, "warmup_requests": 500, "replications": 2, "seed": 3})
    assert data["queue"] == {"max_size": 512, "timeout_ms": 500}
    assert data["instances"] == 2 and "devices" not in data and "priority" not in data
    sc = parse_scenario(data, base_dir=tmp_path)
    res = simulate(sc)
    assert res.stable and res.dropped == 0
    assert max(res.batch_size_histogram) <= 32
    # 800 rps on two instances whose batches take ~3.5-6 ms: everything offered is served.
    assert res.throughput_rps == pytest.approx(res.offered_rps, rel=0.05)
    assert res.latency_ms["p50"] > 3.3  # at least one batch's compute (b=1 median 3.47 ms, b=2 3.36 ms)


# --------------------------------------------------------------------------- mapping rules


def imp(text: str, **kw):
    return from_triton_text('name: "m"\n' + text, "t.pbtxt", **kw)


def test_unknown_fields_are_named():
    r = imp('max_batch_size: 8\nfoo_bar: 3\ndynamic_batching { zzz: 1 }\n'
            'instance_group [{count: 1, kind: KIND_CPU, rate_limiter { priority: 2 }}]\n'
            'sequence_batching { max_sequence_idle_microseconds: 5000 }\n')
    w = r.warnings
    assert "foo_bar: set to 3: not modelled (ignored)" in w
    assert "dynamic_batching.zzz: set to 1: not modelled (ignored)" in w
    assert any(x.startswith("instance_group.rate_limiter.priority: set to 2: not modelled") for x in w)
    assert any(x.startswith("sequence_batching.max_sequence_idle_microseconds: set to 5000: not modelled: "
                            "capsim simulates the dynamic batcher") for x in w)


def test_batching_without_dynamic_batcher_or_batch_dimension():
    r = imp("max_batch_size: 16\n")
    assert r.data["batching"] == {"mode": "triton", "max_batch_size": 1, "max_queue_delay_ms": 0}
    assert any(x.startswith("dynamic_batching: absent: Triton runs each request as it arrives") for x in r.warnings)
    r = imp("max_batch_size: 0\ndynamic_batching {}\n")
    assert r.data["batching"]["max_batch_size"] == 1
    assert any(x.startswith("max_batch_size: 0: Triton does not batch") for x in r.warnings)
    r = imp("dynamic_batching { max_queue_delay_microseconds: 1500 }\nmax_batch_size: 4\n")
    assert r.data["batching"] == {"mode": "triton", "max_batch_size": 4, "max_queue_delay_ms": 1.5}
    with pytest.raises(TritonError, match=r"t.pbtxt: line 3: dynamic_batching.preferred_batch_size: 16 is above "
                                          r"max_batch_size 8"):
        imp("max_batch_size: 8\ndynamic_batching { preferred_batch_size: [4, 16] }\n")


def test_queue_policy_actions_and_one_level():
    r = imp("max_batch_size: 8\ndynamic_batching { default_queue_policy { max_queue_size: 10 "
            "default_timeout_microseconds: 30000 timeout_action: DELAY allow_timeout_override: true } }\n")
    assert r.data["queue"] == {"max_size": 10}  # DELAY keeps timed-out requests: no capsim timeout
    assert any(x.startswith("dynamic_batching.default_queue_policy.timeout_action: DELAY is not modelled")
               for x in r.warnings)
    assert any(x.startswith("dynamic_batching.default_queue_policy.allow_timeout_override: per-request")
               for x in r.warnings)
    r = imp("max_batch_size: 8\ndynamic_batching { priority_levels: 1 default_priority_level: 1 "
            "priority_queue_policy { key: 1 value { max_queue_size: 7 default_timeout_microseconds: 2500 } } }\n")
    assert r.data["queue"] == {"max_size": 7, "timeout_ms": 2.5} and "priority" not in r.data


def test_priority_levels_take_their_policy_or_the_default():
    r = imp("max_batch_size: 8\ndynamic_batching { priority_levels: 3 default_priority_level: 3\n"
            "default_queue_policy { max_queue_size: 100 }\n"
            "priority_queue_policy: [ {key: 2, value: {max_queue_size: 5, default_timeout_microseconds: 1000}} ] }\n")
    assert r.data["priority"]["levels"] == [
        {"share": 1 / 3, "max_size": 100, "timeout_ms": 0, "on_full": "reject"},
        {"share": 1 / 3, "max_size": 5, "timeout_ms": 1, "on_full": "reject"},
        {"share": 1 / 3, "max_size": 100, "timeout_ms": 0, "on_full": "reject"},
    ]
    assert "queue" not in r.data
    with pytest.raises(TritonError, match=r"line 3: dynamic_batching.priority_queue_policy: key 4 is not a "
                                          r"priority level \(priority_levels is 2, so 1..2\)"):
        imp("dynamic_batching { priority_levels: 2 default_priority_level: 1\n"
            "priority_queue_policy { key: 4 value {} } }\nmax_batch_size: 4\n")
    with pytest.raises(TritonError, match=r"default_priority_level: must be a level 1..2"):
        imp("max_batch_size: 4\ndynamic_batching { priority_levels: 2 }\n")


@pytest.mark.parametrize("groups, expect, warning", [
    ("", {"instances": 1}, "instance_group: absent"),
    ("instance_group [{count: 3, kind: KIND_CPU}]", {"instances": 3}, None),
    ("instance_group [{count: 2, kind: KIND_GPU}]", {"instances": 2}, "EVERY visible GPU"),
    ("instance_group [{count: 2, kind: KIND_GPU, gpus: [0]}]", {"instances": 2}, None),
    ("instance_group [{count: 2, kind: KIND_GPU, gpus: [0, 1, 2]}]",
     {"devices": {"count": 3, "instances_per_device": 2}}, None),
    ("instance_group [{count: 1, kind: KIND_GPU, gpus: [0]}, {count: 1, kind: KIND_GPU, gpus: [1]}]",
     {"devices": {"count": 2, "instances_per_device": 1}}, "2 KIND_GPU groups summed"),
    ("instance_group [{count: 2, kind: KIND_CPU}, {count: 3, kind: KIND_CPU}]", {"instances": 5}, "summed"),
    ("instance_group [{count: 2, kind: KIND_GPU, gpus: [0]}, {count: 4, kind: KIND_CPU}]", {"instances": 2},
     "instance_group[1] (KIND_CPU) left out"),
    ("instance_group [{count: 2}, {count: 1, passive: true}]", {"instances": 2}, "instance_group[1].passive"),
])
def test_instance_groups(groups, expect, warning):
    r = imp("max_batch_size: 4\n" + groups + "\n")
    got = {k: r.data[k] for k in ("instances", "devices") if k in r.data}
    assert got == expect
    if warning:
        assert any(warning in x for x in r.warnings), r.warnings


def test_instance_group_errors():
    with pytest.raises(TritonError, match=r"line 3: instance_group: GPUs hold different instance counts "
                                          r"\(GPU 0: 3, GPU 1: 1\)"):
        imp("max_batch_size: 4\ninstance_group [{count: 1, kind: KIND_GPU, gpus: [0, 1]},\n"
            "{count: 2, kind: KIND_GPU, gpus: [0]}]\n")
    with pytest.raises(TritonError, match=r"line 2: instance_group.kind: must be one of KIND_AUTO, KIND_GPU, "
                                          r"KIND_CPU, KIND_MODEL, got KIND_TPU"):
        imp("instance_group { kind: KIND_TPU }\n")
    with pytest.raises(TritonError, match=r"line 2: max_batch_size: must be a whole number, got \"8\"x|"
                                          r"line 2: max_batch_size: must be a whole number, got EIGHT"):
        imp("max_batch_size: EIGHT\n")
    with pytest.raises(TritonError, match=r"line 3: max_batch_size: given 2 times \(first at line 2\)"):
        imp("max_batch_size: 4\nmax_batch_size: 8\n")


def test_without_profile_the_file_is_refused_by_simulate(tmp_path):
    r = imp("max_batch_size: 8\ndynamic_batching {}\n")
    assert "service" not in r.data and not r.has_service
    assert any(x.startswith("service: no --profile") for x in r.warnings)
    out = tmp_path / "s.yaml"
    out.write_text(r.to_yaml())
    assert "NOT READY TO SIMULATE" in out.read_text()
    with pytest.raises(Exception, match=r"service.batch_latency_ms: required"):
        load_scenario(out)
    # Adding service times is all it takes.
    sc = load_scenario(out, ["service.batch_latency_ms={1: 5, 8: 20}"])
    assert sc.batching.max_batch_size == 8


def test_profile_that_cannot_serve_the_batch_size_is_refused():
    with pytest.raises(TritonError, match=r"t.pbtxt: the imported scenario is invalid: batching.max_batch_size: "
                                          r"64 is above the largest measured batch size 32"):
        imp("max_batch_size: 64\ndynamic_batching {}\n", profile=str(ROOT / PROFILE))


# --------------------------------------------------------------------------- command line


def test_cli_writes_yaml_to_stdout_and_warnings_to_stderr(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["scenario", "from-triton", str(SAMPLE), "--profile", PROFILE, "--rate", "250"]) == 0
    cap = capsys.readouterr()
    data = yaml.safe_load(cap.out)
    assert data["arrivals"] == {"process": "poisson", "rate_rps": 250}
    assert data["batching"]["max_batch_size"] == 32
    lines = cap.err.splitlines()
    assert "capsim: warning: optimization.cuda.graphs: set to true: not modelled; it changes service times, " \
           "so calibrate the profile with the same setting" in lines
    assert all(x.startswith(("capsim: warning: ", "capsim: note: ")) for x in lines)


def test_cli_out_file_and_model_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sub" / "r.yaml"
    assert main(["scenario", "from-triton", str(SAMPLE.parent), "--profile", PROFILE, "--out", str(out)]) == 0
    assert f"capsim: wrote {out} (capsim simulate {out})" in capsys.readouterr().err
    assert load_scenario(out).batching.preferred_batch_sizes == [8, 16]


@pytest.mark.parametrize("argv, text, error", [
    (["missing.pbtxt"], None, "capsim: error: missing.pbtxt: file not found"),
    (["bad.pbtxt"], 'name: "x"\ndynamic_batching {\n', "capsim: error: bad.pbtxt: line 2: dynamic_batching: "
                                                      "the '{' opened here is never closed"),
    (["bad.pbtxt", "--rate", "-3"], 'name: "x"\n', "capsim: error: --rate: must be > 0 rps, got -3"),
    (["bad.pbtxt", "--profile", "nope.json"], 'max_batch_size: 4\n',
     "capsim: error: bad.pbtxt: the imported scenario is invalid: service.profile: "),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, text, error):
    monkeypatch.chdir(tmp_path)
    if text is not None:
        Path(argv[0]).write_text(text)
    assert main(["scenario", "from-triton", *argv]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("capsim: error")]
    assert len(err) == 1 and err[0].startswith(error), err


def test_existing_scenarios_command_is_kept(capsys):
    assert main(["scenarios"]) == 0
    assert "mini-challenge" in capsys.readouterr().out
