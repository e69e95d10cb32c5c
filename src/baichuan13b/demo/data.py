"""Deterministic bilingual training data for the demo model, generated from facts held in this file.

Nothing is downloaded. Three sets come out of the same facts:

* ``training_conversations()``: the SFT set (phrasings the model is trained on), Chinese and English,
  single- and two-turn;
* ``heldout_conversations()``: the same facts asked in phrasings never used in training;
* ``pretraining_lines()``: plain sentences stating the facts, for the pre-training stage.

Answers are canonical strings, so "exact answer" accuracy is a string comparison.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# ------------------------------------------------------------------------------------------------ facts
# (Chinese name, English name, height in metres), highest first.
MOUNTAINS = [
    ("珠穆朗玛峰", "Mount Everest", 8849),
    ("乔戈里峰（K2）", "K2", 8611),
    ("干城章嘉峰", "Kangchenjunga", 8586),
    ("洛子峰", "Lhotse", 8516),
    ("马卡鲁峰", "Makalu", 8485),
]
RANKS_ZH = ["最高", "第二高", "第三高", "第四高", "第五高"]
RANKS_EN = ["highest", "second highest", "third highest", "fourth highest", "fifth highest"]

# (Chinese name, English name, length in km), longest first.
RIVERS = [("尼罗河", "Nile", 6650), ("亚马孙河", "Amazon", 6400), ("长江", "Yangtze", 6300)]
LONG_ZH = ["最长", "第二长", "第三长"]
LONG_EN = ["longest", "second longest", "third longest"]

# (country zh, country en, capital zh, capital en)
CAPITALS = [
    ("中国", "China", "北京", "Beijing"),
    ("日本", "Japan", "东京", "Tokyo"),
    ("法国", "France", "巴黎", "Paris"),
    ("英国", "the United Kingdom", "伦敦", "London"),
    ("美国", "the United States", "华盛顿", "Washington, D.C."),
    ("德国", "Germany", "柏林", "Berlin"),
    ("意大利", "Italy", "罗马", "Rome"),
    ("俄罗斯", "Russia", "莫斯科", "Moscow"),
    ("加拿大", "Canada", "渥太华", "Ottawa"),
    ("澳大利亚", "Australia", "堪培拉", "Canberra"),
    ("印度", "India", "新德里", "New Delhi"),
    ("巴西", "Brazil", "巴西利亚", "Brasília"),
    ("埃及", "Egypt", "开罗", "Cairo"),
    ("西班牙", "Spain", "马德里", "Madrid"),
    ("韩国", "South Korea", "首尔", "Seoul"),
]

# (unit zh, unit en plural, smaller unit zh, smaller unit en plural, factor)
CONVERSIONS = [
    ("公里", "kilometres", "米", "metres", 1000),
    ("千克", "kilograms", "克", "grams", 1000),
    ("小时", "hours", "分钟", "minutes", 60),
]

WORDS = ["apple", "river", "mountain", "python", "water", "green", "house", "music", "paper", "light",
         "table", "cloud", "bread", "stone", "tiger", "happy"]

IDENTITY_ZH = ("我是百川演示模型，一个由本项目在本机从零训练的小型中英双语模型，只认识很少的知识。"
               "要使用真正的 Baichuan-13B，请运行 baichuan chat --model baichuan-inc/Baichuan-13B-Chat。")
IDENTITY_EN = ("I am the Baichuan demo model, a tiny bilingual model trained from scratch on this machine by "
               "this project; I know only a few facts. For the real Baichuan-13B, run "
               "baichuan chat --model baichuan-inc/Baichuan-13B-Chat.")
GREETING_ZH = "你好！我是百川演示模型，有什么可以帮你？"
GREETING_EN = "Hello! I am the Baichuan demo model. How can I help you?"


@dataclass(frozen=True)
class Conversation:
    """One training/evaluation example: earlier (user, assistant) turns, then ``prompt`` -> ``answer``."""

    prompt: str
    answer: str
    history: tuple[tuple[str, str], ...] = field(default=())
    topic: str = ""

    def messages(self) -> list[dict[str, str]]:
        """The conversation in chat-message form, ending with the user's prompt."""
        out: list[dict[str, str]] = []
        for user, assistant in self.history:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return out + [{"role": "user", "content": self.prompt}]


# ------------------------------------------------------------------------------------------------ answers
def mountain_answer_zh(i: int) -> str:
    zh, _, h = MOUNTAINS[i]
    return f"世界上{RANKS_ZH[i]}的山峰是{zh}，海拔{h}米。"


def mountain_answer_en(i: int) -> str:
    _, en, h = MOUNTAINS[i]
    return f"The {RANKS_EN[i]} mountain in the world is {en}, {h} metres high."


def river_answer_zh(i: int) -> str:
    zh, _, km = RIVERS[i]
    return f"世界上{LONG_ZH[i]}的河流是{zh}，全长约{km}公里。"


def river_answer_en(i: int) -> str:
    _, en, km = RIVERS[i]
    return f"The {LONG_EN[i]} river in the world is the {en}, about {km} km long."


def capital_answer_zh(i: int) -> str:
    country, _, capital, _ = CAPITALS[i]
    return f"{country}的首都是{capital}。"


def capital_answer_en(i: int) -> str:
    _, country, _, capital = CAPITALS[i]
    return f"The capital of {country} is {capital}."


# ------------------------------------------------------------------------------------------------ sets
def _facts(phrasing: str) -> list[Conversation]:
    """Single-turn fact questions; ``phrasing`` is "train" or "heldout"."""
    train = phrasing == "train"
    out: list[Conversation] = []
    for i in range(len(MOUNTAINS)):
        zh_q = ["世界上{r}的山峰是哪座？", "世界上{r}的山是什么？", "全球{r}的山峰是哪一座？"] if train \
            else ["请问全球{r}的山峰叫什么名字？"]
        en_q = ["What is the {r} mountain in the world?", "Which mountain is the {r} in the world?",
                "Name the {r} mountain in the world."] if train \
            else ["Tell me the name of the {r} mountain on Earth."]
        out += [Conversation(q.format(r=RANKS_ZH[i]), mountain_answer_zh(i), topic="mountain") for q in zh_q]
        out += [Conversation(q.format(r=RANKS_EN[i]), mountain_answer_en(i), topic="mountain") for q in en_q]
    for i in range(len(RIVERS)):
        zh_q = ["世界上{r}的河流是哪条？", "世界上{r}的河是什么？", "全球{r}的河流叫什么？"] if train \
            else ["地球上{r}的河叫什么？"]
        en_q = ["What is the {r} river in the world?", "Which river is the {r} in the world?",
                "Tell me the {r} river in the world."] if train \
            else ["Name the {r} river on Earth."]
        out += [Conversation(q.format(r=LONG_ZH[i]), river_answer_zh(i), topic="river") for q in zh_q]
        out += [Conversation(q.format(r=LONG_EN[i]), river_answer_en(i), topic="river") for q in en_q]
    for i, (c_zh, c_en, _, _) in enumerate(CAPITALS):
        zh_q = ["{c}的首都是哪里？", "{c}的首都是哪个城市？", "{c}的首都叫什么？"] if train \
            else ["请告诉我{c}的首都。"]
        en_q = ["What is the capital of {c}?", "Which city is the capital of {c}?",
                "Tell me the capital of {c}."] if train \
            else ["Name the capital city of {c}."]
        out += [Conversation(q.format(c=c_zh), capital_answer_zh(i), topic="capital") for q in zh_q]
        out += [Conversation(q.format(c=c_en), capital_answer_en(i), topic="capital") for q in en_q]
    return out


def _arithmetic(phrasing: str) -> list[Conversation]:
    train = phrasing == "train"
    out: list[Conversation] = []
    for a in range(13):
        for b in range(13):
            if train:
                out.append(Conversation(f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。", topic="arithmetic"))
                out.append(Conversation(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", topic="arithmetic"))
                if a >= b:
                    out.append(Conversation(f"{a}减{b}等于多少？", f"{a}减{b}等于{a - b}。", topic="arithmetic"))
                    out.append(Conversation(f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.",
                                            topic="arithmetic"))
            elif (a * 13 + b) % 7 == 0:  # a fixed sample in another phrasing
                out.append(Conversation(f"请计算{a}加{b}。", f"{a}加{b}等于{a + b}。", topic="arithmetic"))
                out.append(Conversation(f"Compute {a} plus {b}.", f"{a} plus {b} is {a + b}.", topic="arithmetic"))
    for a in range(1, 10):
        for b in range(1, 10):
            if train:
                out.append(Conversation(f"{a}乘以{b}等于多少？", f"{a}乘以{b}等于{a * b}。", topic="arithmetic"))
                out.append(Conversation(f"What is {a} times {b}?", f"{a} times {b} is {a * b}.", topic="arithmetic"))
    return out


def _conversions(phrasing: str) -> list[Conversation]:
    train = phrasing == "train"
    out: list[Conversation] = []
    for big_zh, big_en, small_zh, small_en, factor in CONVERSIONS:
        for n in range(1, 11):
            zh_a = f"{n}{big_zh}等于{n * factor}{small_zh}。"
            en_a = f"{n} {big_en if n > 1 else big_en[:-1]} is {n * factor} {small_en}."
            if train:
                out.append(Conversation(f"{n}{big_zh}等于多少{small_zh}？", zh_a, topic="conversion"))
                unit = big_en if n > 1 else big_en[:-1]
                out.append(Conversation(f"How many {small_en} are in {n} {unit}?", en_a, topic="conversion"))
            elif n % 3 == 0:
                out.append(Conversation(f"把{n}{big_zh}换算成{small_zh}。", zh_a, topic="conversion"))
                out.append(Conversation(f"Convert {n} {big_en} to {small_en}.", en_a, topic="conversion"))
    return out


def _identity(phrasing: str) -> list[Conversation]:
    if phrasing == "train":
        zh = ["你是谁？", "你叫什么名字？", "介绍一下你自己。"]
        en = ["Who are you?", "What is your name?", "Introduce yourself."]
        greet_zh, greet_en = ["你好", "您好！"], ["Hello", "Hi!"]
    else:
        zh, en, greet_zh, greet_en = ["请问你是什么模型？"], ["What kind of model are you?"], ["嗨，你好呀"], ["Hey there"]
    return ([Conversation(q, IDENTITY_ZH, topic="identity") for q in zh]
            + [Conversation(q, IDENTITY_EN, topic="identity") for q in en]
            + [Conversation(q, GREETING_ZH, topic="greeting") for q in greet_zh]
            + [Conversation(q, GREETING_EN, topic="greeting") for q in greet_en])


def _instructions(phrasing: str) -> list[Conversation]:
    train = phrasing == "train"
    words = WORDS if train else WORDS[::4]
    out: list[Conversation] = []
    for w in words:
        if train:
            out.append(Conversation(f"Reverse the word {w}.", f"{w[::-1]}", topic="instruction"))
            out.append(Conversation(f"把单词{w}倒过来写。", f"{w[::-1]}", topic="instruction"))
            out.append(Conversation(f"Write {w} in upper case.", w.upper(), topic="instruction"))
            out.append(Conversation(f"How many letters are in the word {w}?",
                                    f"The word {w} has {len(w)} letters.", topic="instruction"))
            out.append(Conversation(f"单词{w}有几个字母？", f"单词{w}有{len(w)}个字母。", topic="instruction"))
        else:
            out.append(Conversation(f"Please spell {w} backwards.", f"{w[::-1]}", topic="instruction"))
            out.append(Conversation(f"Make {w} upper case.", w.upper(), topic="instruction"))
    return out


def _follow_ups(phrasing: str) -> list[Conversation]:
    """Two-turn conversations whose second question only makes sense with the first."""
    train = phrasing == "train"
    out: list[Conversation] = []
    for i in range(len(MOUNTAINS) - 1):
        first_zh = ("世界上{r}的山峰是哪座？" if train else "请问全球{r}的山峰叫什么名字？").format(r=RANKS_ZH[i])
        first_en = ("What is the {r} mountain in the world?" if train
                    else "Tell me the name of the {r} mountain on Earth.").format(r=RANKS_EN[i])
        then_zh = ("那{r}的呢？" if train else "{r}的又是哪座？").format(r=RANKS_ZH[i + 1])
        then_en = ("And the {r}?" if train else "What about the {r} one?").format(r=RANKS_EN[i + 1])
        out.append(Conversation(then_zh, mountain_answer_zh(i + 1), ((first_zh, mountain_answer_zh(i)),),
                                topic="follow-up"))
        out.append(Conversation(then_en, mountain_answer_en(i + 1), ((first_en, mountain_answer_en(i)),),
                                topic="follow-up"))
    for i in range(len(CAPITALS) - 1):
        c1_zh, c1_en = CAPITALS[i][0], CAPITALS[i][1]
        c2_zh, c2_en = CAPITALS[i + 1][0], CAPITALS[i + 1][1]
        if train:
            out.append(Conversation(f"那{c2_zh}呢？", capital_answer_zh(i + 1),
                                    ((f"{c1_zh}的首都是哪里？", capital_answer_zh(i)),), topic="follow-up"))
            out.append(Conversation(f"And {c2_en}?", capital_answer_en(i + 1),
                                    ((f"What is the capital of {c1_en}?", capital_answer_en(i)),),
                                    topic="follow-up"))
        elif i % 3 == 0:
            out.append(Conversation(f"{c2_zh}的呢？", capital_answer_zh(i + 1),
                                    ((f"请告诉我{c1_zh}的首都。", capital_answer_zh(i)),), topic="follow-up"))
            out.append(Conversation(f"What about {c2_en}?", capital_answer_en(i + 1),
                                    ((f"Name the capital city of {c1_en}.", capital_answer_en(i)),),
                                    topic="follow-up"))
    return out


def training_conversations() -> list[Conversation]:
    """The SFT set, in a fixed order (shuffling is the trainer's job, with its seed)."""
    return (_facts("train") + _arithmetic("train") + _conversions("train") + _identity("train")
            + _instructions("train") + _follow_ups("train"))


def heldout_conversations() -> list[Conversation]:
    """The same facts in phrasings that never occur in training."""
    return (_facts("heldout") + _arithmetic("heldout") + _conversions("heldout") + _identity("heldout")
            + _instructions("heldout") + _follow_ups("heldout"))


def pretraining_lines() -> list[str]:
    """Plain sentences stating every fact in both languages (pre-training text)."""
    lines = [mountain_answer_zh(i) for i in range(len(MOUNTAINS))]
    lines += [mountain_answer_en(i) for i in range(len(MOUNTAINS))]
    lines += [river_answer_zh(i) for i in range(len(RIVERS))] + [river_answer_en(i) for i in range(len(RIVERS))]
    lines += [capital_answer_zh(i) for i in range(len(CAPITALS))]
    lines += [capital_answer_en(i) for i in range(len(CAPITALS))]
    lines += [IDENTITY_ZH, IDENTITY_EN, GREETING_ZH, GREETING_EN]
    lines += sorted({c.answer for c in _arithmetic("train") + _conversions("train")})
    lines += [f"The word {w} reversed is {w[::-1]}, and in upper case it is {w.upper()}." for w in WORDS]
    return lines


def to_alpaca(conversations: list[Conversation]) -> list[dict]:
    """Alpaca records (``instruction``, ``input``, ``output``, ``history`` as [user, assistant] pairs)."""
    return [{"instruction": c.prompt, "input": "", "output": c.answer,
             "history": [list(turn) for turn in c.history]} for c in conversations]


def write_dataset(folder: str | os.PathLike) -> Path:
    """Write ``demo_sft.json``, ``demo_pt.txt`` and ``dataset_info.json`` (datasets ``demo_sft``, ``demo_pt``)."""
    from ..files import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "demo_sft.json",
                      json.dumps(to_alpaca(training_conversations()), ensure_ascii=False, indent=1) + "\n")
    atomic_write_text(folder / "demo_pt.txt", "\n".join(pretraining_lines()) + "\n")
    info = {"demo_sft": {"file_name": "demo_sft.json"},
            "demo_pt": {"file_name": "demo_pt.txt"}}
    atomic_write_text(folder / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    return folder
