"""Tests for gen_commands_expt_dln.py: count, parsing by the shell and Sacred, ranges, determinism."""

import shlex

import pytest
from sacred.arg_parser import get_config_updates
from sacred.initialize import create_run

from experiment import SGLDConfig, TrainingConfig, parse
from expt_dln import TrueParamConfig, ex
from gen_commands_expt_dln import Grid, main, make_commands


def parsed(command: str) -> tuple[list[str], dict]:
    argv = shlex.split(command)
    cut = argv.index("with")
    updates, named = get_config_updates(argv[cut + 1:])
    assert named == []
    return argv[:cut], updates


def test_default_grid_is_the_reference_sweep() -> None:
    commands = make_commands(Grid())
    assert len(commands) == 100
    seeds = []
    for command in commands:
        head, u = parsed(command)
        assert head == ["python", "expt_dln.py", "-F", "outputs/dln_sweep/"]
        assert 25 <= len(u["layer_widths"]) <= 50
        assert all(1000 <= h <= 2000 for h in [u["input_dim"], *u["layer_widths"]])
        assert u["num_training_data"] == 1_000_000 and u["expt_name"] == "dln_sweep"
        assert u["true_param_config"] == {"method": "rand_rank", "prop_rank_reduce": 0.5}
        assert u["sgld_config"]["epsilon"] == 5e-9 and u["sgld_config"]["gamma"] == 1.0
        assert u["sgld_config"]["num_steps"] == 200_000 and u["sgld_config"]["batch_size"] == 500
        assert u["training_config"] == {"optim": "adam", "learning_rate": 0.01, "batch_size": 500, "num_steps": 50_000}
        assert u["do_training"] is True
        seeds.append(u["seed"])
    assert seeds == list(range(100))
    assert len({len(parsed(c)[1]["layer_widths"]) for c in commands}) > 10  # depths really vary


def test_commands_are_accepted_by_the_experiment() -> None:
    for command in make_commands(Grid(num_seeds=3)):
        config = create_run(ex, "run", parsed(command)[1]).config  # unknown keys would raise here
        parse(SGLDConfig, "sgld_config", config["sgld_config"])
        parse(TrueParamConfig, "true_param_config", config["true_param_config"])
        parse(TrainingConfig, "training_config", config["training_config"])


def test_deterministic_given_the_seed() -> None:
    assert make_commands(Grid(num_seeds=5)) == make_commands(Grid(num_seeds=5))
    assert make_commands(Grid(num_seeds=5)) != make_commands(Grid(num_seeds=5, seed=1))
    assert make_commands(Grid(num_seeds=5))[:3] == make_commands(Grid(num_seeds=3))


def test_flags_set_ranges_observer_and_output(tmp_path, capsys) -> None:
    out = tmp_path / "commands.txt"
    commands = main([str(out), "--num_seeds", "4", "--min_layers", "2", "--max_layers", "3", "--min_width", "5",
                     "--max_width", "9", "--output_dim", "2", "--mongo_db", "localhost:27017:dln", "--do_training",
                     "false", "--epsilon", "1e-6", "--name", "small"])
    assert out.read_text().splitlines() == commands and len(commands) == 4
    for command in commands:
        head, u = parsed(command)
        assert head[2:] == ["-m", "localhost:27017:dln"]
        assert 2 <= len(u["layer_widths"]) <= 3 and u["layer_widths"][-1] == 2
        assert u["do_training"] is False and u["sgld_config"]["epsilon"] == 1e-6 and u["expt_name"] == "small"
    main(["--num_seeds", "2"])
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_bad_ranges_fail_clearly() -> None:
    with pytest.raises(ValueError, match="min_layers <= max_layers, got 5 and 2"):
        Grid(min_layers=5, max_layers=2)
    with pytest.raises(ValueError, match="min_width <= max_width"):
        Grid(min_width=0)
    with pytest.raises(ValueError, match="single quote"):
        make_commands(Grid(num_seeds=1, name="it's"))
