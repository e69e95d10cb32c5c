"""Training data: formats, the chat layout and labels, errors naming file and record, flags."""

import json

import pytest
from training_helpers import write_dataset

from baichuan13b.chat import build_chat_ids
from baichuan13b.tokenizer import BaichuanTokenizer
from baichuan13b.training.arguments import parse_finetune_args
from baichuan13b.training.data import (ChatIds, DataError, collate, encode_messages, epoch_order,
                                       load_pt_examples, load_sft_examples, record_to_messages, resolve_datasets,
                                       split_dev)

IDS = ChatIds(user_token_id=3, assistant_token_id=4, eos_token_id=2)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_alpaca_record_uses_the_official_chat_layout_with_loss_on_answers(tok):
    record = {"instruction": "Say hello", "input": "to the world", "output": "hello world",
              "system": "be brief", "history": [["quick fox", "lazy dog"]]}
    messages = record_to_messages(record, "alpaca")
    ex = encode_messages(tok, messages, IDS, cutoff_len=512)
    sys_ids, q1, a1 = enc(tok, "be brief"), enc(tok, "quick fox"), enc(tok, "lazy dog")
    q2, a2 = enc(tok, "Say hello\nto the world"), enc(tok, "hello world")
    assert ex.input_ids == sys_ids + [3] + q1 + [4] + a1 + [2] + [3] + q2 + [4] + a2 + [2]
    ignore = lambda n: [-100] * n  # noqa: E731
    assert ex.labels == (ignore(len(sys_ids) + 1 + len(q1) + 1) + a1 + [2] + ignore(1 + len(q2) + 1) + a2 + [2])
    # The prompt part is exactly what chat() feeds the model at inference time.
    prompt = build_chat_ids(tok, messages[:-1], model_max_length=4096, max_new_tokens=16, user_token_id=3,
                            assistant_token_id=4, eos_token_id=2)
    assert ex.input_ids[:len(prompt)] == prompt


def test_empty_input_gives_the_instruction_alone_and_sharegpt_matches_alpaca(tok):
    a = record_to_messages({"instruction": "hi", "input": "", "output": "yo"}, "alpaca")
    s = record_to_messages({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
                           "sharegpt")
    assert a == s == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_cutoff_drops_oldest_rounds_then_cuts(tok):
    messages = [{"role": "user", "content": "The quick brown fox " * 3},
                {"role": "assistant", "content": "jumps over the lazy dog " * 3},
                {"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    full = encode_messages(tok, messages, IDS, 512)
    last = encode_messages(tok, messages[2:], IDS, 512)
    short = encode_messages(tok, messages, IDS, len(last.input_ids) + 3)
    assert len(full.input_ids) > len(short.input_ids) and short.input_ids == last.input_ids
    tiny = encode_messages(tok, [{"role": "user", "content": "The quick brown fox jumps " * 4},
                                 {"role": "assistant", "content": "ok"}], IDS, 12)
    assert len(tiny.input_ids) == 12 and tiny.labels[-1] == 2 and tiny.input_ids[-1] == 2


def test_bad_record_names_file_and_index_or_is_skipped_and_counted(tmp_path, tok):
    records = [{"instruction": "a", "output": "b"}, {"instruction": "a"}, {"instruction": "c", "output": 5}]
    write_dataset(tmp_path, records)
    specs = resolve_datasets("qa", tmp_path)
    with pytest.raises(DataError, match=r"qa\.json: record 1: missing field 'output'"):
        load_sft_examples(specs, tok, IDS, 64)
    from baichuan13b.training.data import LoadReport

    report = LoadReport()
    out = load_sft_examples(specs, tok, IDS, 64, skip_bad_records=True, report=report)
    assert len(out) == 1 and report.skipped_bad == 2 and "record 2" in report.first_errors[1]


def test_named_datasets_several_and_unknown_names(tmp_path, tok):
    write_dataset(tmp_path, [{"instruction": "x", "output": "y"}] * 3)
    (tmp_path / "chats.json").write_text(json.dumps([{"talk": [{"from": "human", "value": "q"},
                                                               {"from": "gpt", "value": "r"}]}]))
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    info["chats"] = {"file_name": "chats.json", "formatting": "sharegpt", "columns": {"messages": "talk"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    specs = resolve_datasets("qa,chats", tmp_path)
    assert [s.formatting for s in specs] == ["alpaca", "sharegpt"]
    assert len(load_sft_examples(specs, tok, IDS, 64)) == 4
    with pytest.raises(DataError, match="did you mean chats"):
        resolve_datasets("chat", tmp_path)


def test_pretraining_blocks_from_text(tmp_path, tok):
    (tmp_path / "corpus.txt").write_text("The quick brown fox.\n\nHello world.\n" * 20)
    specs = resolve_datasets("corpus.txt", tmp_path)
    blocks = load_pt_examples(specs, tok, 2, 16)
    stream = (enc(tok, "The quick brown fox.") + [2] + enc(tok, "Hello world.") + [2]) * 20
    assert [b.input_ids for b in blocks] == [stream[i:i + 16] for i in range(0, len(stream) // 16 * 16, 16)]
    assert all(b.labels == b.input_ids for b in blocks)
    with pytest.raises(DataError, match="use --stage pt"):
        load_sft_examples(specs, tok, IDS, 16)


def test_collate_split_and_order():
    from baichuan13b.training.data import Example

    batch = collate([Example([5, 6, 7], [-100, 6, 7]), Example([8], [8])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    train, dev = split_dev([Example([i], [i]) for i in range(10)], 0.2, seed=0)
    assert len(dev) == 2 and sorted(e.input_ids[0] for e in train + dev) == list(range(10))
    order = epoch_order(10, epoch=0, seed=0, global_batch=4)
    assert len(order) == 12 and sorted(order[:10]) == list(range(10)) and order[10:] == order[:2]
    assert order != epoch_order(10, epoch=1, seed=0, global_batch=4)


def test_the_seeds_commands_parse_and_typos_name_close_flags(tmp_path):
    seed_full = ("--stage sft --model_name_or_path baichuan-inc/Baichuan-13B-Base --do_train --dataset "
                 "alpaca_gpt4_en,alpaca_gpt4_zh --finetuning_type full --output_dir out --overwrite_cache "
                 "--per_device_train_batch_size 4 --per_device_eval_batch_size 4 --gradient_accumulation_steps 8 "
                 "--preprocessing_num_workers 16 --lr_scheduler_type cosine --logging_steps 10 --save_steps 100 "
                 "--eval_steps 100 --learning_rate 5e-5 --max_grad_norm 0.5 --num_train_epochs 2.0 --dev_ratio 0.01 "
                 "--evaluation_strategy steps --load_best_model_at_end --plot_loss --fp16 --deepspeed ds.json")
    a = parse_finetune_args(seed_full.split())
    assert (a.finetuning_type, a.gradient_accumulation_steps, a.dev_ratio, a.fp16, a.load_best_model_at_end) == (
        "full", 8, 0.01, True, True)
    a.validate()
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    a.deepspeed = str(tmp_path / "ds.json")
    assert a.deepspeed_stage() == 2
    lora = parse_finetune_args("--stage sft --model_name_or_path m --do_train --dataset d --finetuning_type lora "
                               "--lora_rank 8 --lora_target W_pack --output_dir o --val_size 0.1 --fp16 false".split())
    assert (lora.lora_rank, lora.lora_target, lora.dev_ratio, lora.fp16) == (8, "W_pack", 0.1, False)
    with pytest.raises(ValueError, match="--lora_rnk .did you mean --lora_rank"):
        parse_finetune_args("--lora_rnk 8".split())
    bad = parse_finetune_args("--model_name_or_path m --do_train --dataset d --output_dir o --load_best_model_at_end "
                              "--evaluation_strategy steps --dev_ratio 0.1 --save_steps 5 --eval_steps 2".split())
    with pytest.raises(ValueError, match="multiple of --eval_steps"):
        bad.validate()


def test_cli_unknown_flag_lists_close_matches():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "baichuan13b", "finetune", "--learning_rat", "1e-4"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--learning_rat (did you mean --learning_rate" in r.stderr
