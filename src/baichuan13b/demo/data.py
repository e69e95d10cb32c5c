"""Deterministic bilingual training data for the demo model, generated from facts held in this file.

Nothing is downloaded. Everything comes out of the same facts and question templates:

* ``training_conversations()``: the SFT set, Chinese and English: every fact asked in several trained phrasings,
  chained into conversations of one to five rounds (so the model learns to answer the last question whatever
  came before), follow-up questions right after the question they refer to, and questions outside the domain
  answered with a polite "I don't know";
* ``heldout_conversations()``: the same facts (and other unknown things) asked in templates and openings never
  used in training, each in a fresh conversation; ``ongoing_conversations()``: a sample of them after unrelated
  earlier rounds;
* ``pretraining_lines()``: plain sentences stating the facts, for the pre-training stage.

Answers are canonical strings, so "exact answer" accuracy is a string comparison.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

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


# ------------------------------------------------------------------------------------------------ phrasings
# Every question is a template; the training set and the held-out set use disjoint templates (and, for the
# optional polite prefixes, disjoint prefixes), so a held-out question is never a training question.
@dataclass(frozen=True)
class Phrasings:
    """Question templates of one kind of question in one language: trained ones and held-out ones."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]


MOUNTAIN_Q = {
    "zh": Phrasings(("世界上{r}的山峰是哪座？", "世界上{r}的山是什么？", "全球{r}的山峰是哪一座？", "世界上{r}的山",
                     "{r}的山峰是哪座？", "地球上{r}的山是哪座？", "哪座山是世界上{r}的？", "你知道世界上{r}的山峰吗？",
                     "世界上{r}的山峰叫什么？"),
                    ("请问全球{r}的山峰叫什么名字？", "世界上{r}的山是哪一座？", "告诉我世界上{r}的山峰。")),
    "en": Phrasings(("What is the {r} mountain in the world?", "Which mountain is the {r} in the world?",
                     "Name the {r} mountain in the world.", "What's the {r} mountain on Earth?",
                     "Which is the {r} mountain?", "Tell me the {r} mountain in the world.",
                     "What is the world's {r} mountain?", "Do you know the {r} mountain in the world?",
                     "the {r} mountain in the world?"),
                    ("Tell me the name of the {r} mountain on Earth.", "Which peak is the {r} in the world?",
                     "What mountain is the {r} on Earth?")),
}
RIVER_Q = {
    "zh": Phrasings(("世界上{r}的河流是哪条？", "世界上{r}的河是什么？", "全球{r}的河流叫什么？", "世界上{r}的河",
                     "{r}的河流是哪条？", "地球上{r}的河是哪条？", "哪条河是世界上{r}的？", "你知道世界上{r}的河吗？"),
                    ("地球上{r}的河叫什么？", "请问世界上{r}的河流是哪一条？", "告诉我世界上{r}的河。")),
    "en": Phrasings(("What is the {r} river in the world?", "Which river is the {r} in the world?",
                     "Tell me the {r} river in the world.", "What's the {r} river on Earth?",
                     "Which is the {r} river?", "What is the world's {r} river?",
                     "Do you know the {r} river in the world?", "the {r} river in the world?"),
                    ("Name the {r} river on Earth.", "Which river is the {r} on Earth?",
                     "What river is the {r} in the world?")),
}
CAPITAL_Q = {
    "zh": Phrasings(("{c}的首都是哪里？", "{c}的首都是哪个城市？", "{c}的首都叫什么？", "{c}的首都在哪里？",
                     "你知道{c}的首都吗？", "{c}的首都是？", "{c}首都是哪", "{c}的首都是什么城市？", "{c}的首都"),
                    ("请告诉我{c}的首都。", "{c}的首都是哪座城市？", "说说{c}的首都。")),
    "en": Phrasings(("What is the capital of {c}?", "Which city is the capital of {c}?", "Tell me the capital of {c}.",
                     "What's the capital of {c}?", "capital of {c}?", "Do you know the capital of {c}?",
                     "Name the capital of {c}.", "What city is the capital of {c}?", "The capital of {c}?"),
                    ("Name the capital city of {c}.", "Which city serves as the capital of {c}?",
                     "Tell me what the capital of {c} is.")),
}
# Arithmetic: {a} and {b} are written in digits.
ADD_Q = {
    "zh": Phrasings(("{a}加{b}等于多少？", "{a}加{b}等于几？", "{a}加{b}是多少？", "{a}+{b}等于几？", "{a}+{b}等于多少",
                     "计算{a}加{b}。", "{a}加上{b}等于多少？", "{a}加{b}", "{a}+{b}是多少？", "{a}加{b}等于几"),
                    ("请计算{a}加{b}。", "{a}加{b}得几？", "{a}加上{b}是几？", "{a}+{b}得多少？")),
    "en": Phrasings(("What is {a} plus {b}?", "{a} plus {b}", "What's {a} plus {b}?", "What is {a}+{b}?",
                     "How much is {a} plus {b}?", "Calculate {a} plus {b}.", "Add {a} and {b}.", "what is {a} + {b}",
                     "{a} plus {b}?", "What does {a} plus {b} equal?"),
                    ("Compute {a} plus {b}.", "What do you get if you add {a} and {b}?", "How much is {a}+{b}?",
                     "Work out {a} plus {b}.")),
}
SUB_Q = {
    "zh": Phrasings(("{a}减{b}等于多少？", "{a}减{b}等于几？", "{a}减去{b}是多少？", "{a}-{b}等于几？", "{a}减{b}",
                     "计算{a}减{b}。", "{a}减{b}是多少？", "{a}-{b}等于多少"),
                    ("请计算{a}减{b}。", "{a}减去{b}等于几？", "{a}-{b}是多少？")),
    "en": Phrasings(("What is {a} minus {b}?", "{a} minus {b}", "What's {a} minus {b}?", "What is {a}-{b}?",
                     "How much is {a} minus {b}?", "Calculate {a} minus {b}.", "what is {a} - {b}", "{a} minus {b}?"),
                    ("Compute {a} minus {b}.", "What is {a} take away {b}?", "How much is {a}-{b}?")),
}
MUL_Q = {
    "zh": Phrasings(("{a}乘以{b}等于多少？", "{a}乘以{b}", "{a}乘{b}等于几？", "{a}×{b}等于几？", "{a}*{b}等于多少？",
                     "{a}乘以{b}是多少？", "计算{a}乘以{b}。", "{a}乘以{b}等于几"),
                    ("请计算{a}乘以{b}。", "{a}乘{b}是多少？", "{a}乘以{b}得多少？")),
    "en": Phrasings(("What is {a} times {b}?", "{a} times {b}", "What's {a} times {b}?", "What is {a} multiplied by {b}?",
                     "What is {a}*{b}?", "How much is {a} times {b}?", "Multiply {a} by {b}.", "{a} times {b}?"),
                    ("Compute {a} times {b}.", "How much is {a} multiplied by {b}?", "What is {a}×{b}?")),
}
CONVERSION_Q = {
    "zh": Phrasings(("{n}{big}等于多少{small}？", "{n}{big}是多少{small}？", "{n}{big}有多少{small}？",
                     "{n}{big}等于几{small}？", "{n}{big}是几{small}"),
                    ("把{n}{big}换算成{small}。", "{n}{big}合多少{small}？")),
    "en": Phrasings(("How many {small} are in {n} {big}?", "How many {small} is {n} {big}?",
                     "{n} {big} is how many {small}?", "Convert {n} {big} into {small}.", "{n} {big} in {small}?"),
                    ("Convert {n} {big} to {small}.", "What is {n} {big} in {small}?")),
}
IDENTITY_Q = {
    "zh": Phrasings(("你是谁？", "你叫什么名字？", "介绍一下你自己。", "你是什么？", "你是哪个模型？", "你是百川吗？", "你是谁呀"),
                    ("请问你是什么模型？", "说说你是谁。")),
    "en": Phrasings(("Who are you?", "What is your name?", "Introduce yourself.", "What are you?", "Are you Baichuan?",
                     "Which model are you?", "Tell me about yourself."),
                    ("What kind of model are you?", "Who am I talking to?")),
}
GREETING_Q = {
    "zh": Phrasings(("你好", "您好！", "你好呀", "嗨", "早上好", "哈喽", "你好！"), ("嗨，你好呀", "晚上好")),
    "en": Phrasings(("Hello", "Hi!", "Hi there", "Good morning", "Hey", "hello!", "Hello!"), ("Hey there", "Good evening")),
}
# Instructions about the words of WORDS: (template, answer(word)) per language.
REVERSE_Q = {"zh": Phrasings(("把单词{w}倒过来写。", "{w}倒过来怎么写？"), ("单词{w}倒过来是什么？",)),
             "en": Phrasings(("Reverse the word {w}.", "Write {w} backwards."), ("Please spell {w} backwards.",))}
UPPER_Q = {"zh": Phrasings(("把{w}写成大写。",), ("{w}的大写是什么？",)),
           "en": Phrasings(("Write {w} in upper case.", "{w} in capital letters."), ("Make {w} upper case.",))}
LETTERS_Q = {"zh": Phrasings(("单词{w}有几个字母？", "{w}有多少个字母？"), ("{w}这个单词有几个字母？",)),
             "en": Phrasings(("How many letters are in the word {w}?", "How many letters does {w} have?"),
                             ("Count the letters in {w}.",))}
# Polite openings put in front of some questions (never in front of greetings or instructions).
PREFIXES = {"zh": Phrasings(("请问", "请问，", "我想知道", "问一下：", "考考你：", "你好，"), ("麻烦问一下，",)),
            "en": Phrasings(("Please tell me: ", "Quick question: ", "Hi! ", "I wonder: ", "Hey, "), ("Excuse me, ",))}

# ------------------------------------------------------------------------------------------------ outside
# Questions the demo model must decline (politely, in the language asked): things near its facts that it does
# not know, arithmetic outside its range, and everything else.
REFUSAL_ZH = "抱歉，我不知道。我只是一个小型演示模型，只知道很少的知识。"
REFUSAL_EN = "Sorry, I don't know. I am only a tiny demo model that knows a few facts."
REFUSAL = {"zh": REFUSAL_ZH, "en": REFUSAL_EN}

# (zh, en) countries whose capital the model does not know: the first ones are trained, the last held out.
UNKNOWN_COUNTRIES = [
    ("秘鲁", "Peru"), ("墨西哥", "Mexico"), ("阿根廷", "Argentina"), ("泰国", "Thailand"), ("越南", "Vietnam"),
    ("土耳其", "Turkey"), ("希腊", "Greece"), ("瑞典", "Sweden"), ("挪威", "Norway"), ("荷兰", "the Netherlands"),
    ("波兰", "Poland"), ("葡萄牙", "Portugal"), ("南非", "South Africa"), ("肯尼亚", "Kenya"), ("伊朗", "Iran"),
    ("新西兰", "New Zealand"), ("智利", "Chile"), ("古巴", "Cuba"), ("芬兰", "Finland"), ("瑞士", "Switzerland"),
    ("奥地利", "Austria"), ("比利时", "Belgium"), ("丹麦", "Denmark"), ("印度尼西亚", "Indonesia"),
    ("菲律宾", "the Philippines"), ("马来西亚", "Malaysia"), ("巴基斯坦", "Pakistan"), ("尼日利亚", "Nigeria"),
    ("蒙古", "Mongolia"), ("爱尔兰", "Ireland"),
]
UNKNOWN_COUNTRIES_TRAINED = 22
# Ranks beyond the known ones.
MORE_RANKS_ZH = ["第六高", "第七高", "第八高", "第九高", "第十高"]
MORE_RANKS_EN = ["sixth highest", "seventh highest", "eighth highest", "ninth highest", "tenth highest"]
MORE_LONG_ZH = ["第四长", "第五长", "第六长"]
MORE_LONG_EN = ["fourth longest", "fifth longest", "sixth longest"]
UNKNOWN_WORDS = ["banana", "orange", "window", "garden", "silver", "rocket", "planet", "forest", "yellow", "winter"]
UNKNOWN_WORDS_TRAINED = 7
# Anything else (trained ones, then held-out ones; the last third of each list is held out).
OTHER_QUESTIONS = {
    "zh": ["今天天气怎么样？", "给我写一首诗。", "谁发明了电话？", "月亮离地球有多远？", "讲个笑话吧。", "现在几点了？",
           "怎么做红烧肉？", "人生的意义是什么？", "推荐一本好书。", "光速是多少？", "世界上最大的海洋是哪个？",
           "世界上最高的楼是哪座？", "世界上最大的沙漠是哪个？", "中国的人口是多少？", "法国人说什么语言？",
           "日本的货币是什么？", "谁是李白？", "地球有多大年纪了？", "帮我翻译这句话。", "明天会下雨吗？",
           "怎么学好英语？", "什么是人工智能？", "太阳是什么颜色的？", "北京有多少人？", "长江有多深？",
           "珠穆朗玛峰在哪个国家？", "一年有多少天？", "水的沸点是多少度？", "谁写了红楼梦？", "猫为什么喜欢睡觉？",
           "怎么写代码？", "哪个国家最大？", "你喜欢吃什么？", "帮我写一封信。", "宇宙有多大？", "电脑坏了怎么办？"],
    "en": ["What is the weather like today?", "Write me a poem.", "Who invented the telephone?",
           "How far is the Moon from the Earth?", "Tell me a joke.", "What time is it?", "How do I cook rice?",
           "What is the meaning of life?", "Recommend a good book.", "What is the speed of light?",
           "What is the largest ocean in the world?", "What is the tallest building in the world?",
           "What is the biggest desert in the world?", "What is the population of China?",
           "What language do people speak in France?", "What is the currency of Japan?", "Who was Shakespeare?",
           "How old is the Earth?", "Translate this sentence for me.", "Will it rain tomorrow?",
           "How can I learn Chinese?", "What is artificial intelligence?", "What colour is the Sun?",
           "How many people live in Beijing?", "How deep is the Yangtze?", "Which country is Mount Everest in?",
           "How many days are in a year?", "At what temperature does water boil?", "Who wrote Hamlet?",
           "Why do cats sleep so much?", "How do I write code?", "Which country is the largest?",
           "What food do you like?", "Help me write a letter.", "How big is the universe?",
           "My computer is broken, what should I do?"],
}

# ------------------------------------------------------------------------------------------------ domain
ADD_RANGE = range(13)  # a + b and a - b (b <= a) for a, b in 0..12
MUL_RANGE = range(1, 10)  # a x b for a, b in 1..9
CONVERSION_RANGE = range(1, 11)


def _arithmetic_facts() -> list[tuple[str, dict, str, str]]:
    """(kind, template fields, Chinese answer, English answer) of every sum, difference and product known."""
    out = []
    for a in ADD_RANGE:
        for b in ADD_RANGE:
            out.append(("add", dict(a=a, b=b), f"{a}加{b}等于{a + b}。", f"{a} plus {b} is {a + b}."))
    for a in ADD_RANGE:
        for b in ADD_RANGE:
            if b <= a:
                out.append(("sub", dict(a=a, b=b), f"{a}减{b}等于{a - b}。", f"{a} minus {b} is {a - b}."))
    for a in MUL_RANGE:
        for b in MUL_RANGE:
            out.append(("mul", dict(a=a, b=b), f"{a}乘以{b}等于{a * b}。", f"{a} times {b} is {a * b}."))
    return out


ARITHMETIC_Q = {"add": ADD_Q, "sub": SUB_Q, "mul": MUL_Q}


def _in_range(kind: str, a: int, b: int) -> bool:
    """Whether the model knows ``a <kind> b``."""
    if kind == "mul":
        return a in MUL_RANGE and b in MUL_RANGE
    return a in ADD_RANGE and b in ADD_RANGE and (kind == "add" or b <= a)


def _units(n: int, plural: str) -> str:
    return plural if n > 1 else plural[:-1]


def domain_questions() -> list[tuple[str, str, str, dict, str]]:
    """Every in-domain fact as (topic, language, kind, template fields, answer), ``kind`` naming the templates."""
    out = []
    for i in range(len(MOUNTAINS)):
        out.append(("mountain", "zh", "mountain", dict(r=RANKS_ZH[i]), mountain_answer_zh(i)))
        out.append(("mountain", "en", "mountain", dict(r=RANKS_EN[i]), mountain_answer_en(i)))
    for i in range(len(RIVERS)):
        out.append(("river", "zh", "river", dict(r=LONG_ZH[i]), river_answer_zh(i)))
        out.append(("river", "en", "river", dict(r=LONG_EN[i]), river_answer_en(i)))
    for i, (c_zh, c_en, _, _) in enumerate(CAPITALS):
        out.append(("capital", "zh", "capital", dict(c=c_zh), capital_answer_zh(i)))
        out.append(("capital", "en", "capital", dict(c=c_en), capital_answer_en(i)))
    for kind, fields, zh, en in _arithmetic_facts():
        out.append(("arithmetic", "zh", kind, fields, zh))
        out.append(("arithmetic", "en", kind, fields, en))
    for big_zh, big_en, small_zh, small_en, factor in CONVERSIONS:
        for n in CONVERSION_RANGE:
            out.append(("conversion", "zh", "conversion", dict(n=n, big=big_zh, small=small_zh),
                        f"{n}{big_zh}等于{n * factor}{small_zh}。"))
            out.append(("conversion", "en", "conversion", dict(n=n, big=_units(n, big_en), small=small_en),
                        f"{n} {_units(n, big_en)} is {n * factor} {small_en}."))
    for w in WORDS:
        for kind, answer_zh, answer_en in (("reverse", w[::-1], w[::-1]), ("upper", w.upper(), w.upper()),
                                           ("letters", f"单词{w}有{len(w)}个字母。",
                                            f"The word {w} has {len(w)} letters.")):
            out.append(("instruction", "zh", kind, dict(w=w), answer_zh))
            out.append(("instruction", "en", kind, dict(w=w), answer_en))
    return out


TEMPLATES = {"mountain": MOUNTAIN_Q, "river": RIVER_Q, "capital": CAPITAL_Q, "conversion": CONVERSION_Q,
             "reverse": REVERSE_Q, "upper": UPPER_Q, "letters": LETTERS_Q, **ARITHMETIC_Q}
NO_PREFIX = {"reverse", "upper", "letters"}


def outside_questions(phrasing: str) -> list[tuple[str, str]]:
    """Questions outside the domain as (language, question), in the ``phrasing`` ("train"/"heldout") split."""
    train = phrasing == "train"
    rng = Random(7 if train else 8)
    out: list[tuple[str, str]] = []

    def split(items: list, n_trained: int) -> list:
        return items[:n_trained] if train else items[n_trained:]

    for c_zh, c_en in split(UNKNOWN_COUNTRIES, UNKNOWN_COUNTRIES_TRAINED):
        for lang, c in (("zh", c_zh), ("en", c_en)):
            templates = getattr(CAPITAL_Q[lang], phrasing)
            out += [(lang, t.format(c=c)) for t in rng.sample(templates, 3 if train else 1)]
    ranks = [("zh", r) for r in MORE_RANKS_ZH] + [("en", r) for r in MORE_RANKS_EN]
    longs = [("zh", r) for r in MORE_LONG_ZH] + [("en", r) for r in MORE_LONG_EN]
    for table, rs in ((MOUNTAIN_Q, ranks), (RIVER_Q, longs)):
        for lang, r in rs:
            templates = getattr(table[lang], phrasing)
            out += [(lang, t.format(r=r)) for t in rng.sample(templates, 3 if train else 1)]
    # arithmetic outside the range: operands above 12 (above 9 for products), negative differences
    big = [13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 25, 28, 30, 33, 37, 42, 45, 50, 64, 77, 88, 99, 100, 123, 250,
           999, 1000]
    for k in range(60 if train else 16):
        kind, lang = ("add", "sub", "mul")[k % 3], ("zh", "en")[(k // 3) % 2]
        while True:
            a, b = rng.choice(big + list(ADD_RANGE)), rng.choice(big + list(ADD_RANGE))
            if not _in_range(kind, a, b) and (kind != "mul" or min(a, b) > 0):
                break
        out.append((lang, rng.choice(getattr(ARITHMETIC_Q[kind][lang], phrasing)).format(a=a, b=b)))
    for w in split(UNKNOWN_WORDS, UNKNOWN_WORDS_TRAINED):
        for table in (REVERSE_Q, UPPER_Q, LETTERS_Q):
            for lang in ("zh", "en"):
                out.append((lang, rng.choice(getattr(table[lang], phrasing)).format(w=w)))
    for lang, questions in OTHER_QUESTIONS.items():
        n = 2 * len(questions) // 3
        out += [(lang, q) for q in split(questions, n)]
    return out


def _question(rng: Random, templates: tuple[str, ...], fields: dict, lang: str, prefixes: tuple[str, ...]) -> str:
    """One question: a template, sometimes behind a polite opening, sometimes without its final mark."""
    q = rng.choice(templates).format(**fields)
    if prefixes and rng.random() < 0.25:
        q = rng.choice(prefixes) + (q[0].lower() + q[1:] if lang == "en" and not q.startswith("I") else q)
    if rng.random() < 0.2 and q[-1] in "？?":
        q = q[:-1]
    if lang == "en" and rng.random() < 0.1:
        q = q.lower()
    return q


# How many training questions each fact gets (each in a different random phrasing where there are enough).
TRAIN_QUESTIONS_PER_FACT = {"mountain": 10, "river": 10, "capital": 8, "arithmetic": 2, "conversion": 3,
                            "instruction": 2}
# Held-out: every fact of the small topics, a fixed sample of the arithmetic and conversion facts.
HELDOUT_EVERY = {"arithmetic": 5, "conversion": 2, "instruction": 2}


def _fact_turns(phrasing: str) -> list[Conversation]:
    train = phrasing == "train"
    rng = Random(0 if train else 1)
    out: list[Conversation] = []
    for k, (topic, lang, kind, fields, answer) in enumerate(domain_questions()):
        templates = getattr(TEMPLATES[kind][lang], phrasing)
        prefixes = () if kind in NO_PREFIX else getattr(PREFIXES[lang], phrasing)
        if train:
            # the first template of each kind is always trained as written (the README's and tests' questions)
            qs = [templates[0].format(**fields)]
            qs += [_question(rng, templates, fields, lang, prefixes)
                   for _ in range(TRAIN_QUESTIONS_PER_FACT[topic] - 1)]
        elif (k // 2) % HELDOUT_EVERY.get(topic, 1) == 0:
            qs = [_question(rng, templates, fields, lang, prefixes)]
        else:
            qs = []
        out += [Conversation(q, answer, topic=topic) for q in dict.fromkeys(qs)]
    for lang, answer in (("zh", IDENTITY_ZH), ("en", IDENTITY_EN)):
        for q in getattr(IDENTITY_Q[lang], phrasing):
            out += [Conversation(q, answer, topic="identity")] * (2 if train else 1)
    for lang, answer in (("zh", GREETING_ZH), ("en", GREETING_EN)):
        for q in getattr(GREETING_Q[lang], phrasing):
            out += [Conversation(q, answer, topic="greeting")] * (2 if train else 1)
    for lang, q in outside_questions(phrasing):
        out.append(Conversation(q, REFUSAL[lang], topic="outside"))
    return out


def _follow_ups(phrasing: str) -> list[Conversation]:
    """Two-turn conversations whose second question only makes sense with the first."""
    train = phrasing == "train"
    rng = Random(2 if train else 3)
    out: list[Conversation] = []
    then_mountain = {"zh": (("那{r}的呢？", "那{r}的是哪座？"), ("{r}的又是哪座？",)),
                     "en": (("And the {r}?", "And the {r} one?"), ("What about the {r} one?",))}
    then_capital = {"zh": (("那{c}呢？", "{c}呢？"), ("{c}的呢？",)),
                    "en": (("And {c}?", "How about {c}?"), ("What about {c}?",))}
    n = len(MOUNTAINS)
    for i in range(n):
        for j in range(n):
            if i == j or (not train and j != i + 1):
                continue
            for lang, ranks, answer in (("zh", RANKS_ZH, (mountain_answer_zh)), ("en", RANKS_EN, mountain_answer_en)):
                first = _question(rng, getattr(MOUNTAIN_Q[lang], phrasing), dict(r=ranks[i]), lang, ())
                then = rng.choice(then_mountain[lang][0 if train else 1]).format(r=ranks[j])
                out.append(Conversation(then, answer(j), ((first, answer(i)),), topic="follow-up"))
    m = len(CAPITALS)
    for i in range(m):
        others = rng.sample([j for j in range(m) if j != i], 4) if train else ([(i + 1) % m] if i % 3 == 0 else [])
        for j in others:
            for lang, col, answer in (("zh", 0, capital_answer_zh), ("en", 1, capital_answer_en)):
                first = _question(rng, getattr(CAPITAL_Q[lang], phrasing), dict(c=CAPITALS[i][col]), lang, ())
                then = rng.choice(then_capital[lang][0 if train else 1]).format(c=CAPITALS[j][col])
                out.append(Conversation(then, answer(j), ((first, answer(i)),), topic="follow-up"))
    return out


def _in_conversations(units: list[Conversation], rng: Random, sizes: tuple[int, ...]) -> list[Conversation]:
    """Chain shuffled single questions (and follow-up pairs) into conversations of ``sizes`` rounds: the earlier
    rounds are unrelated history, as in a real chat that moves from one subject to the next."""
    units = list(units)
    rng.shuffle(units)
    out: list[Conversation] = []
    k = 0
    while k < len(units):
        size = rng.choice(sizes)
        rounds: list[tuple[str, str]] = []
        last = units[k]
        while True:
            last = units[k]
            k += 1
            rounds += [*last.history, (last.prompt, last.answer)]
            if len(rounds) >= size or k == len(units):
                break
        prompt, answer = rounds[-1]
        out.append(Conversation(prompt, answer, tuple(rounds[:-1]), topic=last.topic))
    return out


def training_conversations() -> list[Conversation]:
    """The SFT set, in a fixed order: every trained question once, chained into conversations of one to five
    rounds (mostly three) (unrelated earlier rounds, and follow-up questions right after the question they refer to)."""
    return _in_conversations(_fact_turns("train") + _follow_ups("train"), Random(4), (1, 2, 3, 3, 4, 5))


def heldout_conversations() -> list[Conversation]:
    """Held-out questions (templates and openings never trained), each asked in a fresh conversation."""
    return _fact_turns("heldout") + _follow_ups("heldout")


def ongoing_conversations() -> list[Conversation]:
    """A sample of the held-out questions asked after two to four unrelated held-out rounds (the history's
    answers are the right ones, as if the model had answered them)."""
    held = heldout_conversations()
    rng = Random(5)
    out = []
    for c in held[::3]:
        others = [o for o in held if o.topic != c.topic and not o.history]
        history = tuple((o.prompt, o.answer) for o in rng.sample(others, rng.choice((2, 3, 4))))
        out.append(Conversation(c.prompt, c.answer, history + c.history, topic=c.topic))
    return out


def pretraining_lines() -> list[str]:
    """Plain sentences stating every fact in both languages (pre-training text)."""
    lines = [mountain_answer_zh(i) for i in range(len(MOUNTAINS))]
    lines += [mountain_answer_en(i) for i in range(len(MOUNTAINS))]
    lines += [river_answer_zh(i) for i in range(len(RIVERS))] + [river_answer_en(i) for i in range(len(RIVERS))]
    lines += [capital_answer_zh(i) for i in range(len(CAPITALS))]
    lines += [capital_answer_en(i) for i in range(len(CAPITALS))]
    lines += [IDENTITY_ZH, IDENTITY_EN, GREETING_ZH, GREETING_EN, REFUSAL_ZH, REFUSAL_EN]
    lines += sorted({answer for topic, _, _, _, answer in domain_questions()
                     if topic in ("arithmetic", "conversion")})
    lines += [f"The word {w} reversed is {w[::-1]}, and in upper case it is {w.upper()}." for w in WORDS]
    return lines


def to_alpaca(conversations: list[Conversation]) -> list[dict]:
    """Alpaca records (``instruction``, ``input``, ``output``, ``history`` as [user, assistant] pairs)."""
    return [{"instruction": c.prompt, "input": "", "output": c.answer,
             "history": [list(turn) for turn in c.history]} for c in conversations]


def write_dataset(folder: str | os.PathLike) -> Path:
    """Write ``demo_sft.json``, ``demo_pt.txt`` and ``dataset_info.json`` (datasets ``demo_sft``, ``demo_pt``)."""
    from ..checkpoint import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "demo_sft.json",
                      json.dumps(to_alpaca(training_conversations()), ensure_ascii=False, indent=1) + "\n")
    atomic_write_text(folder / "demo_pt.txt", "\n".join(pretraining_lines()) + "\n")
    info = {"demo_sft": {"file_name": "demo_sft.json"},
            "demo_pt": {"file_name": "demo_pt.txt"}}
    atomic_write_text(folder / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    return folder
