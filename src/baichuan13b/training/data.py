"""Training data: alpaca / ShareGPT JSON, named datasets from ``dataset_info.json``, raw text for pre-training.

Every supervised record becomes a conversation (``system?``, then alternating ``user`` / ``assistant``
messages, last one from the assistant) and is encoded with the official chat layout of :mod:`baichuan13b.chat`::

    system tokens (extension) + [user] + prompt + [assistant] + answer + [eos] + [user] + ...

Labels are ``-100`` everywhere except the answer tokens and their ``eos`` (every assistant turn, history
included, as LLaMA-Efficient-Tuning does), so the loss is computed on answers only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..chat import turn_ids, validate_messages

IGNORE_INDEX = -100
FORMATS = ("alpaca", "sharegpt", "text")
# Alpaca column names (dataset_info.json "columns" may rename them).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


class DataError(ValueError):
    """A dataset that cannot be read; the message names the file and, for a bad record, its index."""


@dataclass
class DatasetSpec:
    """Where one named dataset lives and how to read it."""

    name: str
    file: Path
    formatting: str = "alpaca"  # alpaca | sharegpt | text
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class Example:
    """One encoded training sequence: ``input_ids`` and ``labels`` of equal length."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class ChatIds:
    """The special token ids of the chat layout (from the model's generation config)."""

    user_token_id: int
    assistant_token_id: int
    eos_token_id: int

    @classmethod
    def from_model(cls, model: Any) -> "ChatIds":
        """The ids :func:`baichuan13b.chat.build_chat_input` would use for ``model``."""
        from ..generation import GenerationConfig

        cfg = model.generation_config or GenerationConfig.from_model_config(model.config)
        eos = cfg.eos_token_ids[0] if cfg.eos_token_ids else model.config.eos_token_id
        return cls(cfg.user_token_id, cfg.assistant_token_id, eos)


# ---------------------------------------------------------------------------------------------------- locating
def resolve_datasets(names: str | Sequence[str], dataset_dir: str | os.PathLike) -> list[DatasetSpec]:
    """Turn ``--dataset a,b`` into specs: names from ``dataset_dir/dataset_info.json``, else file paths.

    A name that is neither a ``dataset_info.json`` entry nor an existing file (as given or under
    ``dataset_dir``) is an error listing the close matches.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        raise DataError("--dataset is empty: give one or more dataset names or files, comma separated")
    dataset_dir = Path(dataset_dir)
    info_path = dataset_dir / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{info_path} is not valid JSON: {e}") from e
        if not isinstance(info, dict):
            raise DataError(f"{info_path} must hold a JSON object of dataset name -> description")
    specs = []
    for name in names:
        if name in info:
            specs.append(_spec_from_info(name, info[name], dataset_dir, info_path))
            continue
        for candidate in (Path(name), dataset_dir / name):
            if candidate.is_file():
                specs.append(DatasetSpec(name, candidate, _guess_format(candidate)))
                break
        else:
            close = get_close_matches(name, list(info), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = f" (known in {info_path}: {', '.join(sorted(info)) or 'none'})" if info_path.is_file() else (
                f" (no dataset_info.json in {dataset_dir})")
            raise DataError(f"unknown dataset {name!r}: not in dataset_info.json and not a file{known}{hint}")
    return specs


def _spec_from_info(name: str, entry: Any, dataset_dir: Path, info_path: Path) -> DatasetSpec:
    if not isinstance(entry, dict):
        raise DataError(f"{info_path}: entry {name!r} must be an object with 'file_name'")
    if "file_name" not in entry:
        remote = next((k for k in ("hf_hub_url", "ms_hub_url", "script_url") if k in entry), None)
        if remote:
            raise DataError(f"{info_path}: dataset {name!r} is remote ({remote}={entry[remote]!r}); download it "
                            f"and give its 'file_name' (this program reads local files only)")
        raise DataError(f"{info_path}: dataset {name!r} has no 'file_name'")
    file = dataset_dir / entry["file_name"]
    if not file.is_file():
        raise DataError(f"{info_path}: dataset {name!r} file {file} does not exist")
    formatting = entry.get("formatting") or _guess_format(file)
    if formatting not in FORMATS:
        raise DataError(f"{info_path}: dataset {name!r} has formatting {formatting!r}; expected one of "
                        f"{', '.join(FORMATS)}")
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict):
        raise DataError(f"{info_path}: dataset {name!r} 'columns' must be an object")
    return DatasetSpec(name, file, formatting, {k: v for k, v in columns.items() if v})


def _guess_format(file: Path) -> str:
    return "text" if file.suffix in (".txt", ".text") else "alpaca"  # sharegpt is detected per record


# ---------------------------------------------------------------------------------------------------- reading
def read_records(file: Path) -> list[Any]:
    """The records of a ``.json`` (a list) or ``.jsonl`` (one object a line) file."""
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".jsonl":
        records = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{file}: line {i + 1} is not valid JSON: {e}") from e
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise DataError(f"{file} must hold a JSON list of records, got {type(data).__name__}")
    return data


def record_to_messages(record: Any, formatting: str, columns: Mapping[str, str] | None = None) -> list[dict]:
    """One record as chat messages; raises ``ValueError`` saying what is wrong with it.

    Alpaca: prompt = ``instruction + "\\n" + input`` (just ``instruction`` when ``input`` is empty, as in the
    seed), answer = ``output``, ``history`` = ``[[prompt, answer], ...]`` before it, optional ``system``.
    ShareGPT: ``conversations`` = ``[{"from": "human"|"gpt"|"system", "value": ...}, ...]``.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    if formatting == "sharegpt" or (formatting == "alpaca" and "conversations" in record
                                    and "instruction" not in record):
        cols = {**SHAREGPT_COLUMNS, **(columns or {})}
        messages = _sharegpt_messages(record, cols)
    elif formatting == "alpaca":
        cols = {**ALPACA_COLUMNS, **(columns or {})}
        messages = _alpaca_messages(record, cols)
    else:
        raise ValueError(f"formatting {formatting!r} has no conversations (use --stage pt for text)")
    validate_messages(messages)
    roles = [m["role"] for m in messages if m["role"] != "system"]
    expected = ["user", "assistant"] * (len(roles) // 2)
    if roles != expected or not roles:
        raise ValueError(f"turns must alternate user/assistant and end with an answer, got roles {roles}")
    return messages


def _text_field(record: dict, key: str, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _alpaca_messages(record: dict, cols: Mapping[str, str]) -> list[dict]:
    instruction = _text_field(record, cols["prompt"], required=True)
    query = _text_field(record, cols["query"], required=False)
    answer = _text_field(record, cols["response"], required=True)
    prompt = instruction + "\n" + query if query else instruction
    if not prompt.strip():
        raise ValueError(f"empty prompt ({cols['prompt']!r} and {cols['query']!r})")
    messages: list[dict] = []
    system = _text_field(record, cols["system"], required=False)
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get(cols["history"]) or []
    if not isinstance(history, list):
        raise ValueError(f"field {cols['history']!r} must be a list of [prompt, answer] pairs")
    for j, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"history item {j} must be a [prompt, answer] pair of strings, got {pair!r}")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return messages


def _sharegpt_messages(record: dict, cols: Mapping[str, str]) -> list[dict]:
    turns = record.get(cols["messages"])
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"field {cols['messages']!r} must be a non-empty list of turns")
    messages: list[dict] = []
    system = _text_field(record, cols["system"], required=False)
    if system:
        messages.append({"role": "system", "content": system})
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"turn {j} must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"turn {j} has unknown 'from' {turn['from']!r}; expected human, gpt or system")
        if not isinstance(turn["value"], str):
            raise ValueError(f"turn {j} 'value' must be a string")
        messages.append({"role": role, "content": turn["value"]})
    return messages


# ---------------------------------------------------------------------------------------------------- encoding
def encode_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]], ids: ChatIds,
                    cutoff_len: int) -> Example:
    """Encode a conversation in the official chat layout with labels on the answers only.

    Longer than ``cutoff_len``: the oldest whole rounds are dropped first (as chat does at inference); if the
    last round alone is too long its prompt is cut from the left (keeping at most ``cutoff_len // 2`` prompt
    tokens when the answer is long) and then the sequence is cut at ``cutoff_len``.
    """
    system: list[int] = []
    if messages and messages[0]["role"] == "system":
        system = tokenizer.encode(messages[0]["content"], add_special_tokens=False)
        messages = messages[1:]
    layout = dict(user_token_id=ids.user_token_id, assistant_token_id=ids.assistant_token_id,
                  eos_token_id=ids.eos_token_id)
    rounds: list[tuple[list[int], list[int]]] = []  # (prompt part, labelled part) per round
    for k in range(0, len(messages), 2):
        user = turn_ids("user", tokenizer.encode(messages[k]["content"], add_special_tokens=False), **layout)
        answer = turn_ids("assistant", tokenizer.encode(messages[k + 1]["content"], add_special_tokens=False),
                          **layout)
        # The assistant token is part of the prompt; the answer tokens and eos are the targets.
        rounds.append((user + answer[:1], answer[1:]))
    budget = max(0, cutoff_len - len(system))
    kept: list[tuple[list[int], list[int]]] = []
    used = 0
    for prompt, target in reversed(rounds):  # newest first, whole rounds
        n = len(prompt) + len(target)
        if kept and used + n > budget:
            break
        kept.insert(0, (prompt, target))
        used += n
    if used > budget:  # the last round alone is too long
        prompt, target = kept[0]
        keep_prompt = max(budget - len(target), min(len(prompt), budget // 2))
        kept[0] = (prompt[-keep_prompt:] if keep_prompt > 0 else [], target)
    input_ids, labels = list(system), [IGNORE_INDEX] * len(system)
    for prompt, target in kept:
        input_ids += prompt + target
        labels += [IGNORE_INDEX] * len(prompt) + target
    return Example(input_ids[:cutoff_len], labels[:cutoff_len])


@dataclass
class LoadReport:
    """How many records each file gave, and how many were skipped (bad or empty after truncation)."""

    loaded: dict[str, int] = field(default_factory=dict)
    skipped_bad: int = 0
    skipped_empty: int = 0
    first_errors: list[str] = field(default_factory=list)


def load_sft_examples(specs: Sequence[DatasetSpec], tokenizer: Any, ids: ChatIds, cutoff_len: int, *,
                      skip_bad_records: bool = False, report: LoadReport | None = None) -> list[Example]:
    """Read and encode every record of ``specs`` (in order).

    A malformed record is a :class:`DataError` naming the file and the record index, unless
    ``skip_bad_records`` is set: then it is skipped and counted in ``report``. Examples left without any
    answer token after truncation are skipped and counted too.
    """
    report = report if report is not None else LoadReport()
    examples: list[Example] = []
    for spec in specs:
        if spec.formatting == "text":
            raise DataError(f"dataset {spec.name!r} ({spec.file}) is raw text: use --stage pt, or a JSON file "
                            f"of alpaca or sharegpt records for --stage sft")
        records = read_records(spec.file)
        count = 0
        for i, record in enumerate(records):
            try:
                messages = record_to_messages(record, spec.formatting, spec.columns)
            except ValueError as e:
                message = f"{spec.file}: record {i}: {e}"
                if not skip_bad_records:
                    raise DataError(message + " (use --skip_bad_records to skip and count such records)") from e
                report.skipped_bad += 1
                if len(report.first_errors) < 5:
                    report.first_errors.append(message)
                continue
            example = encode_messages(tokenizer, messages, ids, cutoff_len)
            if all(label == IGNORE_INDEX for label in example.labels[1:]):
                report.skipped_empty += 1
                continue
            examples.append(example)
            count += 1
        report.loaded[str(spec.file)] = count
    return examples


def iter_pt_texts(spec: DatasetSpec) -> Iterator[str]:
    """Documents of a pre-training dataset: one per non-empty line of a text file, or the ``text`` column
    (``columns.prompt`` in dataset_info.json) of JSON records."""
    if spec.formatting == "text":
        with open(spec.file, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")
        return
    key = (spec.columns or {}).get("prompt", "text")
    for i, record in enumerate(read_records(spec.file)):
        if not isinstance(record, dict) or not isinstance(record.get(key), str):
            raise DataError(f"{spec.file}: record {i}: pre-training records need a string field {key!r}")
        yield record[key]


def load_pt_examples(specs: Sequence[DatasetSpec], tokenizer: Any, eos_token_id: int,
                     cutoff_len: int) -> list[Example]:
    """Pre-training blocks: every document encoded and followed by ``eos``, all concatenated, cut into blocks of
    ``cutoff_len`` tokens (the remainder shorter than a block is dropped unless it is the only block)."""
    stream: list[int] = []
    for spec in specs:
        for text in iter_pt_texts(spec):
            stream += tokenizer.encode(text, add_special_tokens=False) + [eos_token_id]
    if not stream:
        raise DataError(f"no text in {', '.join(str(s.file) for s in specs)}")
    n_blocks = max(1, len(stream) // cutoff_len)
    blocks = [stream[k * cutoff_len:(k + 1) * cutoff_len] for k in range(n_blocks)]
    return [Example(b, list(b)) for b in blocks]


def split_dev(examples: list[Example], dev_ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded random split: ``(train, dev)`` with ``round(len * dev_ratio)`` dev examples (at least one when
    the ratio is positive; a ratio >= 1 is a count)."""
    if dev_ratio <= 0:
        return examples, []
    n_dev = int(dev_ratio) if dev_ratio >= 1 else max(1, round(len(examples) * dev_ratio))
    if n_dev >= len(examples):
        raise DataError(f"--dev_ratio {dev_ratio} leaves no training data ({len(examples)} examples)")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    dev = set(order[:n_dev])
    return ([e for i, e in enumerate(examples) if i not in dev], [e for i, e in enumerate(examples) if i in dev])


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels``, each [batch, longest]."""
    longest = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, epoch: int, seed: int, global_batch: int) -> list[int]:
    """The example order of ``epoch``: a permutation seeded by ``seed + epoch``, extended by wrapping to a
    multiple of ``global_batch`` (as ``DistributedSampler`` pads), so every optimizer step sees a full batch on
    every process and N processes see exactly the samples one process would."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    steps = -(-n // global_batch)
    while len(order) < steps * global_batch:
        order += order[: steps * global_batch - len(order)]
    return order
