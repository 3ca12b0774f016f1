r"""Write the saddle-dynamics study: one ``python expt_dln_saddle_dynamics.py ... with ...`` command per line.

One command per (width, seed), widths in order, seeds 0 … num_seeds − 1 within each; everything else
is fixed by the flags. The defaults are the README's study (the default network D = 5, 3 layers of
hidden width 3, over 6000 SGD steps with λ̂ at 40 log-spaced steps, three seeds), sized for a CPU:
run it with ``sweep.py local`` or submit it with ``sweep.py slurm``. The same flags always give the
same file.

    python gen_commands_expt_dln_saddle_dynamics.py outputs/saddle_commands.txt
    python sweep.py local outputs/saddle_commands.txt --workers 2
    python gen_commands_expt_dln_saddle_dynamics.py --widths 500 --num_hidden_layers 4 \
        --initialisation_exponent 1.5 --num_steps 50000 --learning_rate 1e-4 --epsilon 1e-6 \
        --sgld_steps 100 --num_chains 1 --burnin 0   # reference size
"""

from dataclasses import dataclass

from sweep import grid_main, observer_flag

__all__ = ["Grid", "make_commands", "main"]


@dataclass(frozen=True)
class Grid:
    """The study: the widths and seeds swept, and the fixed experiment settings."""

    name: str = "saddle_study"  # expt_name and observer folder outputs/<name>/
    output_dir: str = "outputs"  # parent folder of the file observer
    mongo_db: str | None = None  # host:port:db; replaces the file observer when set
    widths: str = "3"  # comma-separated hidden widths, one group of commands each
    num_seeds: int = 3  # seeds 0, …, num_seeds − 1 per width
    in_out_dim: int = 5  # D; teacher 10·diag(1, …, D)
    num_hidden_layers: int = 2  # hidden layers
    initialisation_exponent: float = 3.0  # σ = width^(−exponent/2)
    num_training_data: int = 10_000  # n
    learning_rate: float = 3e-4  # SGD step size
    num_steps: int = 6000  # SGD steps
    num_logging_points: int = 40  # λ̂ at this many log-spaced steps
    epsilon: str = "auto"  # ε, a number or "auto"
    sgld_steps: int = 2000  # SGLD steps per chain
    burnin: int = 1000  # SGLD burn-in steps
    num_chains: int = 4  # SGLD chains
    device: str = "auto"  # where each run computes

    def __post_init__(self) -> None:
        if not self.width_list() or min(self.width_list()) < 1:
            raise ValueError(f"widths must be comma-separated ints >= 1, e.g. '3,4', got {self.widths!r}")
        if self.num_seeds < 0:
            raise ValueError(f"num_seeds must be >= 0, got {self.num_seeds}")

    def width_list(self) -> list[int]:
        """``widths`` as ints.

        Returns:
            The comma-separated ``widths``, in order, empty items skipped.

        Raises:
            ValueError: If an item of ``widths`` is not an int.
        """
        try:
            return [int(w) for w in self.widths.split(",") if w.strip()]
        except ValueError as err:
            raise ValueError(f"widths must be comma-separated ints, e.g. '3,4', got {self.widths!r}") from err


def make_commands(grid: Grid) -> list[str]:
    """One command per (width, seed), in that order; the same ``grid`` always gives the same list.

    Args:
        grid: The study.

    Returns:
        Shell command lines ``python expt_dln_saddle_dynamics.py <observer> with <key=value ...>``.

    Example:
        >>> make_commands(Grid(num_seeds=1))[0][:76]
        'python expt_dln_saddle_dynamics.py -F outputs/saddle_study/ with expt_name=s'
    """
    observer = observer_flag(grid.name, grid.output_dir, grid.mongo_db)
    epsilon = grid.epsilon if grid.epsilon == "auto" else float(grid.epsilon)
    commands = []
    for width in grid.width_list():
        for seed in range(grid.num_seeds):
            updates = [
                f"expt_name={grid.name}", f"in_out_dim={grid.in_out_dim}", f"width={width}",
                f"num_hidden_layers={grid.num_hidden_layers}",
                f"initialisation_exponent={grid.initialisation_exponent}",
                f"num_training_data={grid.num_training_data}", f"training_config.learning_rate={grid.learning_rate}",
                f"training_config.num_steps={grid.num_steps}", "log_spaced=True",
                f"num_logging_points={grid.num_logging_points}", f"sgld_config.epsilon={epsilon}",
                f"sgld_config.num_steps={grid.sgld_steps}", f"sgld_config.num_burnin_steps={grid.burnin}",
                f"sgld_config.num_chains={grid.num_chains}", f"device={grid.device}", "do_plot=True", f"seed={seed}",
            ]
            commands.append(f"python expt_dln_saddle_dynamics.py {observer} with " + " ".join(updates))
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
