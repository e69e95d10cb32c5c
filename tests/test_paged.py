"""The paged KV cache: block manager and scheduler alone (no model), then paged attention against the
contiguous reference (float32 and float64, ALiBi and RoPE, left padding, per-row lengths)."""

import pytest
import torch
from test_model import CONFIGS, make_model

from baichuan13b.paged import (
    BlockManager,
    ModelRunner,
    OutOfBlocksError,
    Scheduler,
    Sequence,
)
from baichuan13b.paged.batch_order import common_prefix, prefix_plan, shared_blocks
from baichuan13b.paged.block_manager import chain_hash
from baichuan13b.paged.graphs import DecodeGraphs, batch_buckets, bucket, width_buckets


def seq(tokens, **kw):
    return Sequence(token_ids=list(tokens), **kw)


# ---------------------------------------------------------------------------------------------- block manager
def test_allocate_and_free_return_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(range(10))  # 3 blocks
    bm.allocate(a)
    assert len(a.block_table) == 3 and len(set(a.block_table)) == 3 and bm.num_free == 5
    assert a.num_computed == 0 and all(bm.blocks[b].ref_count == 1 for b in a.block_table)
    bm.free(a)
    assert bm.num_free == 8 and a.block_table == [] and a.num_computed == 0


def test_hash_chain_depends_on_everything_before():
    h1 = chain_hash(None, [1, 2, 3, 4])
    assert chain_hash(None, [1, 2, 3, 4]) == h1 and chain_hash(None, [1, 2, 3, 5]) != h1
    # the same tokens after a different prefix are a different block
    assert chain_hash(chain_hash(None, [9, 9, 9, 9]), [1, 2, 3, 4]) != chain_hash(h1, [1, 2, 3, 4])
    assert chain_hash(None, [12, 3]) != chain_hash(None, [1, 23])  # token boundaries count


def computed(bm, s, n=None):
    """Pretend the model computed ``n`` (default: all) of ``s``'s tokens."""
    s.num_computed = len(s.token_ids) if n is None else n
    bm.commit(s)


def test_full_computed_blocks_are_shared_with_ref_counts():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq(range(10))
    bm.allocate(a)
    computed(bm, a)  # blocks 0 and 1 of a are full and registered; the third holds 2 positions
    b = seq(list(range(8)) + [50, 51, 52])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_computed == b.num_cached == 8
    assert b.block_table[2] not in a.block_table
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    assert bm.hit_tokens == 8
    c = seq([0, 1, 2, 3, 4, 5, 6, 99, 8, 9])  # differs inside the second block: only the first is shared
    bm.allocate(c)
    assert c.block_table[0] == a.block_table[0] and c.block_table[1] != a.block_table[1] and c.num_computed == 4
    held = list(a.block_table)
    bm.free(a)
    # block 0: b and c still hold it; block 1: b; a's partial third block is free again
    assert [bm.blocks[i].ref_count for i in held] == [2, 1, 0] and held[2] not in bm._cached


def test_uncomputed_blocks_are_not_shared():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq(range(12))
    bm.allocate(a)
    computed(bm, a, 4)  # only the first block is computed so far (chunked prefill)
    b = seq(range(12))
    bm.allocate(b)
    assert b.num_computed == 4 and b.block_table[0] == a.block_table[0] and b.block_table[1] != a.block_table[1]


def test_the_last_token_is_always_computed():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq(range(8))
    bm.allocate(a)
    computed(bm, a)
    b = seq(range(8))  # the same 8 tokens: the second block holds the last token, so only the first is reused
    bm.allocate(b)
    assert b.num_computed == 4 and b.num_pending == 4
    c = seq(range(9))
    bm.allocate(c)
    assert c.num_computed == 8 and c.num_pending == 1


def test_freed_blocks_stay_cached_then_are_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq([1, 2, 3, 4, 5])  # blocks [1,2] [3,4] [5]
    bm.allocate(a)
    computed(bm, a)
    bm.free(a)
    assert bm.num_free == 4 and bm.num_cached == 2 and bm.num_used == 0
    again = seq([1, 2, 3, 4, 6])
    bm.allocate(again)  # revives both cached blocks
    assert again.num_cached == 4 and bm.num_cached == 0 and bm.num_free == 1
    bm.free(again)
    # a new unrelated sequence needing all 4 blocks evicts the cached ones (tail first), then finds nothing
    other = seq([7, 8, 9, 10, 11, 12, 13])
    assert bm.can_allocate(other)
    bm.allocate(other)
    assert bm.num_free == 0 and bm.evictions == 2 and bm.match_prefix([1, 2, 3, 4, 5]) == []


def test_lru_evicts_least_recently_used_first():
    bm = BlockManager(num_blocks=5, block_size=2)
    old, new = seq([1, 2, 0]), seq([3, 4, 0])
    for s in (old, new):
        bm.allocate(s)
        computed(bm, s)
    bm.free(old)
    bm.free(new)  # cached: old's block, then new's block
    filler = seq([9, 9, 9, 9, 9, 9, 9, 9])  # 4 blocks: the 3 free ones and one eviction
    bm.allocate(filler)
    assert bm.evictions == 1
    assert bm.match_prefix([1, 2, 0]) == [] and len(bm.match_prefix([3, 4, 0])) == 1


def test_out_of_blocks():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = seq(range(9))
    bm.allocate(a)
    assert bm.num_free == 0 and not bm.can_allocate(seq([1]))
    with pytest.raises(OutOfBlocksError):
        bm.allocate(seq([1]))
    a.append(7)
    a.append(7)
    a.append(7)
    a.append(7)  # 13 tokens: a fourth block is needed
    assert not bm.can_append(a)
    with pytest.raises(OutOfBlocksError):
        bm.append(a)
    with pytest.raises(ValueError):
        bm.allocate(a)  # already holds blocks


def test_prefix_cache_off_shares_nothing():
    bm = BlockManager(num_blocks=8, block_size=2, prefix_cache=False)
    a = seq(range(6))
    bm.allocate(a)
    computed(bm, a)
    b = seq(range(6))
    bm.allocate(b)
    assert b.num_computed == 0 and not set(a.block_table) & set(b.block_table)
    bm.free(a)
    bm.free(b)
    assert bm.num_cached == 0 and bm.num_free == 8


def test_commit_can_register_only_the_first_blocks():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = seq(range(7))  # three full blocks
    bm.allocate(a)
    a.num_computed = 7
    bm.commit(a, max_blocks=1)
    bm.free(a)
    assert bm.num_cached == 1 and len(bm.match_prefix(list(range(7)))) == 1  # the others went back to free


# ---------------------------------------------------------------------------------------------- batch order
def test_common_prefix_and_shared_blocks():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2
    head = list(range(100, 108))  # two blocks of 4
    rows = [head + [1, 2, 3], [7] * 9, head[:4] + [9, 9, 9, 9, 9], head + [5, 6]]
    # rows 0 and 3 share both head blocks, row 2 shares one with them, row 1 nothing
    assert shared_blocks(rows, 4) == [2, 0, 1, 2]


def tree_prompts(count=40, seed=0, max_question=30):
    """Prompts built like k-shot prompts whose shots are dropped differently per question: a common header, one
    of several shot sequences (sharing their first shot or not), then a question of its own; lengths shuffled so
    that sorting by length interleaves the groups."""
    g = torch.Generator().manual_seed(seed)
    header = list(range(1000, 1011))
    shots = [list(range(2000 + 100 * k, 2000 + 100 * k + 13 + 5 * k)) for k in range(4)]
    groups = [shots[0] + shots[1] + shots[2], shots[0] + shots[2], shots[1] + shots[3], shots[3], []]
    rows = []
    for i in range(count):
        n = int(torch.randint(1, max_question, (1,), generator=g))
        rows.append(header + groups[i % len(groups)] + [5000 + i] + [7] * n)  # a unique first question token
    return rows


def ideal_tokens(rows, block_size):
    """Tokens to compute when every block shared by two prompts is computed once (independent of the plan)."""
    distinct, total = set(), 0
    for i, r in enumerate(rows):
        lcp = max(common_prefix(r, o) for j, o in enumerate(rows) if j != i)
        need = min(lcp, len(r) - 1) // block_size
        distinct.update(tuple(r[: k * block_size]) for k in range(1, need + 1))
        total += len(r) - need * block_size
    return total + block_size * len(distinct)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_prefix_plan_computes_every_shared_block_once(batch_size):
    rows, bs = tree_prompts(), 4
    plan = prefix_plan(rows, bs, batch_size)
    assert sorted(i for b in plan.batches for i in b) == list(range(len(rows)))
    assert all(len(b) <= batch_size for b in plan.batches)
    per_prompt = max(-(-len(r) // bs) for r in rows)
    bm = BlockManager(per_prompt * batch_size + plan.num_shared, bs)
    computed_tokens = 0
    for batch in plan.batches:
        seqs = [seq(rows[i]) for i in batch]
        for i, s in zip(batch, seqs):
            bm.allocate(s)
            assert s.num_cached == plan.reused[i]  # what the plan promised is in the cache
            computed_tokens += s.num_pending
        for i, s in zip(batch, seqs):
            s.num_computed = len(s.token_ids)
            bm.commit(s, max_blocks=plan.keep[i])
            bm.free(s)
    assert bm.evictions == 0
    assert computed_tokens == ideal_tokens(rows, bs)
    assert bm.num_cached == plan.num_shared


# ---------------------------------------------------------------------------------------------- scheduler
def test_scheduler_admits_by_free_blocks_and_caps_the_batch():
    bm = BlockManager(num_blocks=6, block_size=4)
    sch = Scheduler(bm, max_batch=3, prefill_chunk=100)
    seqs = [seq(range(i * 10, i * 10 + 7)) for i in range(4)]  # 2 blocks each
    for s in seqs:
        sch.add(s)
    plan = sch.schedule()
    assert plan.admitted == seqs[:3] and [s for s, _ in plan.prefill] == seqs[:3]
    assert [n for _, n in plan.prefill] == [7, 7, 7] and bm.num_free == 0 and list(sch.waiting) == [seqs[3]]


def test_scheduler_chunks_prefill_and_decodes_one_token():
    bm = BlockManager(num_blocks=10, block_size=4)
    sch = Scheduler(bm, max_batch=4, prefill_chunk=5)
    a, b = seq(range(8)), seq(range(20, 26))
    sch.add(a)
    sch.add(b)
    plan = sch.schedule()
    assert [(s, n) for s, n in plan.prefill] == [(a, 5)]  # the budget is spent on the oldest first
    sch.advance(plan.prefill)
    plan = sch.schedule()
    assert [(s, n) for s, n in plan.prefill] == [(a, 3), (b, 2)]
    sch.advance(plan.prefill)
    a.append(99)  # a sampled its first token
    plan = sch.schedule()
    assert plan.decode == [a] and plan.prefill == [(b, 4)]


def test_scheduler_preempts_the_newest_and_resumes_it():
    bm = BlockManager(num_blocks=4, block_size=2)
    sch = Scheduler(bm, max_batch=4, prefill_chunk=100)
    a, b = seq([1, 2, 3]), seq([4, 5, 6])  # 2 blocks each: the pool is full
    sch.add(a)
    sch.add(b)
    plan = sch.schedule()
    sch.advance(plan.prefill)
    a.append(7)
    b.append(8)
    a.append(9)  # a holds 5 tokens now and needs a third block
    plan = sch.schedule()
    assert plan.preempted == [b] and sch.running == [a] and list(sch.waiting) == [b] and sch.preemptions == 1
    assert b.block_table == [] and b.num_computed == 0 and b.token_ids == [4, 5, 6, 8]  # tokens are kept
    assert len(a.block_table) == 3
    sch.remove(a)
    plan = sch.schedule()  # b comes back and recomputes prompt + generated tokens, its prefix from the cache
    assert plan.admitted == [b] and b.num_cached == 2 and plan.prefill == [(b, 2)]


def test_scheduler_remove_returns_blocks():
    bm = BlockManager(num_blocks=4, block_size=2)
    sch = Scheduler(bm, max_batch=4, prefill_chunk=100)
    a, b = seq([1, 2, 3]), seq([4, 5, 6, 7, 8, 9])
    sch.add(a)
    sch.add(b)
    sch.schedule()
    assert list(sch.waiting) == [b]
    sch.remove(b)
    sch.remove(a)
    assert bm.num_free == 4 and not sch.running and not sch.waiting


# ---------------------------------------------------------------------------------------------- paged attention
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_paged_rows_equal_the_contiguous_reference(name, dtype):
    """Rows of different lengths, prefilled in chunks (several rows per forward, right padded) then decoded
    together through scattered block tables, equal the contiguous cache of a left-padded batch and the plain
    forward of each sequence."""
    model = make_model(name).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (9, 4, 6)]
    runner = ModelRunner(model, num_blocks=16, block_size=4)
    bm = BlockManager(16, 4)
    bm.allocate(seq(range(3)))  # a first, unrelated sequence: block tables do not start at block 0
    seqs = [seq(p) for p in prompts]
    for s in reversed(seqs):
        bm.allocate(s)
    # prefill: rows 0 and 1 together (5 and 4 tokens), then rows 0 and 2 (4 and 6 tokens)
    runner.run([(seqs[0], 5), (seqs[1], 4)])
    seqs[0].num_computed, seqs[1].num_computed = 5, 4
    first = runner.run([(seqs[0], 4), (seqs[2], 6)])
    seqs[0].num_computed, seqs[2].num_computed = 9, 6
    # the contiguous reference: the left-padded batch through a KVCache
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    ref_cache = model.new_cache(3, T + 4)
    ref = model(ids, attention_mask=mask, cache=ref_cache).logits[:, -1]
    torch.testing.assert_close(first[0], ref[0], **tol)
    torch.testing.assert_close(first[1], ref[2], **tol)
    last = ref
    for step in range(4):
        nxt = last.argmax(-1)  # [3]
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
            bm.append(s)
        out = runner.run([(s, 1) for s in seqs])
        for s in seqs:
            s.num_computed += 1
        mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
        last = model(nxt[:, None], attention_mask=mask, cache=ref_cache).logits[:, -1]
        torch.testing.assert_close(out, last, **tol)
        for b, s in enumerate(seqs):  # and the plain forward of each whole sequence
            torch.testing.assert_close(out[b], model(torch.tensor([s.token_ids])).logits[0, -1], **tol)


def test_graph_buckets_cover_every_batch_and_width():
    assert batch_buckets(1) == [1] and batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert width_buckets(1) == [1] and width_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert width_buckets(6) == [1, 2, 4, 6]
    for n in range(1, 41):
        b = bucket(n, batch_buckets(40))
        assert b >= n and b - n < 8
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket(41, batch_buckets(40))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fixed_shape_decode_steps_give_the_same_logits(name):
    """Decode steps at the padded shapes of the CUDA graphs (3 rows in a batch of 4, block tables padded to a
    power of two, padded rows on the scratch block) equal the plain step, on static buffers that keep their
    addresses from step to step (what a captured graph reads), and leave the real blocks as the plain step does."""
    model = make_model(name)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], list(range(20, 30))]
    runs = []
    for graphs in (False, True):
        runner = ModelRunner(model, num_blocks=16, block_size=4, decode_graphs=graphs, max_batch=5, max_blocks=8)
        assert (runner.graphs is not None) == graphs
        bm = BlockManager(16, 4)
        seqs = [seq(p) for p in prompts]
        for s in seqs:
            bm.allocate(s)
            runner.run([(s, len(s) - 1)])
            s.num_computed = len(s) - 1
        steps, shapes, addresses = [], [], []
        for t in range(9):  # the longest row grows from 3 to 5 blocks: width bucket 4, then 8
            steps.append(runner.run([(s, 1) for s in seqs]))
            if graphs:
                g = runner.graphs
                shapes.append(g.shape(3, max(-(-(s.num_computed + 1) // 4) for s in seqs)))
                addresses.append([b.data_ptr() for b in (g.input_ids, g.positions, g.write_slots, g.key_lengths)]
                                 + [g.tables[w].data_ptr() for w in sorted(g.tables)])
            for s in seqs:
                s.num_computed += 1
                s.append(40 + t)
                bm.append(s)
        steps.append(runner.run([(seqs[1], 1)]))  # one row alone: batch bucket 1
        runs.append((steps, [runner.cache.k[0][:16].clone(), runner.cache.v[-1][:16].clone()]))
        if graphs:
            assert shapes[0] == (4, 4) and shapes[-1] == (4, 8)
            assert all(a[:4] == addresses[0][:4] for a in addresses)
            assert addresses[-1][4] == addresses[0][4]  # the width-4 table was not reallocated
    for plain, fixed in zip(runs[0][0], runs[1][0]):
        assert plain.shape == fixed.shape
        torch.testing.assert_close(plain, fixed, atol=1e-5, rtol=1e-5)
    for plain, fixed in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(plain, fixed, atol=1e-5, rtol=1e-5)  # GEMMs of 3 and 4 rows round apart


def test_decode_graphs_are_refused_off_cuda():
    model = make_model("alibi-8h")
    runner = ModelRunner(model, num_blocks=4, block_size=4)
    assert runner.graphs is None  # the default on a CPU
    with pytest.raises(ValueError, match="CUDA graphs need the KV pool on a CUDA device"):
        DecodeGraphs(model, runner.cache, max_batch=2, max_blocks=4, capture=True)
    with pytest.raises(ValueError, match="needs max_batch and max_blocks"):
        ModelRunner(model, num_blocks=4, block_size=4, decode_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_captured_decode_graphs_equal_eager_steps_on_cuda(name):
    model = make_model(name).cuda()
    results = []
    for graphs in (False, True):
        runner = ModelRunner(model, num_blocks=16, block_size=4, decode_graphs=graphs, max_batch=4, max_blocks=8)
        bm = BlockManager(16, 4)
        seqs = [seq(p) for p in ([5, 6, 7, 8, 9], [12, 13])]
        for s in seqs:
            bm.allocate(s)
            runner.run([(s, len(s) - 1)])
            s.num_computed = len(s) - 1
        out = []
        for t in range(6):
            out.append(runner.run([(s, 1) for s in seqs]))
            for s in seqs:
                s.num_computed += 1
                s.append(30 + t)
                bm.append(s)
        if graphs:
            assert runner.graphs.capture and runner.graphs.graphs and runner.graphs.capture_error is None
        results.append(torch.stack(out))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)


def test_paged_batch_rejects_what_it_cannot_address():
    model = make_model("alibi-8h")
    runner = ModelRunner(model, num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="cover"):
        runner.cache.batch([[0]], [0], [5])  # one block holds 4 positions, not 5
    s = seq(range(5))
    BlockManager(4, 4).allocate(s)
    batch = runner.cache.batch([s.block_table], [0], [5])
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([s.token_ids]), attention_mask=torch.ones(1, 5), cache=batch)


def test_a_sequence_can_stay_out_of_the_prefix_cache():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = seq(range(6))
    bm.allocate(a)
    computed(bm, a)
    private = seq(range(6), prefix_cache=False)
    bm.allocate(private)
    computed(bm, private)
    assert private.num_cached == 0 and not set(private.block_table) & set(a.block_table)
    bm.free(a)
    bm.free(private)
    assert bm.num_cached == 3  # a's three full blocks; none of the private sequence's


@pytest.mark.parametrize("name", ["alibi-8h", "rope-8h"])
def test_logits_with_a_reused_prefix_equal_a_full_prefill(name):
    """A prompt whose first blocks come from the prefix cache gets the logits of computing it whole (float32:
    within rounding noise), at its last token and on the decode steps after it."""
    model = make_model(name)
    shared = list(range(10, 30))
    first, second = shared + [40, 41, 42], shared + [50, 51, 52, 53]
    results = []
    for reuse in (True, False):
        runner = ModelRunner(model, num_blocks=32, block_size=4)
        bm = BlockManager(32, 4, prefix_cache=reuse)
        a = seq(first)
        bm.allocate(a)
        runner.run([(a, len(a))])
        computed(bm, a)
        bm.free(a)
        b = seq(second)
        bm.allocate(b)
        assert b.num_cached == (20 if reuse else 0)
        logits = [runner.run([(b, b.num_pending)])]
        computed(bm, b)
        for t in (60, 61, 62):
            b.append(t)
            bm.append(b)
            logits.append(runner.run([(b, 1)]))
            computed(bm, b)
        results.append(torch.cat(logits))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(results[0].argmax(-1), results[1].argmax(-1))
