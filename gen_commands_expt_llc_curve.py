"""Write a λ̂-over-training sweep: one fully explicit ``python expt_llc_curve.py ... with ...`` command per line.

A sweep is a mapping from ``expt_llc_curve.py`` config keys (dotted, e.g. ``training_config.optim``)
to a value or a list of values; the lists form a Cartesian product, expanded in the order the keys
are given (the last key varies fastest). It comes from a preset, a JSON or YAML file, and
``--set KEY=VALUE`` flags, each overriding the one before. The key ``temperature`` is not a config
key: it sets ``training_config.learning_rate`` = T × ``training_config.batch_size`` (the SGD
temperature T = η/B of Sclocchi et al. 2023). Invalid combinations are skipped and counted: Adam
with a momentum. The output file is written whole, and never over an existing one without
``--force``.

    python gen_commands_expt_llc_curve.py outputs/llc_curve_commands.txt                 # the reference sweep
    python gen_commands_expt_llc_curve.py outputs/sgd_noise_commands.txt --preset sgd_noise
    python gen_commands_expt_llc_curve.py outputs/mine.txt --grid my_sweep.yaml --set seed='[0, 1, 2]'

Presets:

* ``reference``: ResNet18 on CIFAR-10 with the reference README's settings (ε = 2e-7, γ = 1, 5000
  SGLD steps of batch 2048, 30 001 training steps, λ̂ every 1000), crossed over the optimisers of
  Furman & Lau (2024, §5): SGD, SGD with momentum 0.9 and Adam, learning rates 0.005 and 0.001,
  training batches 128 and 512, seeds 0-2 (the reference generator's exact grid is not public;
  this is our reading of the paper's figure). 2 × 2 × 2 × 2 × 3 = 48 lines less the 12 Adam lines
  with momentum: 36.
* ``sgd_noise``: the SGD-noise study's grid on ``mnist_parity`` (Sclocchi et al. 2023, reference
  commands ``--arch mlp --act relu --L 5 --h 128 --alpha 32768 --loss hinge --bs 16 --pte 32768``):
  temperatures 2^−13 … 2^2, ptr 1024 … 16384, seeds 0-4: 16 × 5 × 5 = 400 lines.
* ``sgd_noise_cpu``: the same question sized for one CPU core (about 10 minutes in all):
  a 2×64 ReLU MLP with the hinge loss on ``mnist1d_parity`` (ptr 2048), batch 16, 2001 steps,
  temperatures 2^−11, 2^−9, 2^−7, 2^−5, seeds 0-2: 12 lines.
* ``mnas`` and ``mnas_cifar``: the SGD-noise study's MNAS sweeps (reference commands ``--arch mnas
  --act relu --L 1 --h 64 --alpha 32768 --loss hinge --dynamics sgd --bs 16 --pte 32768
  --ckpt_grad_stats 128``, ``--max_wall`` 10000 s on ``mnist_parity``, 8000 s on ``cifar_animal``):
  temperatures 2^−20 … 2^0, ptr 1024 … 16384, seeds 0-4: 21 × 5 × 5 = 525 lines each. The output
  scale α needs an MNAS without BatchNorm (``model_data_config.batch_norm=False``).

The YAML/JSON file is a mapping such as::

    name: my_sweep
    model_data_config.data_name: digits_parity
    temperature: [0.001, 0.01]
    seed: [0, 1, 2]

where ``name`` (the folder ``outputs/<name>/`` and ``expt_name``), ``output_dir`` and ``mongo_db``
(``host:port:db``, replacing the folder observer) say where the runs go.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
from pathlib import Path
from typing import Any

from sweep import config_word, observer_flag, write_commands

__all__ = ["PRESETS", "make_commands", "main"]

WHERE = ("name", "output_dir", "mongo_db")  # sweep keys that are not experiment config keys

REFERENCE_BASE: dict[str, Any] = {
    "sgld_config.epsilon": 2e-07,
    "sgld_config.gamma": 1.0,
    "sgld_config.num_steps": 5000,
    "sgld_config.batch_size": 2048,
    "loss_trace_minibatch": True,
    "model_data_config.model_name": "resnet18",
    "model_data_config.data_name": "cifar10",
    "training_config.num_steps": 30001,
    "training_config.l2_regularization": None,
    "force_realisable": False,
    "logging_period": 1000,
    "do_plot": False,
    "verbose": False,
}

# The reference's MNAS command line (its sweep axes are in the presets).
MNAS_BASE: dict[str, Any] = {
    "model_data_config.model_name": "mnas",
    "model_data_config.activation": "relu",
    "model_data_config.depth": 1,
    "model_data_config.width": 64,
    "model_data_config.batch_norm": False,
    "model_data_config.alpha": 32768.0,
    "model_data_config.loss": "hinge",
    "model_data_config.pte": 32768,
    "training_config.optim": "sgd",
    "training_config.momentum": None,
    "training_config.batch_size": 16,
    "training_config.num_steps": 1_000_001,
    "ckpt_grad_stats": 128,
    "sgld_config.epsilon": 1e-6,
    "sgld_config.num_steps": 2000,
    "sgld_config.batch_size": 256,
    "logging_period": 5000,
}

PRESETS: dict[str, dict[str, Any]] = {
    "reference": {
        "name": "llc_curve_sweep",
        **REFERENCE_BASE,
        "training_config.optim": ["sgd", "adam"],
        "training_config.momentum": [None, 0.9],
        "training_config.learning_rate": [0.005, 0.001],
        "training_config.batch_size": [128, 512],
        "seed": [0, 1, 2],
    },
    "sgd_noise": {
        "name": "sgd_noise_sweep",
        "model_data_config.model_name": "mlp",
        "model_data_config.data_name": "mnist_parity",
        "model_data_config.depth": 5,
        "model_data_config.width": 128,
        "model_data_config.activation": "relu",
        "model_data_config.alpha": 32768.0,
        "model_data_config.loss": "hinge",
        "model_data_config.pte": 32768,
        "training_config.optim": "sgd",
        "training_config.momentum": None,
        "training_config.batch_size": 16,
        "training_config.num_steps": 100_001,
        "sgld_config.epsilon": 1e-6,
        "sgld_config.num_steps": 2000,
        "sgld_config.batch_size": 256,
        "logging_period": 5000,
        "temperature": [2.0**i for i in range(-13, 3)],
        "model_data_config.ptr": [1024, 2048, 4096, 8192, 16384],
        "seed": [0, 1, 2, 3, 4],
    },
    "mnas": {
        "name": "mnas_sweep",
        **MNAS_BASE,
        "model_data_config.data_name": "mnist_parity",
        "max_wall": 10000.0,
        "temperature": [2.0**i for i in range(-20, 1)],
        "model_data_config.ptr": [1024, 2048, 4096, 8192, 16384],
        "seed": [0, 1, 2, 3, 4],
    },
    "mnas_cifar": {
        "name": "mnas_cifar_sweep",
        **MNAS_BASE,
        "model_data_config.data_name": "cifar_animal",
        "max_wall": 8000.0,
        "temperature": [2.0**i for i in range(-20, 1)],
        "model_data_config.ptr": [1024, 2048, 4096, 8192, 16384],
        "seed": [0, 1, 2, 3, 4],
    },
    "sgd_noise_cpu": {
        "name": "sgd_noise_cpu",
        "device": "cpu",
        "model_data_config.model_name": "mlp",
        "model_data_config.data_name": "mnist1d_parity",
        "model_data_config.depth": 2,
        "model_data_config.width": 64,
        "model_data_config.loss": "hinge",
        "model_data_config.ptr": 2048,
        "model_data_config.pte": 1000,
        "training_config.optim": "sgd",
        "training_config.batch_size": 16,
        "training_config.num_steps": 2001,
        "sgld_config.epsilon": 1e-4,
        "sgld_config.gamma": 100.0,
        "sgld_config.num_steps": 300,
        "sgld_config.num_burnin_steps": 100,
        "sgld_config.num_chains": 2,
        "sgld_config.batch_size": 256,
        "logging_period": 250,
        "temperature": [2.0**-11, 2.0**-9, 2.0**-7, 2.0**-5],
        "seed": [0, 1, 2],
    },
}


def _invalid(point: dict[str, Any]) -> str | None:
    if point.get("training_config.optim") == "adam" and point.get("training_config.momentum") is not None:
        return "adam with momentum"
    return None


def make_commands(sweep: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Expand a sweep into command lines, in a deterministic order.

    Args:
        sweep: Config key → value or list of values, plus optional ``name``, ``output_dir``,
            ``mongo_db`` and ``temperature``.

    Returns:
        (commands, reasons for each skipped combination).

    Raises:
        ValueError: If a list is empty, ``temperature`` comes without ``training_config.batch_size``
            or together with ``training_config.learning_rate``, or a key is not a string.
    """
    where = {k: sweep[k] for k in WHERE if k in sweep}
    grid = {k: v for k, v in sweep.items() if k not in WHERE}
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"sweep keys must be config keys such as 'seed', got {key!r}")
        if isinstance(values, list) and not values:
            raise ValueError(f"{key} has an empty list of values: nothing to sweep")
    if "temperature" in grid and ("training_config.learning_rate" in grid
                                  or "training_config.batch_size" not in grid):
        raise ValueError("temperature sets training_config.learning_rate = T x training_config.batch_size: give "
                         "training_config.batch_size and no training_config.learning_rate")
    name = where.get("name", "llc_curve_sweep")
    observer = observer_flag(name, where.get("output_dir", "outputs"), where.get("mongo_db"))
    keys = list(grid)
    axes = [v if isinstance(v, list) else [v] for v in grid.values()]
    commands, skipped = [], []
    for combo in itertools.product(*axes):
        point = dict(zip(keys, combo, strict=True))
        reason = _invalid(point)
        if reason:
            skipped.append(reason)
            continue
        if "temperature" in point:
            temp = point.pop("temperature")
            point["training_config.learning_rate"] = temp * point["training_config.batch_size"]
        updates = [config_word("expt_name", name)] + [config_word(k, v) for k, v in point.items()]
        commands.append(f"python expt_llc_curve.py {observer} with " + " ".join(updates))
    return commands, skipped


def _read_grid(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        grid = yaml.safe_load(text)
    else:
        grid = json.loads(text)
    if not isinstance(grid, dict):
        raise ValueError(f"{path} must hold a mapping of config keys to values, got {type(grid).__name__}")
    return grid


def _parse_set(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set wants KEY=VALUE, e.g. seed='[0, 1]', not {item!r}")
    try:
        return key, ast.literal_eval(value)  # numbers, None, True, lists, quoted strings
    except (ValueError, SyntaxError):
        return key, value  # a bare string such as sgd


def main(argv: list[str] | None = None) -> list[str]:
    """Parse the flags, expand the sweep and write OUT (or print it without OUT).

    Args:
        argv: Command-line arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The commands.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="file to write, one command per line (default: print)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="reference", help="starting sweep")
    parser.add_argument("--grid", help="JSON or YAML file of KEY: value-or-list, over the preset")
    parser.add_argument("--no-preset", action="store_true", help="start from an empty sweep, not a preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key; VALUE is a Python literal (a list sweeps it), e.g. --set seed='[0,1]'")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    args = parser.parse_args(argv)
    try:
        sweep = {} if args.no_preset else dict(PRESETS[args.preset])
        if args.grid:
            sweep.update(_read_grid(args.grid))
        sweep.update(_parse_set(item) for item in args.set)
        commands, skipped = make_commands(sweep)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    note = f"{len(commands)} commands" + (f"; skipped {len(skipped)} ({', '.join(sorted(set(skipped)))})"
                                          if skipped else "")
    try:
        write_commands(commands, args.out, overwrite=args.force, note=note)
    except FileExistsError as err:
        parser.error(str(err))
    return commands


if __name__ == "__main__":
    main()
