"""Deterministic bilingual training data for the demo model, generated from facts held in this file.

Nothing is downloaded. Every question kind ("intent") has two disjoint families of phrasings: the ``train``
templates, which the model is trained on, and the ``heldout`` templates, which it never sees (the full sentence
of a held-out template never occurs in training; its words do, in other sentences). The sets:

* ``training_items()``: every trained question, one turn each (plus the two-turn follow-ups);
* ``training_conversations()``: the SFT set: those items joined into conversations of one to three unrelated
  rounds (so an answer must not depend on an earlier, unrelated turn), several times over in different orders;
* ``heldout_conversations()``: the same facts asked with the held-out templates, as the first message;
* ``ongoing_conversations()``: the held-out questions after one or two unrelated earlier rounds;
* ``unknown_conversations()``: questions outside the domain (entities, ranks, numbers and topics never trained),
  whose right answer is the polite refusal; ``unknown_ongoing_conversations()`` the same after earlier rounds;
* ``pretraining_lines()``: plain sentences stating the facts, for the pre-training stage.

Answers are canonical strings, so "exact answer" accuracy is a string comparison.
"""

from __future__ import annotations

import json
import os
import random
import re
import zlib
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
MOUNTAIN_NAMES_ZH = ["珠穆朗玛峰", "乔戈里峰", "干城章嘉峰", "洛子峰", "马卡鲁峰"]  # as a question names them
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

# Arithmetic: a + b, a - b (negative results included) and a * b for whole numbers 0 <= a, b <= ARITH_MAX.
ARITH_MAX = 12

# (unit zh, unit en plural, smaller unit zh, smaller unit en plural, factor); amounts 1..CONVERSION_MAX.
CONVERSIONS = [
    ("公里", "kilometres", "米", "metres", 1000),
    ("千克", "kilograms", "克", "grams", 1000),
    ("小时", "hours", "分钟", "minutes", 60),
]
CONVERSION_MAX = 10

WORDS = ["apple", "river", "mountain", "python", "water", "green", "house", "music", "paper", "light",
         "table", "cloud", "bread", "stone", "tiger", "happy"]

IDENTITY_ZH = ("我是百川演示模型，一个由本项目在本机从零训练的小型中英双语模型，只认识很少的知识。"
               "要使用真正的 Baichuan-13B，请运行 baichuan chat --model baichuan-inc/Baichuan-13B-Chat。")
IDENTITY_EN = ("I am the Baichuan demo model, a tiny bilingual model trained from scratch on this machine by "
               "this project; I know only a few facts. For the real Baichuan-13B, run "
               "baichuan chat --model baichuan-inc/Baichuan-13B-Chat.")
GREETING_ZH = "你好！我是百川演示模型，有什么可以帮你？"
GREETING_EN = "Hello! I am the Baichuan demo model. How can I help you?"
DONT_KNOW_ZH = "抱歉，我不知道。我只是一个很小的演示模型，知道的事情很少。"
DONT_KNOW_EN = "Sorry, I don't know. I am a tiny demo model and know only a few facts."
DONT_KNOW_MATH_ZH = f"抱歉，我不知道。我只会计算0到{ARITH_MAX}之间的整数的加、减、乘。"
DONT_KNOW_MATH_EN = f"Sorry, I don't know. I can only add, subtract and multiply whole numbers from 0 to {ARITH_MAX}."

# Outside the domain: entities, ranks and questions for the refusal, split into trained and held-out ones.
# (Chinese, English) country names.
UNKNOWN_COUNTRIES = {
    "train": [("秘鲁", "Peru"), ("墨西哥", "Mexico"), ("阿根廷", "Argentina"), ("肯尼亚", "Kenya"),
              ("挪威", "Norway"), ("瑞典", "Sweden"), ("芬兰", "Finland"), ("波兰", "Poland"), ("希腊", "Greece"),
              ("土耳其", "Turkey"), ("泰国", "Thailand"), ("越南", "Vietnam"), ("伊朗", "Iran"), ("智利", "Chile"),
              ("荷兰", "the Netherlands"), ("比利时", "Belgium"), ("瑞士", "Switzerland"), ("奥地利", "Austria"),
              ("葡萄牙", "Portugal"), ("新西兰", "New Zealand"), ("南非", "South Africa"), ("古巴", "Cuba"),
              ("蒙古", "Mongolia"), ("丹麦", "Denmark"), ("爱尔兰", "Ireland"), ("菲律宾", "the Philippines"),
              ("巴基斯坦", "Pakistan"), ("尼日利亚", "Nigeria"), ("印度尼西亚", "Indonesia"), ("以色列", "Israel")],
    "heldout": [("哥伦比亚", "Colombia"), ("乌克兰", "Ukraine"), ("马来西亚", "Malaysia"), ("冰岛", "Iceland"),
                ("匈牙利", "Hungary"), ("埃塞俄比亚", "Ethiopia"), ("摩洛哥", "Morocco"), ("捷克", "Czechia")],
}
UNKNOWN_MOUNTAINS = {
    "train": [("富士山", "Mount Fuji"), ("勃朗峰", "Mont Blanc"), ("乞力马扎罗山", "Kilimanjaro"), ("泰山", "Mount Tai"),
              ("阿空加瓜山", "Aconcagua"), ("德纳里山", "Denali"), ("厄尔布鲁士峰", "Elbrus")],
    "heldout": [("马特洪峰", "the Matterhorn"), ("黄山", "Mount Huang"), ("肯尼亚山", "Mount Kenya")],
}
UNKNOWN_RIVERS = {
    "train": [("黄河", "Yellow River"), ("多瑙河", "Danube"), ("莱茵河", "Rhine"), ("密西西比河", "Mississippi"),
              ("伏尔加河", "Volga"), ("恒河", "Ganges")],
    "heldout": [("泰晤士河", "Thames"), ("塞纳河", "Seine"), ("湄公河", "Mekong")],
}
UNKNOWN_MOUNTAIN_RANKS = {"train": [("第六高", "sixth highest"), ("第七高", "seventh highest"),
                                    ("第八高", "eighth highest"), ("第十高", "tenth highest")],
                          "heldout": [("第九高", "ninth highest")]}
UNKNOWN_RIVER_RANKS = {"train": [("第四长", "fourth longest"), ("第六长", "sixth longest"),
                                 ("第七长", "seventh longest"), ("第八长", "eighth longest")],
                       "heldout": [("第五长", "fifth longest")]}
UNKNOWN_QUESTIONS_ZH = {
    "train": ["今天天气怎么样？", "讲个笑话。", "谁写了《红楼梦》？", "太阳有多大？", "月亮离地球多远？", "你喜欢什么颜色？",
              "现在几点了？", "怎么做蛋糕？", "帮我写一首诗。", "人生的意义是什么？", "光速是多少？", "哪个国家人口最多？",
              "世界上最大的海洋是哪个？", "世界上最大的沙漠是哪个？", "明天会下雨吗？", "推荐一本书。", "什么是量子力学？",
              "怎么学好英语？", "中国有多少人口？", "法国的总统是谁？", "日本人说什么语言？", "美国有多少个州？",
              "地球有多重？", "水的沸点是多少度？", "谁发明了电灯？", "世界上最大的国家是哪个？", "北京有多少人？",
              "长城有多长？", "今天星期几？", "你会做饭吗？", "给我讲个故事。", "怎么写一个排序算法？", "猫为什么会叫？",
              "世界上最深的海沟是哪个？", "德国的人口是多少？", "英国的国王是谁？", "一年有多少天？", "什么是人工智能？",
              "巴西的官方语言是什么？", "电脑为什么会死机？", "世界上最高的塔是哪座？", "世界上最高的树是什么？",
              "世界上最长的桥是哪座？", "世界上最大的城市是哪个？"],
    "heldout": ["谁发明了电话？", "世界上最大的湖是哪个？", "明天天气好吗？", "给我唱首歌。", "宇宙有多大？",
                "意大利的总统是谁？", "怎么做红烧肉？", "什么是区块链？", "世界上最高的楼是哪座？", "地球上有多少人？",
                "月亮有多重？", "谁是世界上最富的人？"],
}
UNKNOWN_QUESTIONS_EN = {
    "train": ["What is the weather today?", "Tell me a joke.", "Who wrote Hamlet?", "How big is the sun?",
              "How far is the moon?", "What is your favourite colour?", "What time is it?", "How do I bake a cake?",
              "Write a poem.", "What is the meaning of life?", "What is the speed of light?",
              "Which country has the most people?", "What is the largest ocean in the world?",
              "What is the largest desert in the world?", "Will it rain tomorrow?", "Recommend a book.",
              "What is quantum physics?", "How can I learn Chinese?", "What is the population of China?",
              "Who is the president of France?", "What language do people speak in Japan?",
              "How many states does the United States have?", "How heavy is the Earth?",
              "At what temperature does water boil?", "Who invented the light bulb?",
              "What is the biggest country in the world?", "How many people live in Beijing?",
              "How long is the Great Wall?", "What day is it today?", "Can you cook?", "Tell me a story.",
              "How do I write a sorting algorithm?", "Why do cats meow?", "What is the deepest ocean trench?",
              "What is the population of Germany?", "Who is the king of the United Kingdom?",
              "How many days are in a year?", "What is artificial intelligence?",
              "What is the official language of Brazil?", "Why does my computer crash?",
              "What is the tallest tower in the world?", "What is the tallest tree in the world?",
              "What is the longest bridge in the world?", "What is the biggest city in the world?"],
    "heldout": ["Who invented the telephone?", "What is the largest lake in the world?", "Is it sunny tomorrow?",
                "Sing me a song.", "How big is the universe?", "Who is the president of Italy?",
                "How do I cook rice?", "What is a blockchain?", "What is the tallest building in the world?",
                "How many people live on Earth?", "How heavy is the moon?", "Who is the richest person in the world?"],
}


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

    def turns(self) -> tuple[tuple[str, str], ...]:
        """Every (user, assistant) round, the last one included."""
        return self.history + ((self.prompt, self.answer),)


# ------------------------------------------------------------------------------------------------ phrasings
# Each question kind ("intent") has a small grammar per language: full questions (asked with or without a
# lead-in such as "请问" / "Quick question:", ending with or without a question mark) and noun phrases (after
# "告诉我" / "Tell me", "你知道…吗" / "Do you know …?", or alone). Every sentence pattern it generates is either
# trained or held out by its wording (Grammar.units: lead-ins, endings and a leading 请 / Please do not count),
# fixed by a hash of the wording (one in HELDOUT_SHARE held out), except the wordings of the FORCED_TRAIN
# patterns, which the README, the tests and issue 17 quote, and wordings with a word that no trained wording of
# the same kind has (Grammar.heldout_units). So a held-out question is worded in a way never trained, with any
# lead-in or ending, from words its kind of question uses in training.
ZH_ASK = ("", "请问", "请问一下，", "问一下，", "我想问，")
ZH_END = ("？", "", "?")
ZH_TELL = (("告诉我", "。"), ("请告诉我", ""), ("我想知道", "。"), ("你知道", "吗？"), ("", "？"), ("", ""))
EN_ASK = ("^", "", "Please, ", "Hey, ", "Quick question: ", "Excuse me, ")  # "^": capitalised, no lead-in
EN_END = ("?", "")
EN_TELL = (("Tell me ", "."), ("Please tell me ", ""), ("Can you tell me ", "?"), ("Do you know ", "?"),
           ("I want to know ", "."), ("", "?"), ("", ""))
ZH_CALC = (("算一下", "。"), ("请计算", "。"), ("帮我算", ""), ("帮我算一下", "。"), ("", "=?"), ("", ""), ("", "？"))
EN_CALC = (("Calculate ", "."), ("Compute ", "."), ("Please compute ", ""), ("", " = ?"), ("", ""), ("", "?"),
           ("", " equals?"))
EN_NAME = EN_TELL + (("Name ", "."),)


@dataclass(frozen=True)
class Grammar:
    """One intent in one language: ``questions`` (asked with ``ask`` lead-ins and ``ends``) and ``phrases``
    (wrapped by the (before, after) pairs of ``tell``)."""

    questions: tuple[str, ...]
    phrases: tuple[str, ...] = ()
    ask: tuple[str, ...] = ZH_ASK
    ends: tuple[str, ...] = ZH_END
    tell: tuple[tuple[str, str], ...] = ZH_TELL

    def units(self) -> dict[str, list[str]]:
        """Every sentence pattern, grouped by its wording (the unit the train/held-out split assigns): a
        question without its lead-in and ending, a phrase with its wrapper less a leading 请 / Please, the
        final punctuation and the capital of its first letter. Fixed order."""
        out: dict[str, list[str]] = {}
        for q in self.questions:
            for lead in self.ask:
                body = q[:1].upper() + q[1:] if lead == "^" else q if lead == "" else lead + q
                out.setdefault(q, []).extend(body + end for end in self.ends)
        for p in self.phrases:
            for before, after in self.tell:
                unit = before.removeprefix("请").removeprefix("Please ") + p + after.rstrip("。？?.")
                out.setdefault(unit[:1].lower() + unit[1:], []).append(before + p + after)
        return {u: list(dict.fromkeys(ps)) for u, ps in out.items()}

    def heldout_units(self) -> set[str]:
        """The wordings held out: those whose crc32 falls in one HELDOUT_SHARE-th (or, when none does, the
        lowest), never one that holds a FORCED_TRAIN pattern, and only wordings whose every word (Chinese
        character, English word) occurs in this grammar's trained wordings: a held-out question recombines
        the words of its kind; it does not bring a word never trained for it."""
        units = self.units()
        free = sorted((u for u, ps in units.items() if not FORCED_TRAIN & set(ps)), key=_crc)
        held = [u for u in free if _crc(u) % HELDOUT_SHARE == 0] or free[:1]
        while True:
            trained = set().union(*(_words(u) for u in units if u not in held))
            uncovered = [u for u in held if not _words(u) <= trained]
            if not uncovered:
                return set(held)
            held.remove(uncovered[0])  # trained after all; the next check sees its words


def _zh(questions, phrases=(), **kw) -> Grammar:
    return Grammar(tuple(questions), tuple(phrases), **kw)


def _en(questions, phrases=(), **kw) -> Grammar:
    return Grammar(tuple(questions), tuple(phrases), **{"ask": EN_ASK, "ends": EN_END, "tell": EN_TELL, **kw})


def _arith_zh(sym: tuple[str, ...], words: tuple[str, ...]) -> Grammar:
    """Chinese arithmetic: ``sym`` the operators (加 / 加上 / +), ``words`` the question tails."""
    return _zh([f"{{a}}{s}{{b}}{w}" for s in sym for w in words], [f"{{a}}{s}{{b}}" for s in sym], tell=ZH_CALC)


def _arith_en(ops: tuple[str, ...], extra: tuple[str, ...]) -> Grammar:
    qs = [f"what is {{a}} {o} {{b}}" for o in ops] + [f"how much is {{a}} {o} {{b}}" for o in ops] \
        + [f"what's {{a}} {o} {{b}}" for o in ops] + list(extra)
    return _en(qs, [f"{{a}} {o} {{b}}" for o in ops], tell=EN_CALC)


ZH_SUMS = ("等于多少", "等于几", "是多少", "是几", "得多少")
# {r}: rank ("最高" / "second highest"), {t}: English rank with "tallest", {m}: a name, {c}: a country,
# {a} {b}: numbers, {n} {big} {small}: an amount and units, {w}: a word.
GRAMMARS: dict[str, tuple[Grammar, Grammar]] = {
    "mountain": (
        _zh(["世界上{r}的山峰是哪座", "世界上{r}的山是什么", "全球{r}的山峰是哪一座", "世界{r}峰是哪座山", "地球上{r}的山叫什么名字",
             "哪座山是世界上{r}的", "全世界{r}的山是哪座", "{r}的山峰是哪座", "世界上{r}的山峰叫什么", "哪一座山峰是全球{r}的",
             "地球上{r}的山峰是什么", "全球{r}的山峰叫什么名字"],
            ["世界上{r}的山", "世界上{r}的山峰", "全球{r}的山峰", "地球上{r}的山", "世界{r}峰", "世界上{r}的山峰的名字"]),
        _en(["what is the {r} mountain in the world", "which mountain is the {r} in the world",
             "what's the {r} mountain on Earth", "which is the {t} mountain", "what is the world's {r} mountain",
             "what is the {t} peak in the world", "which peak is the {r} on Earth",
             "what is the name of the {r} mountain in the world", "what is the {t} mountain in the world"],
            ["the {r} mountain in the world", "the {t} mountain on Earth", "the world's {r} mountain",
             "the name of the {r} peak in the world", "{r} mountain in the world"], tell=EN_NAME)),
    "height": (
        _zh(["{m}有多高", "{m}的海拔是多少", "{m}海拔多少米", "{m}的高度是多少", "{m}有多少米高", "{m}多高"],
            ["{m}的高度", "{m}的海拔"]),
        _en(["how high is {m}", "how tall is {m}", "what is the height of {m}", "how many metres high is {m}",
             "what is {m}'s height"], ["the height of {m}", "how tall {m} is", "how high {m} is"])),
    "river": (
        _zh(["世界上{r}的河流是哪条", "世界上{r}的河是什么", "全球{r}的河流叫什么", "地球上{r}的河流是哪条", "哪条河是世界上{r}的",
             "全世界{r}的河叫什么名字", "{r}的河流是哪条", "哪一条河流是全球{r}的", "世界上{r}的河叫什么"],
            ["世界上{r}的河", "世界上{r}的河流", "全球{r}的河", "地球上{r}的河流"]),
        _en(["what is the {r} river in the world", "which river is the {r} in the world",
             "what's the {r} river on Earth", "which is the {r} river", "what is the world's {r} river",
             "what is the name of the {r} river in the world", "which river on Earth is the {r}"],
            ["the {r} river in the world", "the {r} river on Earth", "the world's {r} river",
             "{r} river in the world"], tell=EN_NAME)),
    "length": (
        _zh(["{m}有多长", "{m}的长度是多少", "{m}全长多少公里", "{m}有多少公里长", "{m}多长", "{m}的全长是多少"],
            ["{m}的长度", "{m}有多长"]),
        _en(["how long is the {m}", "what is the length of the {m}", "how many km long is the {m}",
             "how long is the {m} river"], ["the length of the {m}", "how long the {m} is"])),
    "capital": (
        _zh(["{c}的首都是哪里", "{c}的首都是哪个城市", "{c}的首都叫什么", "{c}首都是哪里", "{c}的首都是什么", "哪个城市是{c}的首都",
             "{c}的首都在哪里", "{c}的首都叫什么名字", "哪座城市是{c}的首都", "{c}首都是哪个城市"],
            ["{c}的首都", "{c}首都"]),
        _en(["what is the capital of {c}", "which city is the capital of {c}", "what's the capital of {c}",
             "what is {c}'s capital", "what city is the capital of {c}", "what is the capital city of {c}",
             "which city is {c}'s capital"],
            ["the capital of {c}", "the capital city of {c}", "capital of {c}", "{c}'s capital"], tell=EN_NAME)),
    "add": (_arith_zh(("加", "加上", "+"), ZH_SUMS),
            _arith_en(("plus", "+"), ("what does {a} plus {b} equal", "what is the sum of {a} and {b}",
                                      "add {a} and {b}", "please add {a} and {b}"))),
    "sub": (_arith_zh(("减", "减去", "-"), ZH_SUMS),
            _arith_en(("minus", "-"), ("what does {a} minus {b} equal", "subtract {b} from {a}",
                                       "what is {b} subtracted from {a}"))),
    "mul": (_arith_zh(("乘以", "乘", "×", "*"), ZH_SUMS),
            _arith_en(("times", "x", "*", "multiplied by"), ("what does {a} times {b} equal",
                                                             "multiply {a} by {b}", "what is the product of {a} and {b}"))),
    "conversion": (
        _zh(["{n}{big}等于多少{small}", "{n}{big}是多少{small}", "{n}{big}有多少{small}", "{n}{big}等于几{small}",
             "{n}{big}合多少{small}", "{n}{big}是几{small}", "{n}{big}换算成{small}是多少"],
            ["{n}{big}换成{small}", "{n}{big}换算成{small}"], tell=(("把", "。"), ("请把", "。"), ("帮我把", ""))),
        _en(["how many {small} are in {n} {big}", "how many {small} is {n} {big}", "what is {n} {big} in {small}",
             "how many {small} are there in {n} {big}", "how many {small} make {n} {big}"],
            ["{n} {big} to {small}", "{n} {big} into {small}", "{n} {big} in {small}"],
            tell=(("Convert ", "."), ("Change ", "."), ("Express ", "."), ("Please convert ", ""), ("", "?"), ("", "")))),
    "identity": (
        _zh(["你是谁", "你叫什么名字", "你是什么模型", "你是哪个模型", "你的名字是什么", "你是什么", "你叫什么"], ["你自己"],
            tell=(("介绍一下", "。"), ("请介绍一下", ""), ("能介绍一下", "吗？"), ("介绍一下", ""))),
        _en(["who are you", "what is your name", "what are you", "which model are you", "what kind of model are you",
             "what's your name"], ["yourself"],
            tell=(("Introduce ", "."), ("Please introduce ", "."), ("Can you introduce ", "?"), ("Tell me about ", ".")))),
    "greeting": (
        _zh(["你好", "您好", "嗨", "哈喽", "你好呀", "您好呀", "你好啊", "嗨，你好", "早上好", "晚上好", "下午好"], ask=("",),
            ends=("", "！", "。")),
        _en(["hello", "hi", "hey", "hello there", "hi there", "hey there", "good morning", "good evening",
             "good afternoon"], ask=("^", ""), ends=("", "!", "."))),
    "reverse": (
        _zh(["{w}倒过来是什么", "单词{w}反过来怎么写", "{w}反过来是什么", "倒着写{w}"],
            ["{w}倒过来写", "单词{w}倒过来写", "{w}反过来写"], tell=(("把", "。"), ("请把", "。"), ("把", ""))),
        _en(["what is {w} reversed", "what is the word {w} reversed", "how do you write {w} backwards"], ["{w}"],
            tell=(("Reverse ", "."), ("Reverse the word ", "."), ("Write ", " backwards."), ("Spell ", " backwards."),
                  ("Please spell ", " backwards."), ("reverse ", "")))),
    "upper": (
        _zh(["{w}的大写是什么", "单词{w}的大写是什么"], ["{w}写成大写", "{w}变成大写字母", "{w}转成大写"],
            tell=(("把", "。"), ("请把", "。"), ("把", ""))),
        _en(["what is {w} in upper case", "what is {w} in capital letters"], ["{w}"],
            tell=(("Write ", " in upper case."), ("Uppercase ", "."), ("Make ", " upper case."),
                  ("Put ", " in capital letters."), ("Convert ", " to upper case."), ("", " in upper case")))),
    "count": (
        _zh(["单词{w}有几个字母", "{w}有多少个字母", "{w}这个词有几个字母", "{w}由几个字母组成", "单词{w}有多少个字母"],
            ["{w}有几个字母"], tell=(("数一数", "。"), ("数一下", ""))),
        _en(["how many letters are in the word {w}", "how many letters does {w} have", "how long is the word {w}",
             "how many letters are there in {w}", "what is the number of letters in {w}"], ["the letters in {w}"],
            tell=(("Count ", "."), ("Please count ", ".")))),
    # follow-ups after a mountain question ({r} the next rank) and after a capital question ({c} the next country)
    "next-mountain": (
        _zh(["那{r}的呢", "{r}的呢", "那{r}的山呢", "{r}的又是哪座", "那么{r}的呢", "那{r}的是哪座"], ask=("",), ends=("？", "")),
        _en(["and the {r}", "and the {r} one", "how about the {r}", "what about the {r} one", "and what about the {r}"],
            ask=("^",), ends=("?", ""))),
    "next-capital": (
        _zh(["那{c}呢", "{c}呢", "那{c}的首都呢", "{c}的呢", "那么{c}呢"], ask=("",), ends=("？", "")),
        _en(["and {c}", "how about {c}", "and the capital of {c}", "what about {c}"], ask=("^",), ends=("?", ""))),
}
HELDOUT_SHARE = 4  # one pattern in 4 is held out
# Patterns always trained: the README's and the tests' examples, and the questions of issue 17.
FORCED_TRAIN = {
    "世界上{r}的山峰是哪座？", "世界上{r}的山峰是哪座", "世界上{r}的山", "What is the {r} mountain in the world?",
    "{c}的首都是哪里？", "What is the capital of {c}?", "{a}加{b}等于多少？", "{a}加{b}等于几", "{a}+{b}等于几",
    "What is {a} plus {b}?", "{a} plus {b}", "{a}乘以{b}", "{a}乘以{b}等于多少？", "What is {a} minus {b}?",
    "What is {a} times {b}?", "你是谁？", "你好", "hi", "Hello", "Hi!", "And the {r}?", "那{c}呢？", "那{r}的呢？",
    "And {c}?",
}


def _words(text: str) -> set[str]:
    """The words of a wording: each Chinese character and each lower-cased English word or number-free token,
    slots ({c}, {a}, ...) and punctuation left out."""
    text = re.sub(r"\{[a-z]+\}", " ", text)
    return {w.lower() for w in re.findall(r"[\u4e00-\u9fff]|[A-Za-z']+|[+\-×*=x]", text)}


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def templates(intent: str, family: str, lang: str) -> tuple[str, ...]:
    """The ``family`` ("train" or "heldout") sentence patterns of ``intent`` in ``lang`` ("zh" or "en")."""
    grammar = GRAMMARS[intent][0 if lang == "zh" else 1]
    held = grammar.heldout_units()
    return tuple(p for u, ps in grammar.units().items() if (u in held) == (family == "heldout") for p in ps)


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


OPERATIONS = {"add": ("加", "plus", lambda a, b: a + b), "sub": ("减", "minus", lambda a, b: a - b),
              "mul": ("乘以", "times", lambda a, b: a * b)}


def arithmetic_answer(op: str, a: int, b: int, lang: str) -> str:
    zh, en, f = OPERATIONS[op]
    return f"{a}{zh}{b}等于{f(a, b)}。" if lang == "zh" else f"{a} {en} {b} is {f(a, b)}."


def conversion_answer(k: int, n: int, lang: str) -> str:
    big_zh, big_en, small_zh, small_en, factor = CONVERSIONS[k]
    if lang == "zh":
        return f"{n}{big_zh}等于{n * factor}{small_zh}。"
    return f"{n} {_unit(big_en, n)} is {n * factor} {small_en}."


def _unit(plural: str, n: int) -> str:
    return plural if n != 1 else plural[:-1]


# ------------------------------------------------------------------------------------------------ questions
def _ask(intent: str, family: str, lang: str, answer: str, topic: str, per_fact: int | None,
         rng: random.Random, forced: bool = True, **slots: str) -> list[Conversation]:
    """Conversations asking one fact with ``per_fact`` random patterns of the family (all when None), plus,
    with ``forced``, every FORCED_TRAIN pattern of the family."""
    pool = list(templates(intent, family, lang))
    must = [t for t in pool if forced and t in FORCED_TRAIN]
    rest = [t for t in pool if t not in must]
    chosen = rest if per_fact is None or per_fact >= len(rest) else rng.sample(rest, per_fact)
    return [Conversation(t.format(**slots), answer, topic=topic) for t in must + chosen]


# Patterns per fact: (trained, held out).
PER_FACT = {"mountain": (14, 4), "height": (5, 2), "river": (14, 4), "length": (5, 2), "capital": (8, 3),
            "arithmetic": (3, 1), "conversion": (4, 1), "instruction": (3, 1), "follow-up": (3, None),
            "about-itself": (None, 6)}


def _per(kind: str, family: str) -> int | None:
    return PER_FACT[kind][family == "heldout"]


def _fact_questions(family: str, rng: random.Random) -> list[Conversation]:
    """Mountains (rank and height), rivers (rank and length), capitals."""
    out: list[Conversation] = []
    k = {kind: _per(kind, family) for kind in ("mountain", "height", "river", "length", "capital")}
    for i, (_, en, _) in enumerate(MOUNTAINS):
        zh_a, en_a = mountain_answer_zh(i), mountain_answer_en(i)
        tall = RANKS_EN[i].replace("highest", "tallest")
        out += _ask("mountain", family, "zh", zh_a, "mountain", k["mountain"], rng, r=RANKS_ZH[i])
        out += _ask("mountain", family, "en", en_a, "mountain", k["mountain"], rng, r=RANKS_EN[i], t=tall)
        out += _ask("height", family, "zh", zh_a, "mountain", k["height"], rng, m=MOUNTAIN_NAMES_ZH[i])
        out += _ask("height", family, "en", en_a, "mountain", k["height"], rng, m=en)
    for i, (zh, en, _) in enumerate(RIVERS):
        zh_a, en_a = river_answer_zh(i), river_answer_en(i)
        out += _ask("river", family, "zh", zh_a, "river", k["river"], rng, r=LONG_ZH[i])
        out += _ask("river", family, "en", en_a, "river", k["river"], rng, r=LONG_EN[i])
        out += _ask("length", family, "zh", zh_a, "river", k["length"], rng, m=zh)
        out += _ask("length", family, "en", en_a, "river", k["length"], rng, m=en)
    for i, (c_zh, c_en, _, _) in enumerate(CAPITALS):
        out += _ask("capital", family, "zh", capital_answer_zh(i), "capital", k["capital"], rng, c=c_zh)
        out += _ask("capital", family, "en", capital_answer_en(i), "capital", k["capital"], rng, c=c_en)
    return out


def _arithmetic(family: str, rng: random.Random) -> list[Conversation]:
    """Training: every (a, b, operation, language) in a few random trained patterns; held-out: a fixed
    seventh of the pairs in one held-out pattern each."""
    out: list[Conversation] = []
    for op in OPERATIONS:
        for a in range(ARITH_MAX + 1):
            for b in range(ARITH_MAX + 1):
                if family == "heldout" and (a * 13 + b + len(op)) % 7:
                    continue
                for lang in ("zh", "en"):
                    answer = arithmetic_answer(op, a, b, lang)
                    per = _per("arithmetic", family)
                    # in training, one of the FORCED_TRAIN patterns of (op, lang), if any, in turn
                    forced = [t for t in templates(op, family, lang) if t in FORCED_TRAIN]
                    if forced:
                        pattern = forced[(a + b) % len(forced)]
                        out.append(Conversation(pattern.format(a=a, b=b), answer, topic="arithmetic"))
                        per -= 1
                    out += _ask(op, family, lang, answer, "arithmetic", per, rng, forced=False, a=str(a), b=str(b))
    return out


def _conversions(family: str, rng: random.Random) -> list[Conversation]:
    out: list[Conversation] = []
    for k, (big_zh, big_en, small_zh, small_en, _) in enumerate(CONVERSIONS):
        for n in range(1, CONVERSION_MAX + 1):
            if family == "heldout" and n % 3:
                continue
            out += _ask("conversion", family, "zh", conversion_answer(k, n, "zh"), "conversion",
                        _per("conversion", family), rng, n=str(n), big=big_zh, small=small_zh)
            out += _ask("conversion", family, "en", conversion_answer(k, n, "en"), "conversion",
                        _per("conversion", family), rng, n=str(n), big=_unit(big_en, n), small=small_en)
    return out


def _about_itself(family: str, rng: random.Random) -> list[Conversation]:
    """Who it is and greetings (every trained pattern, twice: there are few of them)."""
    out: list[Conversation] = []
    per = _per("about-itself", family)
    for intent, zh_a, en_a in (("identity", IDENTITY_ZH, IDENTITY_EN), ("greeting", GREETING_ZH, GREETING_EN)):
        out += _ask(intent, family, "zh", zh_a, intent, per, rng)
        out += _ask(intent, family, "en", en_a, intent, per, rng)
    return out * 2 if family == "train" else out


def _instructions(family: str, rng: random.Random) -> list[Conversation]:
    """Reverse, upper-case, count the letters of the words (held-out: every second word)."""
    out: list[Conversation] = []
    words = WORDS if family == "train" else WORDS[::2]
    per = _per("instruction", family)
    for w in words:
        answers = {"reverse": (w[::-1], w[::-1]), "upper": (w.upper(), w.upper()),
                   "count": (f"单词{w}有{len(w)}个字母。", f"The word {w} has {len(w)} letters.")}
        for intent, (zh_a, en_a) in answers.items():
            out += _ask(intent, family, "zh", zh_a, "instruction", per, rng, w=w)
            out += _ask(intent, family, "en", en_a, "instruction", per, rng, w=w)
    return out


def _follow_ups(family: str, rng: random.Random) -> list[Conversation]:
    """Two-turn conversations whose second question only makes sense with the first (the next mountain, the
    next country's capital)."""
    out: list[Conversation] = []
    per = _per("follow-up", family)

    def then(intent: str, lang: str, first: str, first_answer: str, answer: str, **slots: str) -> None:
        for c in _ask(intent, family, lang, answer, "follow-up", per, rng, **slots):
            out.append(Conversation(c.prompt, answer, ((first, first_answer),), topic="follow-up"))

    for i in range(len(MOUNTAINS) - 1):
        first_zh = rng.choice(templates("mountain", family, "zh")).format(r=RANKS_ZH[i])
        first_en = rng.choice(templates("mountain", family, "en")).format(
            r=RANKS_EN[i], t=RANKS_EN[i].replace("highest", "tallest"))
        then("next-mountain", "zh", first_zh, mountain_answer_zh(i), mountain_answer_zh(i + 1), r=RANKS_ZH[i + 1])
        then("next-mountain", "en", first_en, mountain_answer_en(i), mountain_answer_en(i + 1), r=RANKS_EN[i + 1])
    for i in range(0, len(CAPITALS) - 1, 1 if family == "train" else 3):
        (c1_zh, c1_en, _, _), (c2_zh, c2_en, _, _) = CAPITALS[i], CAPITALS[i + 1]
        first_zh = rng.choice(templates("capital", family, "zh")).format(c=c1_zh)
        first_en = rng.choice(templates("capital", family, "en")).format(c=c1_en)
        then("next-capital", "zh", first_zh, capital_answer_zh(i), capital_answer_zh(i + 1), c=c2_zh)
        then("next-capital", "en", first_en, capital_answer_en(i), capital_answer_en(i + 1), c=c2_en)
    return out


def _unknown(family: str, rng: random.Random) -> list[Conversation]:
    """Questions outside the domain, answered with the refusal: unknown countries, mountains, rivers, ranks,
    numbers above the arithmetic range, and other topics. ``family`` picks both the entities and the
    phrasings (held-out: entities and questions never trained, in any phrasing)."""
    out: list[Conversation] = []
    per = 2 if family == "train" else 1

    def ask(intent: str, lang: str, answer: str, **slots: str) -> None:
        # held-out entities are asked in trained and in held-out phrasings
        for fam in ({"train"} if family == "train" else ("train", "heldout")):
            out.extend(_ask(intent, fam, lang, answer, "unknown", per, rng, **slots))

    for zh, en in UNKNOWN_COUNTRIES[family]:
        ask("capital", "zh", DONT_KNOW_ZH, c=zh)
        ask("capital", "en", DONT_KNOW_EN, c=en)
    for zh, en in UNKNOWN_MOUNTAINS[family]:
        ask("height", "zh", DONT_KNOW_ZH, m=zh)
        ask("height", "en", DONT_KNOW_EN, m=en)
    for zh, en in UNKNOWN_RIVERS[family]:
        ask("length", "zh", DONT_KNOW_ZH, m=zh)
        ask("length", "en", DONT_KNOW_EN, m=en)
    for zh, en in UNKNOWN_MOUNTAIN_RANKS[family]:
        ask("mountain", "zh", DONT_KNOW_ZH, r=zh)
        ask("mountain", "en", DONT_KNOW_EN, r=en, t=en.replace("highest", "tallest"))
    for zh, en in UNKNOWN_RIVER_RANKS[family]:
        ask("river", "zh", DONT_KNOW_ZH, r=zh)
        ask("river", "en", DONT_KNOW_EN, r=en)
    # numbers outside 0..ARITH_MAX: a fixed random sample (trained and held-out samples differ)
    big = random.Random(f"numbers-{family}")
    for k in range(80 if family == "train" else 24):
        op = ("add", "sub", "mul")[k % 3]
        lo = ARITH_MAX + 1
        a = big.randint(lo, 99) if k % 4 else big.randint(100, 999)
        b = big.randint(0, 99)
        a, b = (a, b) if k % 2 else (b, a)
        lang = "zh" if k % 8 < 4 else "en"
        ask(op, lang, DONT_KNOW_MATH_ZH if lang == "zh" else DONT_KNOW_MATH_EN, a=str(a), b=str(b))
    for q in UNKNOWN_QUESTIONS_ZH[family]:  # as written, and after a lead-in
        out += [Conversation(q, DONT_KNOW_ZH, topic="unknown"),
                Conversation(rng.choice(ZH_ASK[1:]) + q, DONT_KNOW_ZH, topic="unknown")]
    for q in UNKNOWN_QUESTIONS_EN[family]:
        out += [Conversation(q, DONT_KNOW_EN, topic="unknown"),
                Conversation(rng.choice(EN_ASK[2:]) + q[:1].lower() + q[1:], DONT_KNOW_EN, topic="unknown")]
    return out


# ------------------------------------------------------------------------------------------------ sets
def training_items() -> list[Conversation]:
    """Every trained question as a conversation of its own (follow-ups with their first round), fixed order."""
    rng = random.Random("demo-train")
    return (_fact_questions("train", rng) + _arithmetic("train", rng) + _conversions("train", rng)
            + _about_itself("train", rng) + _instructions("train", rng) + _follow_ups("train", rng)
            + _unknown("train", rng))


# How the SFT set joins the training items: every item appears once in each of TRAINING_PASSES shufflings,
# in conversations of 1, 2 or 3 unrelated items (weights below), so most answers follow unrelated rounds.
TRAINING_PASSES = 2
ROUNDS_WEIGHTS = (0.3, 0.35, 0.35)


def training_conversations() -> list[Conversation]:
    """The SFT set: the training items joined into conversations of one to three unrelated rounds."""
    items = training_items()
    rng = random.Random("demo-sft")
    out: list[Conversation] = []
    for _ in range(TRAINING_PASSES):
        order = items[:]
        rng.shuffle(order)
        while order:
            n = rng.choices((1, 2, 3), ROUNDS_WEIGHTS)[0]
            group, order = order[:n], order[n:]
            out.append(_joined(group))
    return out


def _joined(group: list[Conversation]) -> Conversation:
    """One conversation made of ``group``'s rounds in order (the last item's question is the prompt)."""
    turns = tuple(t for c in group for t in c.turns())
    last = group[-1]
    return Conversation(last.prompt, last.answer, turns[:-1], topic=last.topic)


def heldout_conversations() -> list[Conversation]:
    """The domain's facts asked in held-out phrasings, as the first message of a conversation."""
    rng = random.Random("demo-heldout")
    return (_fact_questions("heldout", rng) + _arithmetic("heldout", rng) + _conversions("heldout", rng)
            + _about_itself("heldout", rng) + _instructions("heldout", rng) + _follow_ups("heldout", rng))


def unknown_conversations() -> list[Conversation]:
    """Questions outside the domain (entities, ranks, numbers, topics never trained): the refusal is right."""
    return _unknown("heldout", random.Random("demo-unknown"))


def with_unrelated_history(conversations: list[Conversation], seed: str) -> list[Conversation]:
    """Each conversation after one or two unrelated earlier rounds (held-out questions and their answers,
    of another topic), drawn with ``seed``."""
    rng = random.Random(seed)
    pool = [c for c in heldout_conversations() + unknown_conversations() if not c.history]
    out = []
    for c in conversations:
        earlier = rng.sample([p for p in pool if p.topic != c.topic], rng.choice((1, 2)))
        out.append(_joined([*earlier, c]))
    return out


def ongoing_conversations() -> list[Conversation]:
    """The held-out questions after one or two unrelated earlier rounds."""
    return with_unrelated_history(heldout_conversations(), "demo-ongoing")


def unknown_ongoing_conversations() -> list[Conversation]:
    """The out-of-domain questions after one or two unrelated earlier rounds."""
    return with_unrelated_history(unknown_conversations(), "demo-unknown-ongoing")


def pretraining_lines() -> list[str]:
    """Plain sentences stating every fact in both languages (pre-training text)."""
    lines = [mountain_answer_zh(i) for i in range(len(MOUNTAINS))]
    lines += [mountain_answer_en(i) for i in range(len(MOUNTAINS))]
    lines += [river_answer_zh(i) for i in range(len(RIVERS))] + [river_answer_en(i) for i in range(len(RIVERS))]
    lines += [capital_answer_zh(i) for i in range(len(CAPITALS))]
    lines += [capital_answer_en(i) for i in range(len(CAPITALS))]
    lines += [IDENTITY_ZH, IDENTITY_EN, GREETING_ZH, GREETING_EN]
    lines += sorted({c.answer for c in _arithmetic("train", random.Random(0))
                     + _conversions("train", random.Random(0))})
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
