"""sketch_store.py: blocks merge to the one-process sketch; the store resumes, detects damage, refuses foreign blocks.

Equality with ``curvature.top_eigs_sketched`` is exact here (``torch.equal``): one process, the same
float32 products and the same LAPACK calls. Across processes (the SLURM test in
``tests/test_expt_hessian_sketch.py``) it is asserted to 1e-6 relative instead.
"""

import random

import pytest
import torch
from torch import nn

import curvature as cv
from models.mlp import MLP
from sketch_store import BlockHeader, SketchPlan, SketchStore, measure_block, model_hash, solve_sketch

SPEC = {"model": "quadratic", "d": 40}


def tiny_mlp_hessian():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 5, generator=g), torch.randint(0, 3, (100,), generator=g)
    model = MLP(5, [7], 3)  # d = 6·7 + 8·3 = 66
    return cv.hessian_operator(model, nn.functional.cross_entropy, (x, y))


def test_blocks_in_any_order_merge_to_the_one_process_sketch():
    H = tiny_mlp_hessian()
    plan = SketchPlan(dim=66, num_measurements=20, num_inner=34, block_size=6, seed=123)
    assert plan.num_blocks == 4 + 6 and plan.block_columns(3) == ("outer", 18, 20)
    assert plan.block_columns(9) == ("inner", 30, 34) and plan.block_shape(9) == (34, 4)
    order = list(range(plan.num_blocks))
    random.Random(0).shuffle(order)
    blocks = {i: measure_block(H, plan, i) for i in order}
    outer = torch.cat([blocks[i] for i in range(4)], dim=1)
    inner = torch.cat([blocks[i] for i in range(4, 10)], dim=1)
    vals, vecs = solve_sketch(plan, outer, inner, 8)
    ref_vals, ref_vecs = cv.top_eigs_sketched(H, 8, num_measurements=20, seed=123, block=6, recovery="oversampled",
                                              num_inner=34)
    assert torch.equal(vals, ref_vals) and torch.equal(vecs, ref_vecs)
    # another seed is another sketch
    other = SketchPlan(66, 20, 34, 6, seed=124)
    assert not torch.equal(measure_block(H, other, 0), blocks[0])


def test_plan_and_solve_check_their_sizes():
    with pytest.raises(ValueError, match="need 1 <= num_measurements < num_inner <= d=10"):
        SketchPlan(dim=10, num_measurements=8, num_inner=12, block_size=4, seed=0)
    plan = SketchPlan(dim=10, num_measurements=4, num_inner=8, block_size=4, seed=0)
    with pytest.raises(ValueError, match=r"block index must be an int in \[0, 3\), got 3"):
        plan.block_columns(3)
    with pytest.raises(ValueError, match="do not fit the plan"):
        solve_sketch(plan, torch.zeros(10, 3), torch.zeros(8, 8), 2)


def header(plan: SketchPlan, i: int, step: int = 100, seed: int = 0, hash_: str = "abc") -> BlockHeader:
    return BlockHeader.expected(plan, step, seed, hash_, i)


PLAN = SketchPlan(dim=50, num_measurements=6, num_inner=10, block_size=4, seed=7)


def test_complete_blocks_read_back_and_missing_ones_are_named(tmp_path):
    store = SketchStore(tmp_path)
    data = {i: torch.randn(PLAN.block_shape(i)) for i in range(PLAN.num_blocks)}
    for i in (0, 2, 3):
        store.write_block(header(PLAN, i), data[i])
    assert store.block_status(header(PLAN, 0)) == "complete"
    assert torch.equal(store.read_block(header(PLAN, 2)), data[2])
    assert store.block_status(header(PLAN, 1)) == "missing"
    assert not list(tmp_path.rglob("*.tmp"))  # the temporary names are gone
    headers = [header(PLAN, i) for i in range(PLAN.num_blocks)]
    with pytest.raises(ValueError, match=r"step 100: 2 of 5 blocks are not complete.*block 1 missing; block 4 missing"):
        store.load_sketch(headers, PLAN)
    for i in (1, 4):
        store.write_block(header(PLAN, i), data[i])
    outer, inner = store.load_sketch(headers, PLAN)
    assert torch.equal(outer, torch.cat([data[0], data[1]], dim=1)) and outer.shape == (50, 6)
    assert torch.equal(inner, torch.cat([data[2], data[3], data[4]], dim=1)) and inner.shape == (10, 10)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
def test_a_cut_off_or_corrupted_block_is_damaged_not_read(tmp_path, damage):
    store = SketchStore(tmp_path)
    block = torch.randn(50, 4)
    path = store.write_block(header(PLAN, 0), block)
    raw = path.read_bytes()
    if damage == "truncated":  # cut off mid-write (a copy, a full disk): the end of the file is gone
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "flipped":  # same size, one byte of the data changed: Fletcher-32 catches it
        offset = raw.find(block.numpy().tobytes()[:64])
        assert offset > 0
        corrupted = bytearray(raw)
        corrupted[offset + 10] ^= 0xFF
        path.write_bytes(bytes(corrupted))
    else:
        path.write_bytes(b"")
    status = store.block_status(header(PLAN, 0))
    assert status.startswith("damaged"), status
    with pytest.raises(ValueError, match="block 0 damaged"):
        store.load_sketch([header(PLAN, i) for i in range(PLAN.num_blocks)], PLAN)


@pytest.mark.parametrize("field, value", [("step", 200), ("seed", 1), ("hash_", "another-model")])
def test_a_block_of_another_step_seed_or_model_is_refused(tmp_path, field, value):
    store = SketchStore(tmp_path)
    path = store.write_block(header(PLAN, 0), torch.randn(50, 4))
    wanted = header(PLAN, 0, **{field: value})
    # a block file copied to where another sketch's block belongs
    target = store.block_path(wanted.step, 0)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    name = {"hash_": "model_hash"}.get(field, field)
    with pytest.raises(ValueError, match=rf"is a block of another sketch: .*{name} .*\(expected {value!r}\)"):
        store.block_status(wanted)
    other_plan = SketchPlan(dim=50, num_measurements=6, num_inner=10, block_size=4, seed=8)
    with pytest.raises(ValueError, match=r"sketch_seed 7 \(expected 8\)"):
        store.read_block(header(other_plan, 0))


def test_a_failed_write_leaves_no_block(tmp_path, monkeypatch):
    store = SketchStore(tmp_path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("h5py.Group.create_dataset", fail)
    with pytest.raises(OSError, match="disk full"):
        store.write_block(header(PLAN, 0), torch.randn(50, 4))
    assert store.block_status(header(PLAN, 0)) == "missing"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_parameters_round_trip_and_another_model_is_refused(tmp_path):
    store = SketchStore(tmp_path)
    w = torch.randn(40)
    hash_ = store.save_params(5, SPEC, w)
    assert hash_ == model_hash(SPEC, w) != model_hash(SPEC, w + 1e-6)
    loaded, loaded_hash = store.load_params(5, SPEC)
    assert torch.equal(loaded, w) and loaded_hash == hash_
    with pytest.raises(ValueError, match=r"another model: d 40 \(expected 41\)"):
        store.load_params(5, {**SPEC, "d": 41})
    with pytest.raises(FileNotFoundError, match="no parameters saved at step 6"):
        store.load_params(6, SPEC)
    raw = store.params_path(5).read_bytes()
    store.params_path(5).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cannot be read"):
        store.load_params(5, SPEC)
