"""Write the MALA-vs-SGLD sweep: one fully explicit ``python expt_mala_vs_sgld.py ... with ...`` per line.

One command per training-set size n, sampler and seed. The defaults are the reference study
(Furman & Lau 2024): a ReLU network (input 10, widths [20, 20, 10]), 7 sizes n = 10² … 10⁵
log-spaced, ε = 1e-5, γ = 1, 10,000 steps, 5 chains per run (the study's 5 runs), SGLD batch 32,
both samplers. The same flags always give the same file.

    python gen_commands_expt_mala_vs_sgld.py outputs/mala_vs_sgld_commands.txt     # the reference study
    python sweep.py local outputs/mala_vs_sgld_commands.txt --workers 2
    python gen_commands_expt_mala_vs_sgld.py --max_log10_n 4 --num_sizes 5 --num_steps 1000   # laptop-sized
"""

from dataclasses import dataclass

import numpy as np

from sweep import config_word, grid_main, observer_flag

__all__ = ["Grid", "main", "make_commands", "sizes"]


@dataclass(frozen=True)
class Grid:
    """The sweep's axes and fixed settings."""

    name: str = "mala_vs_sgld"  # expt_name and observer folder outputs/<name>/
    output_dir: str = "outputs"  # parent folder of the file observer
    mongo_db: str | None = None  # host:port:db; replaces the file observer when set
    num_sizes: int = 7  # n log-spaced from 10^min_log10_n to 10^max_log10_n
    min_log10_n: float = 2.0
    max_log10_n: float = 5.0
    samplers: str = "mala,sgld"
    num_seeds: int = 1  # seeds 0, …, num_seeds − 1 (each run has num_chains chains)
    epsilon: float = 1e-5  # ε, both samplers
    gamma: float = 1.0  # γ
    num_steps: int = 10_000  # steps per chain
    num_chains: int = 5  # chains per run
    batch_size: int = 32  # SGLD minibatch m
    device: str = "auto"  # where each run computes

    def __post_init__(self) -> None:
        unknown = sorted(set(self.samplers.split(",")) - {"mala", "sgld"})
        if unknown:
            raise ValueError(f"unknown sampler {unknown[0]!r}; choose from ['mala', 'sgld']")
        if self.num_sizes < 1 or self.num_seeds < 0:
            raise ValueError(f"need num_sizes >= 1 and num_seeds >= 0, got {self.num_sizes}, {self.num_seeds}")


def sizes(grid: Grid) -> list[int]:
    """The training-set sizes n, rounded to integers.

    Returns:
        ``num_sizes`` values of n, log-spaced from 10^``min_log10_n`` to 10^``max_log10_n``.

    Example:
        >>> sizes(Grid())
        [100, 316, 1000, 3162, 10000, 31623, 100000]
    """
    return [int(round(10.0**e)) for e in np.linspace(grid.min_log10_n, grid.max_log10_n, grid.num_sizes)]


def make_commands(grid: Grid) -> list[str]:
    """One command per (n, sampler, seed), in that order.

    Args:
        grid: The sweep.

    Returns:
        Shell command lines ``python expt_mala_vs_sgld.py <observer> with <key=value ...>``.
    """
    observer = observer_flag(grid.name, grid.output_dir, grid.mongo_db)
    commands = []
    for n in sizes(grid):
        for sampler in grid.samplers.split(","):
            for seed in range(grid.num_seeds):
                updates = [
                    config_word("expt_name", grid.name),
                    config_word("num_training_data", n),
                    config_word("sampler", sampler),
                    config_word("sgld_config.epsilon", grid.epsilon),
                    config_word("sgld_config.gamma", grid.gamma),
                    config_word("sgld_config.num_steps", grid.num_steps),
                    config_word("sgld_config.num_chains", grid.num_chains),
                    config_word("sgld_config.batch_size", min(grid.batch_size, n)),
                    config_word("device", grid.device),
                    config_word("seed", seed),
                ]
                commands.append(f"python expt_mala_vs_sgld.py {observer} with " + " ".join(updates))
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
