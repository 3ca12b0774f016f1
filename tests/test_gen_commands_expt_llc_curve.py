"""gen_commands_expt_llc_curve.py: Cartesian products, presets, invalid combinations, safe writing."""

import shlex

import pytest
from sacred.arg_parser import get_config_updates
from sacred.initialize import create_run

import gen_commands_expt_llc_curve as gen
from expt_llc_curve import ModelDataConfig, ex


def _updates(line):
    argv = shlex.split(line)
    return get_config_updates(argv[argv.index("with") + 1:])[0]


def test_product_order_temperature_and_skipped_combinations():
    sweep = {"name": "s", "training_config.batch_size": 16, "training_config.optim": ["sgd", "adam"],
             "training_config.momentum": [None, 0.9], "temperature": [0.5, 2.0], "seed": [0, 1]}
    commands, skipped = gen.make_commands(sweep)
    assert len(commands) == 12 and skipped == ["adam with momentum"] * 4  # 2·2·2·2 − adam with 0.9 (2·2)
    first, last = _updates(commands[0]), _updates(commands[-1])
    assert first["training_config"] == {"batch_size": 16, "optim": "sgd", "momentum": None, "learning_rate": 8.0}
    assert first["seed"] == 0 and _updates(commands[1])["seed"] == 1  # the last key varies fastest
    assert last["training_config"]["optim"] == "adam" and last["training_config"]["learning_rate"] == 32.0
    assert all(c.startswith("python expt_llc_curve.py -F outputs/s/ with expt_name='s' ") for c in commands)
    assert gen.make_commands(sweep) == (commands, skipped)  # deterministic
    with pytest.raises(ValueError, match="temperature sets training_config.learning_rate"):
        gen.make_commands({"temperature": [1.0]})
    with pytest.raises(ValueError, match="seed has an empty list"):
        gen.make_commands({"seed": []})


@pytest.mark.parametrize("preset, count", [("reference", 36), ("sgd_noise", 400), ("sgd_noise_cpu", 12),
                                           ("mnas", 525), ("mnas_cifar", 525)])
def test_presets_are_accepted_by_the_experiment(preset, count):
    commands, _ = gen.make_commands(gen.PRESETS[preset])
    assert len(commands) == count and len(set(commands)) == count
    for line in (commands[0], commands[-1]):
        updates = _updates(line)
        config = create_run(ex, "run", updates).config  # raises on unknown top-level keys
        assert set(updates["model_data_config"]) <= set(config["model_data_config"])
    if preset == "sgd_noise":
        temps = sorted({_updates(c)["training_config"]["learning_rate"] / 16 for c in commands})
        assert temps == [2.0**i for i in range(-13, 3)]
        assert sorted({_updates(c)["model_data_config"]["ptr"] for c in commands}) == [1024, 2048, 4096, 8192, 16384]
        assert _updates(commands[0])["model_data_config"]["data_name"] == "mnist_parity"
    if preset.startswith("mnas"):
        config = create_run(ex, "run", _updates(commands[-1])).config
        ModelDataConfig(**config["model_data_config"])  # alpha with an MNAS without BatchNorm is valid
        assert config["max_wall"] == (10000.0 if preset == "mnas" else 8000.0) and config["ckpt_grad_stats"] == 128
        temps = sorted({_updates(c)["training_config"]["learning_rate"] / 16 for c in commands})
        assert temps == [2.0**i for i in range(-20, 1)]


def test_yaml_grid_and_set_flags_and_refusing_to_overwrite(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: mine\nmodel_data_config.data_name: digits_parity\nseed: [0, 1, 2]\n")
    out = tmp_path / "commands.txt"
    commands = gen.main([str(out), "--no-preset", "--grid", str(grid), "--set", "training_config.momentum=None",
                         "--set", "training_config.optim=sgd", "--set", "seed=[5, 6]"])
    assert out.read_text().splitlines() == commands and len(commands) == 2
    assert _updates(commands[1]) == {"expt_name": "mine", "model_data_config": {"data_name": "digits_parity"},
                                     "seed": 6, "training_config": {"momentum": None, "optim": "sgd"}}
    with pytest.raises(SystemExit):
        gen.main([str(out), "--preset", "sgd_noise_cpu"])
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_text().splitlines() == commands  # untouched
    gen.main([str(out), "--preset", "sgd_noise_cpu", "--force"])
    assert len(out.read_text().splitlines()) == 12 and not (tmp_path / "commands.txt.tmp").exists()
