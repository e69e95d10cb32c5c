"""Benchmarks (C-Eval, MMLU, CMMLU), prompts, scoring, resumable runs, reports, perplexity and the eval CLI."""

import csv
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from checkpoints import SHARED, tiny_config, write_checkpoint

from baichuan13b.cli import main as cli_main
from baichuan13b.evaluation import (
    EvalSettings,
    build_prompt,
    evaluate,
    extract_letter,
    get_benchmark,
    letter_token_ids,
    load_questions,
    perplexity,
    score_prompts,
    sequence_nll,
)
from baichuan13b.evaluation import runner as runner_module
from baichuan13b.evaluation.benchmarks import Question
from baichuan13b.evaluation.hub import official_layout
from baichuan13b.evaluation.report import markdown_task, task_report
from baichuan13b.generation import GenerationConfig
from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.tokenizer import BaichuanTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
EVAL_DATA = SHARED / "eval-data"
REAL_TOKENIZER = SHARED / "tokenizer" / "tokenizer.model"
needs_shared_data = pytest.mark.skipif(not EVAL_DATA.is_dir(), reason="../shared/eval-data not present")
needs_real_tokenizer = pytest.mark.skipif(not REAL_TOKENIZER.is_file(), reason="../shared tokenizer not present")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A small SentencePiece tokenizer trained on the fixture questions, with pieces ▁A..▁D and A..D."""
    spm = pytest.importorskip("sentencepiece")
    work = tmp_path_factory.mktemp("eval_tok")
    lines = []
    for f in sorted(FIXTURES.rglob("*.csv")):
        lines += f.read_text(encoding="utf-8").splitlines()
    lines += ["Answer: A", "Answer: B", "Answer: C", "Answer: D", "答案：A", "答案是：B", "The answer is A B C D"] * 20
    (work / "corpus.txt").write_text("\n".join(lines * 3), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "tokenizer"), model_type="bpe", vocab_size=1200,
        hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, user_defined_symbols=["<reserved_102>", "<reserved_103>"], normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True, num_threads=1, minloglevel=2)
    return BaichuanTokenizer(work / "tokenizer.model", pad_token="<unk>")


def rig(model, prefer_ids):
    """Make ``model`` put a huge logit on each of ``prefer_ids`` whatever the input: the layers add nothing to the
    residual stream, hidden dimension 0 is a large constant, and only the preferred lm_head rows read it."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[:, 0] = 0.0
        for i in prefer_ids:
            model.lm_head.weight[i] = 0.0
            model.lm_head.weight[i, 0] = 100.0
    return model


def tiny_model(vocab, seed=0, max_position=1024):
    cfg = tiny_config(vocab=vocab, max_position=max_position, torch_dtype="float32")
    return BaichuanForCausalLM.from_config(cfg, seed=seed)


@pytest.fixture(scope="module")
def rigged(tok):
    """Prefers ▁B (the 'encode' letter of C-Eval/MMLU) and the piece A (CMMLU's 'piece' letter)."""
    b = letter_token_ids(tok, "encode")[1]
    a = letter_token_ids(tok, "piece")[0]
    return rig(tiny_model(tok.vocab_size), [b, a])


def answers(task, split, limit=None):
    bench = get_benchmark(task)
    folder = FIXTURES / task
    return {s: [q.answer for q in load_questions(bench, folder, s, split)][:limit]
            for s in sorted(p.stem.replace(f"_{split}", "") for p in (folder / split).glob("*.csv"))}


def expected_scores(task, split, letter, limit=None, averaging=None):
    """Per-subject accuracy, categories and average of a model that always answers ``letter``, averaged as the
    benchmark's harness does (MMLU: over questions; C-Eval, CMMLU: over subjects) or as ``averaging`` says."""
    bench = get_benchmark(task)
    by_subject = answers(task, split, limit)
    subj = {s: 100.0 * a.count(letter) / len(a) for s, a in by_subject.items()}

    def average(keys):
        if (averaging or {"mmlu": "questions"}.get(task, "subjects")) == "questions":
            pooled = [x for s in keys for x in by_subject[s]]
            return 100.0 * pooled.count(letter) / len(pooled)
        return sum(subj[s] for s in keys) / len(keys)

    cats = {}
    for cat in bench.categories:
        keys = [s for s in subj if cat in bench.subject(s).categories]
        if keys:
            cats[cat] = average(keys)
    return subj, cats, average(list(subj))


# ------------------------------------------------------------------------------------------------ data
@needs_shared_data
def test_shipped_subject_tables_match_the_official_mappings():
    ceval = json.loads((EVAL_DATA / "ceval" / "subject_mapping.json").read_text(encoding="utf-8"))
    bench = get_benchmark("ceval")
    assert set(bench.subjects) == set(ceval)
    for key, (en, zh, cat) in ceval.items():
        s = bench.subject(key)
        assert (s.name, s.name_zh) == (en, zh)
        assert s.categories == ({"Social Science": "Social Sciences", "Other": "Others"}.get(cat, cat),)
    mmlu = json.loads((EVAL_DATA / "mmlu" / "subject_mapping.json").read_text(encoding="utf-8"))
    names = {"STEM": "STEM", "social sciences": "Social Sciences", "humanities": "Humanities",
             "other (business, health, misc.)": "Others"}
    assert {k: get_benchmark("mmlu").subject(k).categories for k in mmlu} == \
        {k: (names[v["category"]],) for k, v in mmlu.items()}
    cmmlu = json.loads((EVAL_DATA / "cmmlu" / "subject_mapping.json").read_text(encoding="utf-8"))
    names = {"Social Science": "Social Sciences", "Other": "Others", "China specific": "China Specific"}
    bench = get_benchmark("cmmlu")
    assert set(bench.subjects) == set(cmmlu)
    for key, v in cmmlu.items():
        assert bench.subject(key).name_zh == v["name_zh"]
        assert bench.subject(key).categories == tuple(names.get(c, c) for c in v["categories"])
    # The seed's CMMLU table: STEM, Humanities, Social Sciences, Others, China Specific (C-Eval and MMLU put Social
    # Sciences before Humanities).
    assert bench.categories == ["STEM", "Humanities", "Social Sciences", "Others", "China Specific"]
    assert get_benchmark("mmlu").categories == get_benchmark("ceval").categories == \
        ["STEM", "Social Sciences", "Humanities", "Others"]


@needs_shared_data
def test_real_files_read_as_the_official_pandas_scripts_see_them():
    pd = pytest.importorskip("pandas")
    for task, header in (("mmlu", None), ("cmmlu", 0)):
        bench = get_benchmark(task)
        for split in ("dev", "test"):
            for subject in bench.subjects:
                path = bench.file(EVAL_DATA / task, subject, split)
                df = pd.read_csv(path, header=header, index_col=0 if header == 0 else None)
                qs = load_questions(bench, EVAL_DATA / task, subject, split)
                assert len(qs) == len(df), path
                for i, q in enumerate(qs):
                    assert [q.question, *q.choices, q.answer] == [str(df.iloc[i, j]) for j in range(6)], (path, i)


def test_pandas_like_rendering_of_cells(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "dev" / "abstract_algebra_dev.csv"
    path.parent.mkdir()
    rows = [["q1", "1", "2.5", "None", "007", "A"], ["q2", "3", "4", "x", "12", "B"], ["q3", "5", "", "NA", "3", "C"]]
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    df = pd.read_csv(path, header=None)
    qs = load_questions("mmlu", tmp_path, "abstract_algebra", "dev")
    for i, q in enumerate(qs):
        assert [q.question, *q.choices, q.answer] == [str(df.iloc[i, j]) for j in range(6)]
    assert qs[0].choices == ("1", "2.5", "nan", "7") and qs[2].choices[1] == "nan"
    literal = load_questions("mmlu", tmp_path, "abstract_algebra", "dev", official_text=False)
    assert literal[0].choices == ("1", "2.5", "None", "007")


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "anatomy_dev.csv").write_text("q,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"anatomy_dev.csv: row 1 has answer 'E'"):
        load_questions("mmlu", tmp_path, "anatomy", "dev")
    (tmp_path / "dev" / "anatomy_dev.csv").write_text("q,a,b,c\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 1 has 4 fields, expected 6"):
        load_questions("mmlu", tmp_path, "anatomy", "dev")
    with pytest.raises(FileNotFoundError, match="philosophy_dev.csv"):
        load_questions("mmlu", tmp_path, "philosophy", "dev")
    with pytest.raises(ValueError, match="unknown MMLU subject 'astrology'"):
        load_questions("mmlu", tmp_path, "astrology", "dev")
    with pytest.raises(ValueError, match="CMMLU has no 'val' split"):
        get_benchmark("cmmlu").file(tmp_path, "anatomy", "val")


# ------------------------------------------------------------------------------------------------ prompts
def _prompt(task, folder, subject, split, index, shots, tokenizer, max_length=4096):
    bench = get_benchmark(task)
    dev = load_questions(bench, folder, subject, "dev")[:shots]
    q = load_questions(bench, folder, subject, split)[index]
    return build_prompt(bench, subject, dev, q, tokenizer, max_length)


def test_ceval_prompt_by_hand(tok):
    p = _prompt("ceval", FIXTURES / "ceval", "law", "val", 0, 2, tok)
    assert p.text == (
        "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n"
        "我国的根本大法是____。\nA. 刑法\nB. 民法典\nC. 宪法\nD. 行政法\n答案：C\n\n"
        "完全民事行为能力人的年龄是____。\nA. 16周岁\nB. 18周岁\nC. 20周岁\nD. 22周岁\n答案：B\n\n"
        "民法典施行于____年。\nA. 2019\nB. 2020\nC. 2021\nD. 2022\n答案："
    )
    assert p.ids == tok.encode(p.text) and p.shots == 2 and not p.truncated


def test_mmlu_prompt_by_hand_with_two_spaces_and_pandas_nan(tok):
    p = _prompt("mmlu", FIXTURES / "mmlu", "abstract_algebra", "test", 1, 1, tok)
    assert p.text == (
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find the order of the group Z_6.\nA. 2\nB. 3\nC. 6\nD. 12\nAnswer: C\n\n"
        "Is Z_2 x Z_3 cyclic?\nA. Yes\nB. No\nC. nan\nD. Only as a set\nAnswer:"
    )
    multiline = _prompt("mmlu", FIXTURES / "mmlu", "anatomy", "test", 3, 0, tok)
    assert multiline.text == ("The following are multiple choice questions (with answers) about  anatomy.\n\n"
                              '"Red, white" cells are made in the\nbone marrow of the\nA. skull\nB. femur\n'
                              "C. both of these\nD. neither\nAnswer:")


def test_cmmlu_prompt_by_hand(tok):
    p = _prompt("cmmlu", FIXTURES / "cmmlu", "ancient_chinese", "test", 3, 1, tok)
    assert p.text == (
        "以下是关于古汉语的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：“学而时习之”出自\nA. 《论语》\nB. 《孟子》\nC. 《大学》\nD. 《中庸》\n答案是：A\n\n"
        "题目：古代“弱冠”指男子____岁。\nA. 十五\nB. 二十\nC. 三十\nD. 四十\n答案是："
    )


@needs_shared_data
@needs_real_tokenizer
def test_prompts_of_the_real_files_by_hand():
    tokenizer = BaichuanTokenizer(REAL_TOKENIZER)
    p = _prompt("mmlu", EVAL_DATA / "mmlu", "anatomy", "test", 0, 1, tokenizer)
    assert p.text == (
        "The following are multiple choice questions (with answers) about  anatomy.\n\n"
        "What is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\n"
        "B. The first and second pharyngeal arches\nC. The second pharyngeal arch\n"
        "D. The second and third pharyngeal arches\nAnswer: D\n\n"
        "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral\n"
        "A. paralysis of the facial muscles.\nB. paralysis of the facial muscles and loss of taste.\n"
        "C. paralysis of the facial muscles, loss of taste and lacrimation.\n"
        "D. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\nAnswer:"
    )
    p = _prompt("cmmlu", EVAL_DATA / "cmmlu", "anatomy", "test", 0, 1, tokenizer)
    assert p.text == (
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\nD. 胸膜顶\n答案是：B\n\n"
        "题目：女性生殖腺是\nA. 卵巢\nB. 前庭大腺\nC. 前庭球\nD. 乳腺\n答案是："
    )
    five = _prompt("cmmlu", EVAL_DATA / "cmmlu", "anatomy", "test", 0, 5, tokenizer)
    assert five.shots == 5 and five.text.count("答案是：") == 6 and five.ids == tokenizer.encode(five.text)


def test_mmlu_and_ceval_drop_the_last_shots_until_the_prompt_fits(tok):
    bench = get_benchmark("mmlu")
    folder = FIXTURES / "mmlu"
    dev = load_questions(bench, folder, "philosophy", "dev")
    q = load_questions(bench, folder, "philosophy", "test")[0]
    full = build_prompt(bench, "philosophy", dev, q, tok, 10_000)
    three = build_prompt(bench, "philosophy", dev[:3], q, tok, 10_000)
    fitted = build_prompt(bench, "philosophy", dev, q, tok, len(three.ids))
    assert full.shots == 5 and (fitted.shots, fitted.text, fitted.truncated) == (3, three.text, False)
    bare = build_prompt(bench, "philosophy", [], q, tok, 10_000)
    cut = build_prompt(bench, "philosophy", dev, q, tok, len(bare.ids) - 3)
    assert cut.shots == 0 and cut.truncated and cut.ids == bare.ids[3:]
    ceval = get_benchmark("ceval")
    dev = load_questions(ceval, FIXTURES / "ceval", "law", "dev")
    q = load_questions(ceval, FIXTURES / "ceval", "law", "val")[0]
    one = build_prompt(ceval, "law", dev[:1], q, tok, 10_000)
    assert build_prompt(ceval, "law", dev, q, tok, len(one.ids)).text == one.text


def test_cmmlu_drops_every_longest_shot_and_sends_the_bare_question_when_even_that_is_too_long(tok):
    bench = get_benchmark("cmmlu")
    head = "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
    shots = [Question(str(i), "问" * n, ("甲", "乙", "丙", "丁"), "A") for i, n in enumerate([3, 9, 5, 9, 1])]
    q = Question("q", "人体最大的器官是", ("肝", "皮肤", "肺", "心脏"), None)
    end = "题目：人体最大的器官是\nA. 肝\nB. 皮肤\nC. 肺\nD. 心脏\n答案是："
    fixed = len(tok.encode(head)) + len(tok.encode(end))
    lengths = [len(tok.encode(f"题目：{s.question}\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：A\n\n")) for s in shots]
    assert lengths[1] == lengths[3] == max(lengths) and len(set(lengths)) == 4
    # Room for everything but the two longest (equal) shots: both go at once, as in mp_utils.gen_prompt.
    limit = fixed + sum(lengths) - 1
    p = build_prompt(bench, "anatomy", shots, q, tok, limit)
    kept = [shots[0], shots[2], shots[4]]
    assert p.shots == 3
    assert p.text == head + "".join(f"题目：{s.question}\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：A\n\n" for s in kept) + end
    # The comparison is ">=": shots summing exactly to the room left are dropped too.
    assert build_prompt(bench, "anatomy", shots, q, tok, fixed + sum(lengths)).shots == 3
    assert build_prompt(bench, "anatomy", shots, q, tok, fixed + sum(lengths) + 1).shots == 5
    bare = build_prompt(bench, "anatomy", shots, q, tok, fixed - 1)
    assert bare.text == end and bare.shots == 0


# ------------------------------------------------------------------------------------------------ letters
@needs_real_tokenizer
def test_letter_ids_of_the_real_tokenizer():
    tokenizer = BaichuanTokenizer(REAL_TOKENIZER)
    assert letter_token_ids(tokenizer, "encode") == [703, 731, 702, 743]
    assert [tokenizer.sp_model.id_to_piece(i) for i in letter_token_ids(tokenizer, "encode")] == \
        ["▁A", "▁B", "▁C", "▁D"]
    assert letter_token_ids(tokenizer, "piece") == [31132, 31139, 31133, 31140]
    # In the Chinese prompts the answer after "：" is the piece, not ▁A: why CMMLU's harness scores the piece.
    assert tokenizer.sp_model.encode("答案是：A", out_type=str)[-1] == "A"


def test_letter_ids_fail_clearly_when_a_letter_is_not_one_piece(tiny_tokenizer_dir):
    tiny = BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)  # A-D are byte-fallback pieces there
    with pytest.raises(ValueError, match=r"letter 'A' encodes to 2 pieces"):
        letter_token_ids(tiny, "encode")
    with pytest.raises(ValueError, match=r"'A' is not a piece of this tokenizer's vocabulary"):
        letter_token_ids(tiny, "piece")
    with pytest.raises(ValueError, match="unknown letter scheme"):
        letter_token_ids(tiny, "bytes")


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), ("C. 宪法", "C"), ("(D) because", "D"), ("答案是：C", "C"), ("正确答案为 A。", "A"),
    ("The answer is (B).", "B"), ("Answer: D", "D"), ("我选B", "B"), ("经分析，C 是正确的", "C"),
    ("应该是 D 吧", "D"), ("不知道", None), ("A or B", None), ("", None), ("Because the ABC rule", None),
])
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter


# ------------------------------------------------------------------------------------------------ scoring
def test_batched_left_padded_scores_equal_one_by_one(tok):
    model = tiny_model(tok.vocab_size, seed=3)
    bench = get_benchmark("mmlu")
    dev = load_questions(bench, FIXTURES / "mmlu", "anatomy", "dev")
    prompts = [build_prompt(bench, "anatomy", dev[:k], q, tok, 1024)
               for k, q in zip([0, 2, 5, 1], load_questions(bench, FIXTURES / "mmlu", "anatomy", "test"))]
    assert len({len(p.ids) for p in prompts}) == 4
    ids = letter_token_ids(tok, "encode")
    one = score_prompts(model, tok, prompts, ids, batch_size=1)
    batched = score_prompts(model, tok, prompts, ids, batch_size=3)
    assert torch.allclose(torch.tensor(one), torch.tensor(batched), atol=1e-4)
    with torch.no_grad():
        direct = model(torch.tensor([prompts[2].ids])).logits[0, -1, ids]
    assert torch.allclose(torch.tensor(one[2]), direct, atol=1e-5)


@pytest.mark.parametrize("task,split,letter", [("ceval", "val", "B"), ("mmlu", "test", "B"), ("cmmlu", "test", "A")])
def test_rigged_model_scores_exactly_its_letters_share(tok, rigged, tmp_path, task, split, letter):
    report = evaluate(rigged, tok, [task], tmp_path, data_dir=FIXTURES,
                      settings=EvalSettings(split=split, shots=5, batch_size=2), progress=False)
    t = report["tasks"][task]
    subj, cats, avg = expected_scores(task, split, letter)
    assert {s: v["accuracy"] for s, v in t["subjects"].items()} == pytest.approx(subj, abs=1e-9)
    assert t["categories"] == pytest.approx(cats, abs=1e-9)
    assert t["average"] == pytest.approx(avg, abs=1e-9)
    assert len(set(subj.values())) > 1  # the fixture subjects differ, so a per-subject mix-up would show
    assert t["settings"]["letter_scheme"] == get_benchmark(task).letter_scheme
    rows = list(csv.DictReader(open(tmp_path / task / "predictions.csv", encoding="utf-8")))
    assert {r["prediction"] for r in rows} == {letter} and len(rows) == t["questions"]
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    header = "| Model | " + " | ".join(get_benchmark(task).categories) + " | Average |"
    assert header in md and f"| {avg:.1f} |" in md
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_shared_data
@needs_real_tokenizer
def test_rigged_model_on_the_real_files_with_the_real_tokenizer(tmp_path):
    tokenizer = BaichuanTokenizer(REAL_TOKENIZER, pad_token="<unk>")
    model = rig(tiny_model(tokenizer.vocab_size, max_position=4096), [731, 31133])  # ▁B and the piece C
    settings = EvalSettings(split="test", shots=5, subjects=["anatomy", "astronomy"], limit=6, batch_size=3)
    report = evaluate(model, tokenizer, ["mmlu", "cmmlu"], tmp_path, data_dir=EVAL_DATA, settings=settings,
                      progress=False)
    for task, letter in (("mmlu", "B"), ("cmmlu", "C")):
        bench = get_benchmark(task)
        for s in settings.subjects:
            a = [q.answer for q in load_questions(bench, EVAL_DATA / task, s, "test")[:6]]
            assert report["tasks"][task]["subjects"][s]["accuracy"] == pytest.approx(100 * a.count(letter) / 6)
    assert report["letter_pieces"] == {"mmlu": ["▁A", "▁B", "▁C", "▁D"], "cmmlu": ["A", "B", "C", "D"]}


def test_ceval_test_split_without_labels_writes_a_submission(tok, rigged, tmp_path):
    report = evaluate(rigged, tok, ["ceval"], tmp_path, data_dir=FIXTURES, settings=EvalSettings(split="test"),
                      progress=False)
    t = report["tasks"]["ceval"]
    assert not t["labelled"] and t["average"] is None and t["categories"] is None
    sub = json.loads((tmp_path / "ceval" / "submission.json").read_text(encoding="utf-8"))
    assert sub == {s: {str(i): "B" for i in range(len(a))} for s, a in answers("ceval", "test").items()}
    assert "no accuracy is claimed" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_generate_mode_reads_the_letter_from_the_answer(tok, rigged, tmp_path):
    rigged.generation_config = GenerationConfig(user_token_id=3, assistant_token_id=4, max_new_tokens=8,
                                                eos_token_id=2, pad_token_id=0)
    for chat in (False, True):
        out = tmp_path / f"chat{chat}"
        report = evaluate(rigged, tok, ["mmlu"], out, data_dir=FIXTURES, progress=False,
                          settings=EvalSettings(mode="generate", chat=chat, max_new_tokens=3, batch_size=2,
                                                subjects=["philosophy", "anatomy"], limit=3))
        t = report["tasks"]["mmlu"]
        subj, _, _ = expected_scores("mmlu", "test", "B", limit=3)
        assert {s: v["accuracy"] for s, v in t["subjects"].items()} == \
            pytest.approx({s: subj[s] for s in ("philosophy", "anatomy")})
        rows = list(csv.DictReader(open(out / "mmlu" / "predictions.csv", encoding="utf-8")))
        assert {r["output"] for r in rows} == {"B B B"} and t["unparsed"] == 0


# ------------------------------------------------------------------------------------------------ averages
SETTINGS = {"shots": 5, "split": "test", "mode": "logits", "letter_ids": [1, 2, 3, 4], "letter_scheme": "encode",
            "prompt_max_tokens": 2048}


def _result(subject, questions, correct):
    return {"subject": subject, "questions": questions, "labelled": True, "correct": correct,
            "accuracy": 100.0 * correct / questions, "fewer_shots": 0, "truncated": 0, "unparsed": 0,
            "predictions": []}


def test_mmlu_averages_over_questions_as_hendrycks_and_cmmlu_ceval_over_subjects():
    # Subjects of very different sizes (as professional_law among the humanities): the two averages differ.
    mmlu = {"abstract_algebra": _result("abstract_algebra", 10, 9), "college_physics": _result("college_physics", 2, 0),
            "philosophy": _result("philosophy", 4, 2)}
    t = task_report(get_benchmark("mmlu"), mmlu, SETTINGS)
    assert t["averaging"] == "questions"
    assert t["average"] == pytest.approx(100 * 11 / 16) and t["micro_average"] == t["average"]
    assert t["categories"] == pytest.approx({"STEM": 100 * 9 / 12, "Humanities": 50.0})
    assert t["macro_average"] == pytest.approx((90 + 0 + 50) / 3)
    assert t["macro_categories"] == pytest.approx({"STEM": 45.0, "Humanities": 50.0})
    md = markdown_task({**t, "prompt_limit": "MMLU harness limit"}, "m")
    assert "| m | 75.0 | - | 50.0 | - | 68.8 |" in md  # STEM, Social Sciences, Humanities, Others, Average
    assert "Averages over questions (as hendrycks' evaluate.py" in md and "average over subjects: 46.7" in md
    cmmlu = {"agronomy": _result("agronomy", 10, 9), "anatomy": _result("anatomy", 2, 0),
             "ancient_chinese": _result("ancient_chinese", 4, 2)}
    t = task_report(get_benchmark("cmmlu"), cmmlu, SETTINGS)
    assert t["averaging"] == "subjects" and t["average"] == pytest.approx(140 / 3)
    assert t["micro_average"] == pytest.approx(100 * 11 / 16)
    assert t["categories"] == t["macro_categories"] and t["categories"]["STEM"] == pytest.approx(0.0)
    md = markdown_task(t, "m")
    # The seed's CMMLU columns: STEM, Humanities, Social Sciences, Others, China Specific, Average.
    assert "| Model | STEM | Humanities | Social Sciences | Others | China Specific | Average |" in md
    assert "Averages over subjects (as CMMLU's own harness); average over questions: 68.8." in md


def test_prompt_limit_defaults_to_each_harness_and_is_recorded(tok, rigged, tmp_path):
    from baichuan13b.evaluation.runner import prompt_budget

    wide = tiny_model(tok.vocab_size, max_position=4096)
    assert prompt_budget(wide, get_benchmark("mmlu"), EvalSettings()) == (2048, "MMLU harness limit")
    assert prompt_budget(wide, get_benchmark("cmmlu"), EvalSettings()) == (2048, "CMMLU harness limit")
    assert prompt_budget(wide, get_benchmark("ceval"), EvalSettings()) == (4096, "model context")
    assert prompt_budget(wide, get_benchmark("mmlu"), EvalSettings(max_length=4096)) == (4096, "--max_length")
    budget, source = prompt_budget(wide, get_benchmark("mmlu"), EvalSettings(mode="generate", max_new_tokens=8))
    assert budget == 2040 and "less 8 tokens for generation" in source
    # The rigged model's context (1024) is under the harness limit: the context is the limit, and says so.
    report = evaluate(rigged, tok, ["mmlu"], tmp_path, data_dir=FIXTURES, progress=False,
                      settings=EvalSettings(limit=1, subjects=["anatomy"]))
    t = report["tasks"]["mmlu"]
    assert t["settings"]["prompt_max_tokens"] == 1024
    assert t["prompt_limit"] == "model context (under the MMLU harness limit of 2048)"
    assert "prompt limit 1024 tokens (model context (under the MMLU harness limit of 2048))" in \
        (tmp_path / "report.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ C-Eval layouts
def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)


def test_ceval_reads_each_released_split_layout_by_header_name(tmp_path):
    q = ["1+1=____。", "1", "2", "3", "4"]
    _write_csv(tmp_path / "dev" / "law_dev.csv", [["id", "question", "A", "B", "C", "D", "answer", "explanation"],
                                                  ["0", *q, "B", "1+1=2"]])
    _write_csv(tmp_path / "val" / "law_val.csv", [["id", "question", "A", "B", "C", "D", "answer"], ["0", *q, "B"]])
    _write_csv(tmp_path / "test" / "law_test.csv", [["id", "question", "A", "B", "C", "D"], ["0", *q]])
    expected = Question("0", q[0], tuple(q[1:]), "B")
    assert load_questions("ceval", tmp_path, "law", "dev") == [expected]
    assert load_questions("ceval", tmp_path, "law", "val") == [expected]
    assert load_questions("ceval", tmp_path, "law", "test") == [Question("0", q[0], tuple(q[1:]), None)]
    # By name, not position: another column order reads the same.
    _write_csv(tmp_path / "val" / "law_val.csv", [["answer", "A", "B", "C", "D", "question", "id"],
                                                  ["B", *q[1:], q[0], "0"]])
    assert load_questions("ceval", tmp_path, "law", "val") == [expected]
    _write_csv(tmp_path / "val" / "law_val.csv", [["id", "question", "A", "B", "D", "answer"], ["0", *q[:3], q[4], "B"]])
    with pytest.raises(ValueError, match=r"law_val.csv: the header .* has no column C"):
        load_questions("ceval", tmp_path, "law", "val")
    # The fixtures have the released layouts too (val without explanation, test without answer): a full run works.
    assert (FIXTURES / "ceval" / "test" / "law_test.csv").read_text(encoding="utf-8").startswith(
        "id,question,A,B,C,D\n")


def test_ceval_hub_parquet_copy_with_all_eight_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    snap = tmp_path / "snap"
    for split, hub_split in (("dev", "dev"), ("val", "val"), ("test", "test")):
        qs = load_questions("ceval", FIXTURES / "ceval", "law", split, official_text=False)
        table = pa.table({"id": [int(q.id) for q in qs], "question": [q.question for q in qs],
                          **{k: [q.choices[i] for q in qs] for i, k in enumerate("ABCD")},
                          "answer": [q.answer or "" for q in qs],
                          "explanation": ["" for _ in qs]})
        (snap / "law").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, snap / "law" / f"{hub_split}-00000-of-00001.parquet")
    folder = official_layout("ceval", snap, tmp_path / "cache")
    for split in ("dev", "val", "test"):
        assert load_questions("ceval", folder, "law", split) == load_questions("ceval", FIXTURES / "ceval", "law",
                                                                               split)


# ------------------------------------------------------------------------------------------------ multi-task runs
def test_every_task_is_checked_before_the_first_forward_pass(tok, rigged, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner_module, "evaluate_subject", lambda *a, **k: calls.append(a[3]))
    with pytest.raises(ValueError, match="CMMLU has no 'val' split to score"):
        evaluate(rigged, tok, ["mmlu", "cmmlu"], tmp_path, data_dir=FIXTURES, settings=EvalSettings(split="val"),
                 progress=False)
    with pytest.raises(ValueError, match="unknown C-Eval subject 'anatomy'"):
        evaluate(rigged, tok, ["mmlu", "ceval"], tmp_path, data_dir=FIXTURES, progress=False,
                 settings=EvalSettings(split="val", subjects=["anatomy"]))
    assert calls == [] and not (tmp_path / "report.json").exists()


def test_a_task_failing_while_running_still_writes_the_report_of_the_finished_ones(tok, rigged, tmp_path,
                                                                                    monkeypatch):
    real = runner_module.evaluate_subject

    def failing(model, tokenizer, bench, *args, **kwargs):
        if bench.name == "mmlu":
            raise RuntimeError("device lost")
        return real(model, tokenizer, bench, *args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_subject", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        evaluate(rigged, tok, ["ceval", "mmlu"], tmp_path, data_dir=FIXTURES, progress=False,
                 settings=EvalSettings(split="val", limit=2), model_name="m")
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert list(report["tasks"]) == ["ceval"] and report["tasks"]["ceval"]["average"] is not None
    assert "## C-Eval" in (tmp_path / "report.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ resuming
def test_an_interrupted_run_resumes_to_the_same_report(tok, rigged, tmp_path, monkeypatch):
    settings = EvalSettings(split="test", shots=5, batch_size=2, save_prompts=True, limit=3)
    whole = evaluate(rigged, tok, ["cmmlu"], tmp_path / "whole", data_dir=FIXTURES, settings=settings,
                     model_name="m", progress=False)
    real = runner_module.evaluate_subject
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_subject", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(rigged, tok, ["cmmlu"], tmp_path / "resumed", data_dir=FIXTURES, settings=settings,
                 model_name="m", progress=False)
    done = sorted(p.name for p in (tmp_path / "resumed" / "cmmlu" / "subjects").iterdir())
    assert done == [f"{calls[0]}.json"]  # only the finished subject, no partial or temporary file
    monkeypatch.setattr(runner_module, "evaluate_subject", real)
    seen = []
    monkeypatch.setattr(runner_module, "evaluate_subject", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    resumed = evaluate(rigged, tok, ["cmmlu"], tmp_path / "resumed", data_dir=FIXTURES, settings=settings,
                       model_name="m", progress=False)
    assert calls[0] not in seen and len(seen) == 2
    assert resumed == whole
    for name in ("report.json", "report.md", "cmmlu/predictions.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    other = EvalSettings(split="test", shots=3, limit=3)
    with pytest.raises(ValueError, match=r"different settings \(shots: stored 5, now 3\)"):
        evaluate(rigged, tok, ["cmmlu"], tmp_path / "resumed", data_dir=FIXTURES, settings=other, model_name="m",
                 progress=False)


# ------------------------------------------------------------------------------------------------ perplexity
def test_perplexity_sliding_window(tok):
    model = tiny_model(tok.vocab_size, seed=5, max_position=256)
    text = "百川大模型是一个开源的中英双语模型。The quick brown fox jumps over the lazy dog. " * 2
    ids = tok.encode(text)
    assert 40 < len(ids) <= 256
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    full = perplexity(model, tok, text)
    assert full["scored_tokens"] == len(ids) - 1
    assert full["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    # window 16, stride 4: token t is predicted from the window that first reaches it.
    total, count = sequence_nll(model, ids, window=16, stride=4)
    expect, n, done = 0.0, 0, 1
    for begin in range(0, len(ids), 4):
        end = min(begin + 16, len(ids))
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].float(), -1)
        for t in range(max(done, begin + 1), end):
            expect -= logp[t - begin - 1, ids[t]].item()
            n += 1
        done = max(done, end)
        if end == len(ids):
            break
    assert count == n == len(ids) - 1 and total == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        sequence_nll(model, ids, window=512)
    with pytest.raises(ValueError, match="stride must be between 1 and the window"):
        sequence_nll(model, ids, window=16, stride=17)


# ------------------------------------------------------------------------------------------------ hub layouts
def test_hub_snapshots_become_the_official_layout(tmp_path):
    snap = tmp_path / "snap_zip"
    snap.mkdir()
    with zipfile.ZipFile(snap / "cmmlu_v1_0_1.zip", "w") as z:
        for f in (FIXTURES / "cmmlu").rglob("*.csv"):
            z.write(f, Path("cmmlu_v1_0_1") / f.relative_to(FIXTURES / "cmmlu"))
    folder = official_layout("cmmlu", snap, tmp_path / "cache_cmmlu")
    assert load_questions("cmmlu", folder, "agronomy", "test") == \
        load_questions("cmmlu", FIXTURES / "cmmlu", "agronomy", "test")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    snap = tmp_path / "snap_parquet"
    for split, hub_split in (("dev", "dev"), ("test", "test"), ("val", "validation")):
        for subject in ("anatomy", "philosophy"):
            qs = load_questions("mmlu", FIXTURES / "mmlu", subject, split, official_text=False)
            table = pa.table({"question": [q.question for q in qs], "subject": [subject] * len(qs),
                              "choices": [list(q.choices) for q in qs], "answer": ["ABCD".index(q.answer) for q in qs]})
            (snap / subject).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, snap / subject / f"{hub_split}-00000-of-00001.parquet")
    folder = official_layout("mmlu", snap, tmp_path / "cache_mmlu")
    for split in ("dev", "val", "test"):
        assert load_questions("mmlu", folder, "anatomy", split) == load_questions("mmlu", FIXTURES / "mmlu", "anatomy", split)
    with pytest.raises(ValueError, match="neither the C-Eval CSV layout"):
        official_layout("ceval", tmp_path / "snap_zip" / "nothing", tmp_path / "x")


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok, rigged):
    folder = write_checkpoint(tmp_path_factory.mktemp("evalmodel"), rigged, rigged.config, "safetensors")
    tok.save_pretrained(folder)
    return folder


def test_cli_eval_compare_and_ppl(model_dir, tmp_path, capsys):
    base = ["eval", "--model", str(model_dir), "--no-progress", "--data_dir", str(FIXTURES), "--limit", "3"]
    assert cli_main(base + ["--task", "mmlu,cmmlu", "--output_dir", str(tmp_path / "a"), "--batch_size", "4"]) == 0
    out = capsys.readouterr().out
    _, _, mmlu_avg = expected_scores("mmlu", "test", "B", limit=3)
    assert f"MMLU: average {mmlu_avg:.2f} (over questions; 3 subjects, 9 questions)" in out
    # The same model scored with the other letter scheme prefers the piece A on MMLU too.
    assert cli_main(base + ["--task", "mmlu", "--letter_scheme", "piece", "--output_dir", str(tmp_path / "b"),
                            "--label", "piece letters"]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "--compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b"),
                     "--labels", "encode,piece", "--output_dir", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    _, _, piece_avg = expected_scores("mmlu", "test", "A", limit=3)
    assert "| encode | " in table and f"| {piece_avg:.1f} |" in table
    assert "| piece − encode |" in table and "differ in letter_scheme" in table
    assert (tmp_path / "cmp" / "compare.png").is_file()
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. 你好，世界！", encoding="utf-8")
    assert cli_main(["eval", "--model", str(model_dir), "--no-progress", "--task", "ppl", "--text", str(text),
                     "--window", "16", "--stride", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scored_tokens"] == result["tokens"] - 1 and result["perplexity"] > 1
    assert cli_main(["eval", "--model", str(model_dir), "--task", "mmlu"]) == 2
    assert "--output_dir is needed" in capsys.readouterr().err
    assert cli_main(base + ["--task", "cmmlu", "--split", "val", "--output_dir", str(tmp_path / "c")]) == 2
    assert "CMMLU has no 'val' split to score (it has test)" in capsys.readouterr().err


def test_the_row_label_is_the_models_name(tok, rigged, tmp_path, capsys):
    # The shipped demo model is "demo" (not its folder's name); a hub id keeps its owner.
    assert cli_main(["eval", "--model", "demo", "--no-progress", "--task", "cmmlu", "--data_dir", str(FIXTURES),
                     "--limit", "1", "--shots", "1", "--output_dir", str(tmp_path / "demo")]) == 0
    md = (tmp_path / "demo" / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Evaluation: demo\n") and "\n| demo | " in md
    report = evaluate(rigged, tok, ["cmmlu"], tmp_path / "hub", data_dir=FIXTURES, progress=False,
                      settings=EvalSettings(limit=1, shots=1), model_name="baichuan-inc/Baichuan-13B-Base")
    assert report["label"] == "baichuan-inc/Baichuan-13B-Base"
    assert "\n| baichuan-inc/Baichuan-13B-Base | " in (tmp_path / "hub" / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow  # builds ~1,900 prompts with the real tokenizer
@needs_shared_data
@needs_real_tokenizer
def test_mmlu_default_limit_drops_shots_where_the_official_2048_crop_does():
    # hendrycks' 2048-token crop drops shots from every high_school_european_history and high_school_us_history
    # prompt and from 92 professional_law prompts (with Baichuan's tokenizer); a 4096-token limit would not.
    tok = BaichuanTokenizer(REAL_TOKENIZER)
    model = tiny_model(tok.vocab_size, max_position=4096)
    subjects = ["high_school_european_history", "high_school_us_history", "professional_law"]
    plan = runner_module.plan_task(model, tok, "mmlu", EVAL_DATA / "mmlu", "/nonexistent",
                                   EvalSettings(subjects=subjects))
    assert (plan.budget, plan.prompt_limit) == (2048, "MMLU harness limit")
    fewer = {subject: sum(build_prompt("mmlu", subject, shots, q, tok, plan.budget).shots < 5 for q in questions)
             for subject, questions, shots in plan.work}
    sizes = {subject: len(questions) for subject, questions, _ in plan.work}
    assert fewer == {"high_school_european_history": sizes["high_school_european_history"],
                     "high_school_us_history": sizes["high_school_us_history"], "professional_law": 92}
