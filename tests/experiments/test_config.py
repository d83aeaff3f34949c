"""experiments.config / presets: typed configs, dotted overrides, JSON round trips, clear errors."""

import json

import pytest

from algornn.experiments.config import Config, ModelConfig, TrainConfig, apply_overrides, override_keys
from algornn.experiments.presets import get_preset, list_presets


def test_overrides_parse_by_field_type():
    c = apply_overrides(
        get_preset("demo"),
        [
            "train.steps=200",
            "model.d_model=128",
            "optim.lr=3e-4",
            "model.prenorm=false",
            "train.dtype=bfloat16",
            "model.mixer_options.d_state=16",
            "task.options.max_length=256",
            "task.options.data_dir=/data/lra",
            "model.mixer_options.bidirectional=true",
            'task.options={"seq_len": 300}',
            "name=mine",
        ],
    )
    assert c.train.steps == 200 and isinstance(c.train.steps, int)
    assert c.model.d_model == 128 and c.optim.lr == 3e-4 and c.model.prenorm is False
    assert c.train.dtype == "bfloat16" and c.name == "mine"
    assert c.model.mixer_options["d_state"] == 16 and c.model.mixer_options["bidirectional"] is True
    assert c.task.options == {"seq_len": 300}  # the whole dict replaced last
    # the preset itself is untouched (frozen dataclasses, copied dicts)
    assert get_preset("demo").train.steps != 200 or get_preset("demo").model.d_model != 128


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.stepz=5", r"unknown key 'stepz' in train; allowed: \[.*'steps'"),
        ("trian.steps=5", r"unknown section 'trian'; allowed: \['name', 'task', 'model', 'optim', 'train'\]"),
        ("train.steps=five", r"train.steps: cannot parse 'five'; expected an int"),
        ("train.steps=1.5", r"train.steps: cannot parse '1.5'"),
        ("train.steps=0", r"train.steps: 0 is outside the allowed range \[1, inf\]"),
        ("model.norm=group", r"model.norm: 'group' is not one of \['layer', 'batch'\]"),
        ("model.prenorm=maybe", r"model.prenorm: cannot parse 'maybe'; expected a bool"),
        ("model.dropout=1.5", r"model.dropout: 1.5 is outside the allowed range \[0.0, 1.0\]"),
        ("train.dtype=float16", r"train.dtype: 'float16' is not one of \['float32', 'bfloat16'\]"),
        ("train.steps.x=1", r"train.steps is an int, it has no sub-keys"),
        ("train.steps", r"expected key=value"),
        ("model.mixer_options=[1]", r"model.mixer_options: cannot parse"),
    ],
)
def test_bad_overrides_name_key_and_allowed_values(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(get_preset("demo"), [override])


def test_json_round_trip_and_unknown_keys():
    for name in ("demo", "listops_s4", "retrieval_s5", "mqar_deltanet"):
        c = get_preset(name)
        again = Config.from_dict(json.loads(c.to_json()))
        assert again == c
    data = get_preset("demo").to_dict()
    data["train"]["bogus"] = 1
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['bogus'\]"):
        Config.from_dict(data)
    data = get_preset("demo").to_dict()
    data["model"]["d_model"] = "wide"
    with pytest.raises(ValueError, match="model.d_model: expected int"):
        Config.from_dict(data)


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match="model.pooling"):
        ModelConfig(pooling="max")
    with pytest.raises(ValueError, match="train.batch_size"):
        TrainConfig(batch_size=0)
    assert TrainConfig(steps=3).steps == 3


def test_presets_cover_lra_and_synthetic():
    names = list_presets()
    assert names[0] == "demo"
    for task in ("listops", "text", "retrieval", "image", "pathfinder", "pathx"):
        for mixer in ("s4", "s4d", "s5"):
            c = get_preset(f"{task}_{mixer}")
            assert c.model.mixer == mixer and c.task.name == task
            assert c.model.mixer_options["bidirectional"] is True and c.model.norm == "batch"
    for mixer in ("deltanet", "linear_attention", "lru"):
        assert any(get_preset(n).model.mixer == mixer for n in names if n != "demo")
    # published numbers (docs/experiments.md §LRA published configurations)
    s4 = get_preset("listops_s4")
    assert (
        s4.model.n_layers,
        s4.model.d_model,
        s4.train.batch_size,
        s4.optim.lr,
        s4.optim.weight_decay,
        s4.train.steps,
        s4.optim.warmup_steps,
        s4.model.prenorm,
    ) == (6, 256, 32, 0.01, 0.05, 120_000, 12_000, False)
    s5 = get_preset("listops_s5")
    assert (
        s5.model.n_layers,
        s5.model.d_model,
        s5.optim.ssm_lr,
        s5.optim.lr,
        s5.optim.weight_decay,
        s5.train.batch_size,
    ) == (8, 128, 1e-3, 3e-3, 0.04, 50)
    assert s5.train.steps == 96_000 // 50 * 40
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; available: \['demo'"):
        get_preset("nope")
    assert "train.steps" in override_keys() and "model.mixer_options" in override_keys()


def test_train_cli_help_and_errors(capsys):
    from algornn.experiments import train

    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "presets: demo, listops_s4" in out and "train.steps" in out
    assert train.main(["--print-config", "train.steps=7"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 7
    with pytest.raises(SystemExit) as exc:
        train.main(["model.norm=group"])
    assert exc.value.code == 2
    assert "model.norm: 'group' is not one of ['layer', 'batch']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--config", "nope"])
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_experiments_import_is_light():
    import subprocess
    import sys

    # the train CLI resolves the config (and prints --help / --print-config) without importing JAX
    code = (
        "import sys, algornn.experiments, algornn.experiments.config, algornn.experiments.presets, "
        "algornn.experiments.train; "
        "heavy = [m for m in ('flax', 'optax', 'orbax', 'jax') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------------------
# overrides that change other fields: train.steps, model.mixer, task.name


def test_steps_override_rescales_warmup_and_intervals():
    preset = get_preset("listops_s4d")
    assert (preset.train.steps, preset.optim.warmup_steps, preset.train.eval_every) == (120_000, 12_000, 3_000)
    notes = []
    c = apply_overrides(preset, ["train.steps=2000", "model.d_model=128"], notes=notes)
    # 12000 / 120000 = 10 % warmup; 3000 / 120000 = 1/40 of the run between evaluations and checkpoints
    assert (c.optim.warmup_steps, c.train.eval_every, c.train.checkpoint_every) == (200, 50, 50)
    assert len(notes) == 1
    assert "optim.warmup_steps 12000 -> 200" in notes[0] and "train.eval_every 3000 -> 50" in notes[0]
    # a value given explicitly is kept, in any order
    c = apply_overrides(preset, ["optim.warmup_steps=30", "train.steps=2000", "train.checkpoint_every=0"])
    assert (c.optim.warmup_steps, c.train.eval_every, c.train.checkpoint_every) == (30, 50, 0)
    # 0 (off) stays off; intervals never drop below 1
    c = apply_overrides(preset, ["optim.warmup_steps=0", "train.steps=3"])
    assert (c.optim.warmup_steps, c.train.eval_every, c.train.checkpoint_every) == (0, 1, 1)
    # unchanged steps: nothing rescaled, no note
    notes = []
    assert apply_overrides(preset, ["train.steps=120000"], notes=notes) == preset and notes == []


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match=r"optim.warmup_steps=500 is not below train.steps=400: .*never leave warmup"):
        apply_overrides(get_preset("demo"), ["train.steps=400", "optim.warmup_steps=500"])


def test_mixer_override_drops_the_old_mixers_options(capsys):
    demo = get_preset("demo")
    assert demo.model.mixer_options == {"d_state": 32}
    notes = []
    c = apply_overrides(demo, ["model.mixer=deltanet"], notes=notes)
    assert c.model.mixer_options == {}
    assert notes == [
        "model.mixer=deltanet replaces s4d: the preset's model.mixer_options {'d_state': 32} are not "
        "passed to deltanet; give its options with model.mixer_options.KEY=VALUE"
    ]
    # sub-keys given on the command line (before or after the mixer) are the new mixer's
    c = apply_overrides(demo, ["model.mixer_options.num_heads=2", "model.mixer=deltanet"])
    assert c.model.mixer_options == {"num_heads": 2}
    # a whole dict is taken as given; the same mixer keeps its options
    assert apply_overrides(demo, ["model.mixer=s5", 'model.mixer_options={"d_state": 32}']).model.mixer_options == {
        "d_state": 32
    }
    assert apply_overrides(demo, ["model.mixer=s4d"]).model.mixer_options == {"d_state": 32}
    # task.name likewise drops the old task's options
    c = apply_overrides(demo, ["task.name=mqar", "task.options.seq_len=64"])
    assert c.task.options == {"seq_len": 64}
    # the CLI prints the note and the resulting config builds a DeltaNet model
    from algornn.experiments import train

    assert train.main(["--print-config", "model.mixer=deltanet"]) == 0
    captured = capsys.readouterr()
    assert "note: model.mixer=deltanet replaces s4d" in captured.err
    assert json.loads(captured.out)["model"]["mixer_options"] == {}
