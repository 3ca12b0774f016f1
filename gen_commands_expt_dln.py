"""Write the DLN λ̂-vs-λ sweep: one fully explicit ``python expt_dln.py ... with ...`` command per line.

Each seed gets one randomly drawn architecture (depth, input and hidden widths from the given
ranges); everything else is fixed by the flags, whose defaults are the reference generator's
(Furman & Lau 2024): 100 seeds, n = 1e6, widths 1000–2000, 25–50 layers, rand_rank teachers with
prop_rank_reduce 0.5, ε = 5e-9, γ = 1, 200,000 SGLD steps of batch 500, and a student trained with
Adam at 0.01 for 50,000 steps. The same flags always give the same file.

    python gen_commands_expt_dln.py commands.txt                 # the reference sweep
    python gen_commands_expt_dln.py --num_seeds 3 --min_layers 2 --max_layers 4 --min_width 5 --max_width 20
"""

from dataclasses import dataclass

import numpy as np

from sweep import config_word, grid_main, observer_flag

__all__ = ["Grid", "make_commands", "main"]


@dataclass(frozen=True)
class Grid:
    """The sweep: ranges the architectures are drawn from and the fixed experiment settings."""

    name: str = "dln_sweep"  # expt_name and observer folder outputs/<name>/
    output_dir: str = "outputs"  # parent folder of the file observer
    mongo_db: str | None = None  # host:port:db; replaces the file observer when set
    num_seeds: int = 100  # one command per seed 0, …, num_seeds − 1
    seed: int = 0  # seed of the architecture draws
    num_training_data: int = 1_000_000  # n
    min_width: int = 1000  # input and hidden widths are uniform in [min_width, max_width]
    max_width: int = 2000
    min_layers: int = 25  # number of layers uniform in [min_layers, max_layers]
    max_layers: int = 50
    output_dim: int | None = None  # fixed output width; drawn like the others when None
    method: str = "rand_rank"  # true_param_config.method
    prop_rank_reduce: float = 0.5  # true_param_config.prop_rank_reduce
    epsilon: float = 5e-9  # ε
    gamma: float = 1.0  # γ
    num_steps: int = 200_000  # SGLD steps
    num_chains: int = 1  # SGLD chains
    batch_size: int = 500  # SGLD minibatch m
    do_training: bool = True
    optim: str = "adam"
    learning_rate: float = 0.01
    training_batch_size: int = 500
    training_steps: int = 50_000

    def __post_init__(self) -> None:
        if not 1 <= self.min_width <= self.max_width:
            raise ValueError(f"need 1 <= min_width <= max_width, got {self.min_width} and {self.max_width}")
        if not 1 <= self.min_layers <= self.max_layers:
            raise ValueError(f"need 1 <= min_layers <= max_layers, got {self.min_layers} and {self.max_layers}")
        if self.num_seeds < 0:
            raise ValueError(f"num_seeds must be >= 0, got {self.num_seeds}")


def make_commands(grid: Grid) -> list[str]:
    """One command per seed, in seed order; the same ``grid`` always gives the same list.

    Args:
        grid: The sweep.

    Returns:
        Shell command lines ``python expt_dln.py <observer> with <key=value ...>``.
    """
    rng = np.random.default_rng(grid.seed)
    observer = observer_flag(grid.name, grid.output_dir, grid.mongo_db)
    commands = []
    for seed in range(grid.num_seeds):
        depth = int(rng.integers(grid.min_layers, grid.max_layers + 1))
        widths = [int(h) for h in rng.integers(grid.min_width, grid.max_width + 1, size=depth + 1)]
        if grid.output_dim is not None:
            widths[-1] = grid.output_dim
        updates = [
            config_word("expt_name", grid.name),
            config_word("num_training_data", grid.num_training_data),
            config_word("input_dim", widths[0]),
            config_word("layer_widths", widths[1:]),
            config_word("true_param_config.method", grid.method),
            config_word("true_param_config.prop_rank_reduce", grid.prop_rank_reduce),
            config_word("sgld_config.epsilon", grid.epsilon),
            config_word("sgld_config.gamma", grid.gamma),
            config_word("sgld_config.num_steps", grid.num_steps),
            config_word("sgld_config.num_chains", grid.num_chains),
            config_word("sgld_config.batch_size", grid.batch_size),
            config_word("sgld_config.num_burnin_steps", 0),
            config_word("do_training", grid.do_training),
            config_word("training_config.optim", grid.optim),
            config_word("training_config.learning_rate", grid.learning_rate),
            config_word("training_config.batch_size", grid.training_batch_size),
            config_word("training_config.num_steps", grid.training_steps),
            config_word("seed", seed),
        ]
        commands.append(f"python expt_dln.py {observer} with " + " ".join(updates))
    return commands


def main(argv: list[str] | None = None) -> list[str]:
    """Parse flags (one per ``Grid`` field), write the commands to OUT or print them.

    Args:
        argv: Command-line arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The commands.
    """
    return grid_main(Grid, make_commands, argv, __doc__, types={"output_dim": int})


if __name__ == "__main__":
    main()
