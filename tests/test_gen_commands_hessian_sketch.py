"""gen_commands_hessian_sketch.py: every block once per step, the stages agree, the experiment accepts the lines."""

import shlex

import pytest
from sacred.arg_parser import get_config_updates
from sacred.initialize import create_run

import sweep
from expt_hessian_sketch import ex
from gen_commands_hessian_sketch import Grid, main, make_commands


def updates(command: str) -> dict:
    argv = shlex.split(command)
    return get_config_updates(argv[argv.index("with") + 1:])[0]


def test_measure_lines_cover_every_block_once_per_step():
    commands = make_commands(Grid(num_tasks=8))  # s = 300, s_i = 600, b = 50: 6 + 12 blocks
    assert len(commands) == 4 * 8
    by_step = {}
    for c in commands:
        u = updates(c)
        assert u["stage"] == "measure" and c.startswith("python expt_hessian_sketch.py -F outputs/hessian_sketch/ with")
        by_step.setdefault(u["step"], []).append(u["blocks"])
    assert list(by_step) == [0, 100, 500, 2000]
    for blocks in by_step.values():
        assert sorted(sum(blocks, [])) == list(range(18)) and blocks[0] == [0, 8, 16]
    # more tasks than blocks: one block per line, no empty line
    assert len(make_commands(Grid(num_tasks=50, log_at_steps="0"))) == 18


def test_the_three_stages_share_one_config_that_the_experiment_accepts():
    lines = {stage: make_commands(Grid(stage=stage, log_at_steps="0,10", num_steps=10)) for stage in
             ("train", "measure", "solve")}
    assert len(lines["train"]) == len(lines["solve"]) == 1
    shared = [{k: v for k, v in updates(c).items() if k not in ("stage", "step", "blocks")}
              for c in lines["train"] + lines["measure"] + lines["solve"]]
    assert all(s == shared[0] for s in shared)
    assert shared[0]["store_dir"] == "outputs/hessian_sketch_store"
    for c in (lines["train"][0], lines["measure"][0], lines["solve"][0]):
        create_run(ex, "run", updates(c))  # an unknown key would raise here


def test_sweep_reads_the_file_and_flags_are_checked(tmp_path):
    main([str(tmp_path / "measure.txt"), "--num_tasks", "4", "--log_at_steps", "0,5", "--num_steps", "5"])
    assert len(sweep.read_commands(tmp_path / "measure.txt")) == 8  # distinct run keys
    assert make_commands(Grid()) == make_commands(Grid())
    with pytest.raises(ValueError, match="unknown stage 'merge'"):
        Grid(stage="merge")
