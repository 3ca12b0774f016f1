"""Write the sweep files of the distributed Hessian sketch: one ``python expt_hessian_sketch.py ... with ...`` per line.

``--stage measure`` (the default) writes the measurement lines: for each step of ``log_at_steps``,
``num_tasks`` lines (SLURM array tasks), line j taking the sketch's blocks j, j + num_tasks, … (outer
and core blocks interleaved, so that the tasks get similar work). ``--stage train`` and
``--stage solve`` write the one line of those stages with the same config, so that the three stages
agree on the model, the data, the seed and the sketch. The same flags always give the same file.

    python gen_commands_hessian_sketch.py outputs/hessian_sketch_train.txt --stage train
    python gen_commands_hessian_sketch.py outputs/hessian_sketch_measure.txt --num_tasks 8
    python gen_commands_hessian_sketch.py outputs/hessian_sketch_solve.txt --stage solve
    python sweep.py local outputs/hessian_sketch_train.txt
    python sweep.py slurm outputs/hessian_sketch_measure.txt --mem 4G
    python sweep.py local outputs/hessian_sketch_solve.txt
"""

import math
from dataclasses import dataclass

from sweep import config_word, grid_main

__all__ = ["STAGES", "Grid", "main", "make_commands"]

STAGES = ("train", "measure", "solve")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


@dataclass(frozen=True)
class Grid:
    """Which stage's lines to write, the jobs and the experiment's config (comma-separated lists)."""

    stage: str = "measure"  # train | measure | solve
    name: str = "hessian_sketch"  # expt_name and observer folder <output_dir>/<name>/
    output_dir: str = "outputs"  # parent folder of the file observer
    store_dir: str | None = None  # folder of parameters and blocks; default <output_dir>/<name>_store
    script: str = "expt_hessian_sketch.py"  # the experiment's path as the lines name it
    num_tasks: int = 8  # measurement lines (array tasks) per step
    data_name: str = "digits"  # digits | mnist1d
    num_data: int = 1000  # n
    hidden_widths: str = "93"  # MLP hidden widths
    num_steps: int = 2000  # training steps
    log_at_steps: str = "0,100,500,2000"  # steps whose Hessian is sketched
    num_measurements: int = 300  # s
    num_inner: int = 600  # s_i
    block_size: int = 50  # b
    ks: str = "5,20,50,100"  # sizes k of the eigenspace and mask
    compare_exact: bool = True  # solve: also the exact eigenspace (d ≤ 20,000)
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose from {list(STAGES)}")
        if self.num_tasks < 1 or self.block_size < 1 or not 1 <= self.num_measurements < self.num_inner:
            raise ValueError(f"need num_tasks >= 1, block_size >= 1 and 1 <= num_measurements < num_inner, got "
                             f"{self.num_tasks}, {self.block_size}, {self.num_measurements}, {self.num_inner}")

    @property
    def num_blocks(self) -> int:
        """⌈s/b⌉ outer and ⌈s_i/b⌉ core blocks, as ``sketch_store.SketchPlan`` counts them."""
        return math.ceil(self.num_measurements / self.block_size) + math.ceil(self.num_inner / self.block_size)


def make_commands(grid: Grid) -> list[str]:
    """The stage's lines: one for train and solve; for measure, ``num_tasks`` per step, step by step.

    Args:
        grid: The sweep.

    Returns:
        Shell command lines ``python expt_hessian_sketch.py -F <dir> with <key=value ...>``.
    """
    store = grid.store_dir or f"{grid.output_dir}/{grid.name}_store"
    shared = [
        config_word("expt_name", grid.name),
        config_word("data_name", grid.data_name),
        config_word("num_data", grid.num_data),
        config_word("hidden_widths", _ints(grid.hidden_widths)),
        config_word("training_config.num_steps", grid.num_steps),
        config_word("log_at_steps", _ints(grid.log_at_steps)),
        config_word("sketch_config.num_measurements", grid.num_measurements),
        config_word("sketch_config.num_inner", grid.num_inner),
        config_word("sketch_config.block_size", grid.block_size),
        config_word("ks", _ints(grid.ks)),
        config_word("compare_exact", grid.compare_exact),
        config_word("store_dir", store),
        config_word("device", grid.device),
        config_word("seed", grid.seed),
    ]
    head = f"python {grid.script} -F {grid.output_dir}/{grid.name}/ with {config_word('stage', grid.stage)}"
    if grid.stage != "measure":
        return [" ".join([head, *shared])]
    commands = []
    for step in _ints(grid.log_at_steps):
        for task in range(min(grid.num_tasks, grid.num_blocks)):
            blocks = list(range(task, grid.num_blocks, grid.num_tasks))
            commands.append(" ".join([head, config_word("step", step), config_word("blocks", blocks), *shared]))
    return commands


def main(argv: list[str] | None = None) -> list[str]:
    """Parse flags (one per ``Grid`` field), write the commands to OUT or print them.

    Args:
        argv: Command-line arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The commands.
    """
    return grid_main(Grid, make_commands, argv, __doc__)


if __name__ == "__main__":
    main()
