"""Strategy "auto": the cost model's choice, the tables it reads, and that an auto request's
greedy text is AR's whatever the load."""
import json

import pytest

from tests.engine.conftest import L, NEW
from tridiff.engine import Engine
from tridiff.engine.cost import CostModel, load_table

FLAT = {1: 1.0, 1024: 1.0}                        # memory-bound (a GPU's regime): rows are free
STEEP = {1: 1.0, 4: 4.0, 16: 16.0, 64: 64.0}     # cost proportional to rows


def test_flat_cost_takes_linear_for_everyone():
    assert CostModel(FLAT).choose([2.5, 1.5, 3.0], [16, 16, 16], {}) == [True, True, True]


def test_proportional_cost_takes_ar_for_everyone():
    # linear costs 2L = 32 rows for ~2.5 tokens; AR 1 row for 1 token
    assert CostModel(STEEP).choose([2.5, 1.5, 3.0], [16, 16, 16], {}) == [False, False, False]


def test_one_request_alone_takes_linear_when_it_accepts_more_than_two():
    """Flat up to 16 rows: linear costs two calls for a tokens, AR one call for 1 token."""
    m = CostModel({1: 1.0, 16: 1.0, 64: 4.0})
    assert m.choose([2.5], [16], {}) == [True]
    assert m.choose([1.5], [16], {}) == [False]


def test_the_best_acceptance_gets_linear_first():
    """A fixed linear request (16 rows in each of its calls, 2 tokens) already pays for the
    draft and verify calls; they stay flat up to 32 rows: room for exactly one more
    linear request, and it goes to the one that accepts most."""
    table = {1: 1.0, 16: 1.0, 32: 1.0, 48: 3.0}
    use = CostModel(table).choose([1.2, 4.0, 2.0], [16, 16, 16], {("draft", 16): 16, ("verify", 16): 16}, 2.0)
    assert use == [False, True, False]


def test_fixed_rows_change_the_choice():
    """Rows that fixed-strategy requests already put in the draft and verify calls make
    linear cheaper for an auto request."""
    m = CostModel({1: 1.0, 16: 1.0, 32: 3.0, 64: 3.0})
    assert m.choose([1.1], [16], {}) == [False]
    assert m.choose([1.1], [16], {("draft", 16): 48, ("verify", 16): 48}, 6.0) == [True]


def test_measured_costs_rescale_the_table():
    m = CostModel(STEEP)
    m.observe(4, 0.008)
    assert m.cost(4) == pytest.approx(0.008) and m.cost(16) == pytest.approx(0.032)


def test_tables_load_and_bad_ones_are_refused(tmp_path):
    assert load_table(None, "cpu")[1] == 1.0 and load_table(None, "cuda")[1] == 1.0
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"rows": [1, 8], "cost": [1.0, 2.0]}))
    assert load_table(str(p), "cpu") == {1: 1.0, 8: 2.0}
    for bad in ({"rows": [1, 2]}, {"rows": [0, 2], "cost": [1, 2]}, {"rows": [1], "cost": [-1]}):
        with pytest.raises(ValueError, match="cost_table"):
            load_table(bad, "cpu")


# A made-up table under which linear (block 16: calls of 16+ rows) always beats AR (calls
# of at most 8 rows here).
AR_EXPENSIVE = {1: 100.0, 8: 100.0, 16: 1.0, 1024: 1.0}


@pytest.mark.parametrize("table", [AR_EXPENSIVE, STEEP], ids=["linear-wins", "ar-wins"])
def test_auto_text_is_ar_text_under_any_load(model, prompts, solo, table):
    """Auto requests run linear (a table under which it always wins: the tiny random model
    accepts about 1 draft per verify, so on a real table it would take AR) or AR, alone or
    among many: the text is AR greedy's every time."""
    spec = {"rows": list(table), "cost": list(table.values())}
    for n in (1, 5):
        eng = Engine(model, max_rows=8, max_context=512, prefill_chunk=16, cost_table=spec)
        ids = [eng.add_request(prompts[i % len(prompts)], strategy="auto", max_new_tokens=NEW, block_length=16)
               for i in range(n)]
        done = eng.run_until_done()
        ran = set()
        for i, rid in enumerate(ids):
            assert done[rid].tokens == solo(0, prompts[i % len(prompts)])
            ran |= set(done[rid].strategies_run)
        assert ran == ({"linear-spec"} if table is AR_EXPENSIVE else {"ar"}), (n, ran, [done[r].strategies_run for r in ids])
