"""Write the rescaling-invariance sweep: one fully explicit ``python expt_rescaling.py ... with ...`` per line.

One command per network, factor α, preconditioner and seed. The defaults are the reference study
(Furman & Lau 2024): the three networks (input 10, widths [20, 10]; 20, [30, 20]; 30, [40, 30]),
17 factors α = 10⁻⁴ … 10⁴ log-spaced, preconditioners rescaling, none and rmsprop, n = 10,000,
ε = 1e-5, γ = 0, 10,000 SGLD steps of batch 500, 5 chains per run (the study's 5 runs per factor).
The same flags always give the same file.

    python gen_commands_expt_rescaling.py outputs/rescaling_commands.txt     # the reference study, 153 runs
    python sweep.py local outputs/rescaling_commands.txt --workers 2
    python gen_commands_expt_rescaling.py --networks small --num_factors 9 --num_steps 2000   # laptop-sized
"""

from dataclasses import dataclass

import numpy as np

from sweep import config_word, grid_main, observer_flag

__all__ = ["NETWORKS", "Grid", "main", "make_commands"]

# Network name -> the named config of expt_rescaling.py that sets it ("" for the default config).
NETWORKS = {"small": "", "medium": "medium", "large": "large"}


@dataclass(frozen=True)
class Grid:
    """The sweep's axes (comma-separated lists) and fixed settings."""

    name: str = "rescaling"  # expt_name and observer folder outputs/<name>/
    output_dir: str = "outputs"  # parent folder of the file observer
    mongo_db: str | None = None  # host:port:db; replaces the file observer when set
    networks: str = "small,medium,large"  # small: 10 → [20, 10]; medium: 20 → [30, 20]; large: 30 → [40, 30]
    num_factors: int = 17  # α log-spaced from 10^min_log10_scale to 10^max_log10_scale
    min_log10_scale: float = -4.0
    max_log10_scale: float = 4.0
    preconditioners: str = "rescaling,none,rmsprop"
    num_seeds: int = 1  # seeds 0, …, num_seeds − 1 (each run has num_chains chains)
    num_training_data: int = 10_000  # n
    epsilon: float = 1e-5  # ε
    gamma: float = 0.0  # γ
    num_steps: int = 10_000  # SGLD steps
    num_chains: int = 5  # SGLD chains per run
    batch_size: int = 500  # SGLD minibatch m
    shared_noise: bool = False  # True: every α reuses the chains' noise; False: sgld_seed = 1000·seed + α's index

    def __post_init__(self) -> None:
        unknown = sorted(set(self.networks.split(",")) - set(NETWORKS))
        if unknown:
            raise ValueError(f"unknown network {unknown[0]!r}; choose from {list(NETWORKS)}")
        if self.num_factors < 1 or self.num_seeds < 0:
            raise ValueError(f"need num_factors >= 1 and num_seeds >= 0, got {self.num_factors}, {self.num_seeds}")


def scales(grid: Grid) -> list[float]:
    """The factors α, rounded to 6 significant digits so that the command lines stay readable.

    Returns:
        ``num_factors`` values of α, log-spaced from 10^``min_log10_scale`` to 10^``max_log10_scale``.

    Example:
        >>> scales(Grid(num_factors=5))
        [0.0001, 0.01, 1.0, 100.0, 10000.0]
    """
    exps = np.linspace(grid.min_log10_scale, grid.max_log10_scale, grid.num_factors)
    return [float(f"{10.0**e:.6g}") for e in exps]


def make_commands(grid: Grid) -> list[str]:
    """One command per (network, preconditioner, α, seed), in that order.

    Args:
        grid: The sweep.

    Returns:
        Shell command lines ``python expt_rescaling.py <observer> with [named config] <key=value ...>``.
    """
    observer = observer_flag(grid.name, grid.output_dir, grid.mongo_db)
    commands = []
    for network in grid.networks.split(","):
        named = f"{NETWORKS[network]} " if NETWORKS[network] else ""
        for precond in grid.preconditioners.split(","):
            for k, alpha in enumerate(scales(grid)):
                for seed in range(grid.num_seeds):
                    updates = [
                        config_word("expt_name", grid.name),
                        config_word("num_training_data", grid.num_training_data),
                        config_word("scale", alpha),
                        config_word("preconditioner", precond),
                        config_word("sgld_config.epsilon", grid.epsilon),
                        config_word("sgld_config.gamma", grid.gamma),
                        config_word("sgld_config.num_steps", grid.num_steps),
                        config_word("sgld_config.num_chains", grid.num_chains),
                        config_word("sgld_config.batch_size", grid.batch_size),
                        config_word("seed", seed),
                    ]
                    if not grid.shared_noise:  # independent chains per factor: the spread is Monte Carlo noise
                        updates.append(config_word("sgld_seed", 1000 * seed + k))
                    commands.append(f"python expt_rescaling.py {observer} with {named}" + " ".join(updates))
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
