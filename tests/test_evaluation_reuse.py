"""``baichuan eval`` with the k-shot prefix of a subject computed once: the same scores and accuracies as
computing every prompt whole, with far fewer tokens through the model."""

import pytest
import torch
from test_evaluation import FIXTURES, tiny_model, tok  # noqa: F401  (tok is a fixture)
from test_paged import ideal_tokens, tree_prompts

from baichuan13b.evaluation import (
    EvalSettings,
    Prompt,
    build_prompt,
    evaluate,
    get_benchmark,
    letter_token_ids,
    load_questions,
    score_prompts,
)


class CountTokens:
    """Counts the tokens that go through the model's trunk."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += args[0].shape[0] * args[0].shape[1]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_scores_with_and_without_prefix_reuse_are_the_same(tok, batch_size):  # noqa: F811
    model = tiny_model(tok.vocab_size, seed=3)
    bench = get_benchmark("mmlu")
    dev = load_questions(bench, FIXTURES / "mmlu", "anatomy", "dev")
    questions = load_questions(bench, FIXTURES / "mmlu", "anatomy", "test")
    prompts = [build_prompt(bench, "anatomy", dev[:5], q, tok, 1024) for q in questions]
    ids = letter_token_ids(tok, "encode")
    counts = {}
    scores = {}
    for reuse in (True, False):
        counter = CountTokens(model)
        scores[reuse] = torch.tensor(score_prompts(model, tok, prompts, ids, batch_size, prefix_cache=reuse))
        counter.handle.remove()
        counts[reuse] = counter.n
    torch.testing.assert_close(scores[True], scores[False], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the plain forward of a whole prompt
        direct = model(torch.tensor([prompts[-1].ids])).logits[0, -1, ids]
    torch.testing.assert_close(scores[True][-1], direct, atol=1e-5, rtol=1e-5)
    if batch_size == 1:
        assert counts[False] == sum(len(p.ids) for p in prompts)
    assert counts[True] < counts[False] / 2  # the shots were computed once per batch, not once per question


def test_per_subject_accuracy_is_identical_with_and_without_reuse(tok, tmp_path):  # noqa: F811
    model = tiny_model(tok.vocab_size, seed=5)
    results = {}
    for reuse in (True, False):
        settings = EvalSettings(split="test", shots=5, batch_size=2, prefix_cache=reuse)
        report = evaluate(model, tok, ["cmmlu", "mmlu"], tmp_path / str(reuse), data_dir=FIXTURES,
                          settings=settings, progress=False)
        results[reuse] = {t: {s: v["accuracy"] for s, v in report["tasks"][t]["subjects"].items()}
                          for t in ("cmmlu", "mmlu")}
    assert results[True] == results[False]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_prompts_with_fewer_shots_still_share_their_longest_prefix(batch_size):
    """Questions whose prompts keep different shots (as CMMLU's rule drops them per question) share the header and
    every shot up to the first one that differs: each such block is computed once in the subject, whatever the
    order of the prompts' lengths; and the scores are those of computing every prompt whole."""
    rows = tree_prompts(count=30, seed=1, max_question=120)  # the shared blocks fit in one prompt's worth
    prompts = [Prompt(text="", ids=r, shots=0, truncated=False) for r in rows]
    model = tiny_model(6000, seed=2)
    scores, counts = {}, {}
    for reuse in (True, False):
        counter = CountTokens(model)
        scores[reuse] = torch.tensor(score_prompts(model, None, prompts, [10, 11, 12, 13], batch_size,
                                                   prefix_cache=reuse))
        counter.handle.remove()
        counts[reuse] = counter.n
    torch.testing.assert_close(scores[True], scores[False], atol=1e-5, rtol=1e-5)
    if batch_size == 1:  # no padding: exactly the tokens that no earlier prompt computed
        assert counts[True] == ideal_tokens(rows, 16)
    else:
        assert counts[True] <= 1.2 * ideal_tokens(rows, 16)  # rows of a batch have similar lengths
