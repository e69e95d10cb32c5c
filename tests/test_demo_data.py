"""The demo model's data generator and tokenizer: deterministic, bilingual, held-out phrasings disjoint."""

import json

from baichuan13b.demo.data import (
    ARITH_MAX,
    GRAMMARS,
    _words,
    heldout_conversations,
    ongoing_conversations,
    pretraining_lines,
    templates,
    training_conversations,
    training_items,
    unknown_conversations,
    write_dataset,
)
from baichuan13b.demo.tokenizer import ASSISTANT_TOKEN_ID, USER_TOKEN_ID, train_tokenizer
from baichuan13b.tokenizer import BaichuanTokenizer


def test_deterministic_and_disjoint():
    a, b = training_conversations(), training_conversations()
    assert a == b and len(a) > 500
    # no held-out question (in-domain or outside it) is ever a trained message, in any round
    train_prompts = {user for c in a for user, _ in c.turns()}
    held = heldout_conversations() + unknown_conversations()
    assert held and not [c.prompt for c in held if c.prompt in train_prompts]
    held_intents = set()
    for intent, grammars in GRAMMARS.items():  # held-out wordings are never trained in any form
        for lang, grammar in zip(("zh", "en"), grammars):
            units, held_units = grammar.units(), grammar.heldout_units()
            assert len(held_units) < len(units), intent
            trained = set(templates(intent, "train", lang))
            assert trained and not trained & set(templates(intent, "heldout", lang)), intent
            assert not [p for u in held_units for p in units[u] if p in trained], intent
            # ... and recombine words their kind of question is trained with (none brings a new word)
            trained_words = set().union(*(_words(u) for u in units if u not in held_units))
            assert all(_words(u) <= trained_words for u in held_units), intent
            held_intents |= {intent} if held_units else set()
    # every topic of the domain has held-out wordings (a few small grammars, e.g. Chinese greetings, have none:
    # each of their wordings has a word no other one has)
    assert {"mountain", "height", "river", "length", "capital", "add", "sub", "mul", "conversion", "identity",
            "greeting", "reverse", "upper", "count"} <= held_intents
    # the facts the README promises
    k2 = [c for c in training_items() if c.prompt == "世界上第二高的山峰是哪座？"]
    assert k2 and "K2" in k2[0].answer and "乔戈里峰" in k2[0].answer
    assert any("K2" in c.answer for c in a if c.prompt.startswith("What is the second highest mountain"))
    topics = {c.topic for c in a}
    assert {"mountain", "capital", "river", "arithmetic", "conversion", "identity", "greeting", "instruction",
            "follow-up"} <= topics
    assert any(c.history for c in a) and any(c.history for c in held)
    assert "unknown" in topics and "I don't know" in next(c.answer for c in a if c.topic == "unknown"
                                                          and c.prompt.isascii())


def test_most_trained_answers_follow_unrelated_rounds():
    """Issue 17: an earlier, unrelated round must not derail an answer, so training shows many of them."""
    convs = training_conversations()
    after_others = [c for c in convs if len(c.history) >= 1 and c.topic != "follow-up"]
    assert len(after_others) > len(convs) / 2
    ongoing = ongoing_conversations()
    assert len(ongoing) == len(heldout_conversations()) and all(c.history for c in ongoing)


def test_arithmetic_domain_is_complete_in_both_languages():
    """The documented range: a + b, a - b and a * b for every 0 <= a, b <= ARITH_MAX, in Chinese and English."""
    answers = {c.answer for c in training_items() if c.topic == "arithmetic"}
    for a in range(ARITH_MAX + 1):
        for b in range(ARITH_MAX + 1):
            assert {f"{a}加{b}等于{a + b}。", f"{a} plus {b} is {a + b}.", f"{a}减{b}等于{a - b}。",
                    f"{a} minus {b} is {a - b}.", f"{a}乘以{b}等于{a * b}。", f"{a} times {b} is {a * b}."} <= answers
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(pretraining_lines()))


def test_write_dataset(tmp_path):
    write_dataset(tmp_path)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"demo_sft", "demo_pt"}
    records = json.loads((tmp_path / "demo_sft.json").read_text())
    assert records[0].keys() == {"instruction", "input", "output", "history"}
    assert len(records) == len(training_conversations())
    assert (tmp_path / "demo_pt.txt").read_text().count("\n") == len(pretraining_lines())


def test_demo_tokenizer_round_trips_all_data(tmp_path):
    folder = train_tokenizer(tmp_path)
    tok = BaichuanTokenizer.from_pretrained(folder)
    assert tok.convert_ids_to_tokens([USER_TOKEN_ID, ASSISTANT_TOKEN_ID]) == ["<reserved_102>", "<reserved_103>"]
    for c in training_conversations()[::7] + heldout_conversations() + unknown_conversations():
        for text in (c.prompt, c.answer):
            ids = tok.encode(text)
            assert USER_TOKEN_ID not in ids and ASSISTANT_TOKEN_ID not in ids
            assert tok.decode(ids) == text
    # the role tokens cannot be typed in as text
    assert USER_TOKEN_ID not in tok.encode("<reserved_102>")


def test_recipe_end_to_end_smoke(tmp_path):
    """The whole recipe at one epoch per stage: an official-layout chat model folder comes out."""
    from baichuan13b.demo.recipe import train_demo
    from baichuan13b.model import BaichuanForCausalLM

    out = train_demo(tmp_path / "demo", workdir=tmp_path, progress=False, epochs=(1, 1))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
            "tokenizer_config.json"} <= names
    model = BaichuanForCausalLM.from_pretrained(out, progress=False)
    tok = BaichuanTokenizer.from_pretrained(out)
    assert model.config.position_embedding == "alibi"
    assert model.generation_config.user_token_id == USER_TOKEN_ID
    assert isinstance(model.chat(tok, [{"role": "user", "content": "你好"}], max_new_tokens=4), str)
