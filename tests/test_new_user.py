"""What a new user meets first: missing extras, defaults that fit the model, flags checked before loading, the
model's name, help texts, both flag spellings, and terminal input (issue 16). The CLI runs in-process."""

from __future__ import annotations

import argparse
import io
import sys

import pytest
import torch
from checkpoints import write_chat_model
from training_helpers import finetune_argv, make_base, qa_pairs, write_dataset

from baichuan13b.cli import _subparsers, build_parser, main
from baichuan13b.cli.common import DTYPE_CHOICES, display_name, normalize_argv
from baichuan13b.model import BaichuanForCausalLM

GEN = dict(max_new_tokens=12, user_token_id=5, assistant_token_id=6, do_sample=False)


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model fails the test: the command had to stop before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(BaichuanForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: refuse()))
    monkeypatch.setattr("baichuan13b.training.trainer.load_model", refuse)


def run_cli(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, tiny_tokenizer_dir):
    return write_chat_model(tmp_path_factory.mktemp("chatmodel"), tiny_tokenizer_dir, generation_config=GEN,
                            max_position=64)


# ------------------------------------------------------------------------------------------------ 1. extras
def _finetune_plot_argv(tmp_path):
    return ["finetune", "--stage", "sft", "--model_name_or_path", "demo", "--do_train", "--dataset", "x",
            "--output_dir", str(tmp_path / "out"), "--plot_loss"]


@pytest.mark.parametrize("argv, module, extra", [
    (lambda t: ["serve", "--model", "demo"], "uvicorn", "serve"),
    (lambda t: ["serve", "--model", "demo"], "fastapi", "serve"),
    (lambda t: ["web", "--model", "demo"], "streamlit", "web"),
    (lambda t: ["eval", "--model", "demo", "--task", "ceval", "--output_dir", str(t)], "matplotlib", "eval"),
    (lambda t: ["eval", "--compare", str(t / "r.json"), "--output_dir", str(t)], "matplotlib", "eval"),
    (_finetune_plot_argv, "matplotlib", "train"),
    (lambda t: ["export", "--format", "gguf", "--output", str(t / "m.gguf")], "gguf", "gguf"),
], ids=["serve-uvicorn", "serve-fastapi", "web", "eval", "eval-compare", "finetune-plot", "export-gguf"])
def test_missing_extra_is_one_line_before_loading(argv, module, extra, tmp_path, capsys, monkeypatch, no_loading):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    code, _, err = run_cli(argv(tmp_path), capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"pip install 'baichuan13b[{extra}]'" in lines[0] and module in lines[0]
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ 2. defaults
def test_unset_cutoff_len_adapts_to_a_short_context(tmp_path, tiny_tokenizer_dir, capsys):
    base = make_base(tmp_path / "base", tiny_tokenizer_dir)  # context 128 < the default 1024
    data = write_dataset(tmp_path / "data", qa_pairs(8))
    code, _, err = run_cli(["finetune"] + finetune_argv(base, data, tmp_path / "out", cutoff_len=None, max_steps=1), capsys)
    assert code == 0, err
    assert "--cutoff_len not given: using the model's context of 128 tokens" in err


def test_explicit_cutoff_len_beyond_the_context_is_refused_before_loading(tmp_path, tiny_tokenizer_dir, capsys,
                                                                          no_loading):
    base = make_base(tmp_path / "base", tiny_tokenizer_dir)
    data = write_dataset(tmp_path / "data", qa_pairs(8))
    code, _, err = run_cli(["finetune"] + finetune_argv(base, data, tmp_path / "out", cutoff_len=256, max_steps=1), capsys)
    assert code != 0
    assert "--cutoff_len 256 exceeds the model's context of 128 tokens" in err


def test_checkpoint_max_new_tokens_beyond_the_context_adapts_and_says_so(tmp_path, tiny_tokenizer_dir, capsys):
    folder = write_chat_model(tmp_path / "m", tiny_tokenizer_dir, generation_config={**GEN, "max_new_tokens": 500},
                              max_position=64)
    code, out, err = run_cli(["generate", "--model", str(folder), "--no-progress", "--prompt", "hello"], capsys)
    assert code == 0, err
    assert "max new tokens: 32 (the checkpoint's max_new_tokens 500 does not fit the model's context of 64" in err
    # Explicit values are the user's: never changed, refused only when they cannot fit.
    code, _, err = run_cli(["generate", "--model", str(folder), "--no-progress", "--prompt", "hello",
                            "--max-new-tokens", "5"], capsys)
    assert code == 0 and "max new tokens:" not in err


@pytest.mark.parametrize("flags, message", [
    (["generate", "--max-new-tokens", "600"], "--max-new-tokens 600 leaves no room for a prompt in the model's "
                                              "context of 512 tokens"),
    (["eval", "--task", "ceval", "--output_dir", "{tmp}", "--max_length", "4096"],
     "--max_length 4096 exceeds the model's context of 512 tokens"),
])
def test_explicit_values_beyond_the_context_are_refused_before_loading(flags, message, tmp_path, capsys, no_loading):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    argv = flags[:1] + ["--model", "demo", "--prompt", "hi"] * (flags[0] == "generate") + ["--model", "demo"] * (
        flags[0] != "generate") + flags[1:]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err, err


# ------------------------------------------------------------------------------------------------ 3. flags first
@pytest.mark.parametrize("flag, value, message", [
    ("--max-new-tokens", "-5", "--max-new-tokens must be >= 0, got -5"),
    ("--max_new_tokens", "-5", "--max_new_tokens must be >= 0, got -5"),  # named as typed
    ("--top-p", "2", "--top-p must be in (0, 1], got 2.0"),
    ("--temperature", "-1", "--temperature must be >= 0, got -1.0"),
    ("--repetition_penalty", "0", "--repetition_penalty must be > 0, got 0.0"),
    ("--stop", "", "--stop must not contain empty strings"),
])
def test_sampling_flags_are_checked_before_loading(flag, value, message, capsys, no_loading):
    for command in (["generate", "--prompt", "hi"], ["chat"]):
        code, _, err = run_cli([*command, "--model", "demo", flag, value], capsys)
        assert code == 2, err
        assert message in err and "Traceback" not in err


def test_unknown_device_names_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", "demo", "--prompt", "hi", "--device", "tpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: 'tpu' is not a device" in err and "device_map" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_names_the_flag(capsys, no_loading):
    code, _, err = run_cli(["generate", "--model", "demo", "--prompt", "hi", "--device", "cuda"], capsys)
    assert code == 2 and "--device cuda: no CUDA device is visible" in err


# ------------------------------------------------------------------------------------------------ 4. the name
def test_model_name_override_reaches_page_report_and_server(monkeypatch, capsys, tmp_path):
    from baichuan13b.web.page import parse_args

    assert display_name(parse_args(["--model", "demo"])) == "demo"
    assert display_name(parse_args(["--model", "demo", "--model-name", "Baichuan-Mini"])) == "Baichuan-Mini"
    serve = _subparsers(build_parser())["serve"]
    assert display_name(serve.parse_args(["--served-model-name", "tiny"])) == "tiny"

    seen = {}

    def evaluate(model, tokenizer, tasks, output_dir, **kw):
        seen.update(kw)
        return {"tasks": {"ceval": {"title": "C-Eval", "labelled": False}}}

    monkeypatch.setattr("baichuan13b.evaluation.runner.evaluate", evaluate)
    code, _, err = run_cli(["eval", "--model", "demo", "--no-progress", "--task", "ceval", "--output_dir",
                            str(tmp_path), "--model-name", "Baichuan-Mini"], capsys)
    assert code == 0, err
    assert seen["model_name"] == "Baichuan-Mini"


# ------------------------------------------------------------------------------------------------ 9. help
def _all_actions():
    for name, parser in _subparsers(build_parser()).items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield name, parser, action


def test_help_texts_say_real_defaults_and_no_code_markup():
    for name, parser in _subparsers(build_parser()).items():
        text = parser.format_help()
        assert "(default: None)" not in text, name
        assert "``" not in text and ":class:" not in text and ":func:" not in text, name
        assert "(default: True)" not in text and "(default: False)" not in text, name
    for name, _, action in _all_actions():
        assert action.help and action.help.strip(), f"baichuan {name} {action.option_strings[0]} has no help"


def test_eval_examples_stay_one_per_line():
    text = _subparsers(build_parser())["eval"].format_help()
    assert "\n  baichuan eval --model M --task ppl --text corpus.txt\n" in text


def test_one_dtype_choice_set():
    choices = {name: tuple(a.choices) for name, _, a in _all_actions() if "--dtype" in a.option_strings}
    assert set(choices) >= {"generate", "chat", "serve", "eval", "bench", "quantize", "info", "web", "export"}
    assert set(choices.values()) == {DTYPE_CHOICES}
    parser = _subparsers(build_parser())["bench"]
    assert parser.parse_args(["--dtype", "bf16"]).dtype == "bfloat16"  # short spellings still accepted


def test_both_flag_spellings_everywhere():
    subs = _subparsers(build_parser())
    for name, parser, action in _all_actions():
        for option in action.option_strings:
            if option.startswith("--") and ("-" in option[2:] or "_" in option[2:]):
                other = "--" + (option[2:].replace("-", "_") if "-" in option[2:] else option[2:].replace("_", "-"))
                argv, typed = normalize_argv(subs[name], [other])
                assert argv == [option] or argv == [other], (name, option)
                assert typed == {action.dest: other}
    args = subs["generate"].parse_args(normalize_argv(subs["generate"], ["--max_new_tokens", "3"])[0])
    assert args.max_new_tokens == 3
    argv, _ = normalize_argv(subs["finetune"], ["--model-name-or-path", "m", "--", "--max_new_tokens"])
    assert argv == ["--model_name_or_path", "m", "--", "--max_new_tokens"]  # nothing touched after --


# ------------------------------------------------------------------------------------------------ 10. input
@pytest.mark.parametrize("source", ["flag", "stdin"])
@pytest.mark.parametrize("prompt", ["   ", "\n", " \t\n"])
def test_blank_prompt_is_an_error(source, prompt, capsys, monkeypatch, no_loading):
    argv = ["generate", "--model", "demo"] + (["--prompt", prompt] if source == "flag" else [])
    code, out, err = run_cli(argv, capsys, stdin=prompt if source == "stdin" else None, monkeypatch=monkeypatch)
    assert code == 2 and "empty prompt" in err and out == ""


def test_prompt_from_stdin_drops_its_line_break(chat_dir, capsys, monkeypatch):
    flags = ["generate", "--model", str(chat_dir), "--no-progress", "--max-new-tokens", "6"]
    code, typed, err = run_cli(flags + ["--prompt", "The quick brown"], capsys)
    assert code == 0, err
    code, piped, err = run_cli(flags, capsys, stdin="The quick brown\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert piped == typed


def test_a_chat_message_too_long_is_refused_not_cut(chat_dir, capsys, monkeypatch):
    model = BaichuanForCausalLM.from_pretrained(chat_dir, progress=False)
    from baichuan13b.tokenizer import BaichuanTokenizer

    tok = BaichuanTokenizer.from_pretrained(chat_dir)
    short = model.chat(tok, [{"role": "user", "content": "hello"}])
    code, out, err = run_cli(["chat", "--model", str(chat_dir), "--no-progress"], capsys,
                             stdin="hello world " * 10_000 + "\nhello\n", monkeypatch=monkeypatch)
    assert code == 1
    assert "message too long" in err and "the model reads at most" in err
    assert out == f"\n{short}\n"  # an empty line for the refused message, then the next answer (no history)


def test_piped_chat_no_history_answers_each_line_alone(chat_dir, capsys, monkeypatch):
    model = BaichuanForCausalLM.from_pretrained(chat_dir, progress=False)
    from baichuan13b.tokenizer import BaichuanTokenizer

    tok = BaichuanTokenizer.from_pretrained(chat_dir)
    alone = [model.chat(tok, [{"role": "user", "content": q}]) for q in ("one", "two")]
    code, out, err = run_cli(["chat", "--model", str(chat_dir), "--no-progress", "--no-history"], capsys,
                             stdin="one\ntwo\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert out == f"{alone[0]}\n{alone[1]}\n"
    assert "one conversation" in _subparsers(build_parser())["chat"].description.lower()  # the default is documented



@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "demo", "--task", "cevl", "--output_dir", "{tmp}"], "unknown benchmark 'cevl'"),
    (["eval", "--model", "demo", "--task", "ppl", "--text", "{tmp}/nope.txt"], "--text {tmp}/nope.txt: no such file"),
    (["generate", "--model", "demo", "--prompt", "hi", "--adapter", "{tmp}/nope"],
     "--adapter {tmp}/nope: no adapter_config.json"),
    (["finetune", "--stage", "sft", "--model_name_or_path", "demo", "--do_train", "--dataset", "nope",
      "--output_dir", "{tmp}/out", "--dataset_dir", "{tmp}"], "unknown dataset 'nope'"),
])
def test_other_bad_inputs_are_reported_before_loading(argv, message, tmp_path, capsys, no_loading):
    code, _, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code != 0 and message.replace("{tmp}", str(tmp_path)) in err, err


def test_errors_name_the_spelling_typed(tmp_path, tiny_tokenizer_dir, capsys, no_loading):
    base = make_base(tmp_path / "base", tiny_tokenizer_dir)
    data = write_dataset(tmp_path / "data", qa_pairs(8))
    argv = ["finetune"] + finetune_argv(base, data, tmp_path / "out", cutoff_len=None, max_steps=1)
    code, _, err = run_cli(argv + ["--cutoff-len", "256"], capsys)
    assert code != 0 and "--cutoff-len 256 exceeds" in err and "--cutoff_len" not in err
    code, _, err = run_cli(argv + ["--lora-rank", "0"], capsys)
    assert code != 0 and "--lora-rank must be positive" in err
