"""An lm-evaluation-harness model, ``baichuan13b``: any lm-eval task on this project's models, no ``transformers``.

::

    python -m baichuan13b.evaluation.harness --model baichuan13b \\
        --model_args pretrained=Baichuan-13B-Base,dtype=bfloat16 --batch_size 8 --tasks hellaswag
    baichuan-lm-eval ...                       # the same (console script)

lm-eval (0.4.13) finds models in its registry only and loads no plug-in entry points for them: importing this
module registers the class under ``baichuan13b``, and the commands above are lm-eval's own command line with that
done first (every ``lm_eval`` flag works). From Python: ``import baichuan13b.evaluation.harness`` then
``lm_eval.simple_evaluate(model="baichuan13b", model_args="pretrained=...", tasks=[...])``, or pass an instance:
``simple_evaluate(model=BaichuanLM(pretrained=...), ...)``.

Log-likelihoods go through :func:`~baichuan13b.evaluation.runner.score_continuations`, the left-padded batched
forward pass of ``baichuan eval``; generation through :func:`baichuan13b.generation.generate`, the decode path of
every command. ``model_args``: ``pretrained`` (folder, hub id or ``demo``), ``dtype`` (auto, float32, float16,
bfloat16), ``device`` (auto, cpu, cuda[:N]; or ``--device``), ``max_length`` (default the model's context),
``quantize`` (int8, int4), ``group_size``, ``tokenizer`` (default: ``pretrained``); the batch size is lm-eval's
``--batch_size``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

try:
    import lm_eval.models  # lm-eval's own models: registered before ours, so that they stay found
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import model_registry
except ImportError as e:  # the adapter is optional: say what to install
    raise ImportError("the lm-evaluation-harness adapter needs lm-eval: pip install 'baichuan13b[lm-eval]'") from e

from ..generation import generate
from ..generation.decode import resolve_config
from .runner import pad_left, pad_token_id, score_continuations

MODEL_NAME = "baichuan13b"
logger = logging.getLogger(__name__)


def _int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_args {name}={value!r}: expected an integer") from None
    if number < minimum:
        raise ValueError(f"model_args {name}={value!r}: must be >= {minimum}")
    return number


class BaichuanLM(TemplateLM):
    """lm-eval's ``LM`` over :class:`~baichuan13b.model.BaichuanForCausalLM` (log-likelihoods, rolling
    log-likelihoods and generation), batched ``batch_size`` sequences at a time."""

    def __init__(self, pretrained: str = "demo", dtype: str = "auto", device: str = "auto", batch_size: Any = 1,
                 max_length: Any = None, quantize: str | None = None, group_size: Any = 128,
                 tokenizer: str | None = None, model: Any = None, **kwargs: Any) -> None:
        super().__init__()
        from ..model import BaichuanForCausalLM
        from ..tokenizer import BaichuanTokenizer

        unknown = sorted(k for k in kwargs if k not in ("max_batch_size",))  # lm-eval passes max_batch_size
        if unknown:
            raise ValueError(f"unknown model_args for {MODEL_NAME}: {', '.join(unknown)} (known: pretrained, dtype, "
                             f"device, batch_size, max_length, quantize, group_size, tokenizer)")
        batch_size = 1 if batch_size is None else batch_size
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size=auto is not supported by the baichuan13b model: give a number")
        self.batch_size_per_gpu = _int("batch_size", batch_size)
        if model is not None:  # an already loaded model (Python use): its tokenizer is ``tokenizer``
            if tokenizer is None or isinstance(tokenizer, str):
                raise ValueError("give the tokenizer object with model=")
            self.model, self.tokenizer = model.eval(), tokenizer
        else:
            device = device or "auto"
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's command line asks for cuda:0 unless --device says otherwise; like its hf model, run
                # on the CPU when there is no GPU (and say so).
                logger.warning("device %s asked but no CUDA device is visible: running on the CPU", device)
                device = "cpu"
            if device == "auto" and not torch.cuda.is_available():
                device = "cpu"
            self.model = BaichuanForCausalLM.from_pretrained(
                pretrained, torch_dtype=dtype, device_map=device, progress=False, quantize=quantize,
                group_size=_int("group_size", group_size)).eval()
            self.tokenizer = BaichuanTokenizer.from_pretrained(tokenizer or pretrained)
        context = self.model.config.max_position
        self._max_length = context if max_length in (None, "", "None") else _int("max_length", max_length, 2)
        if self._max_length > context and not self.model.config.allow_length_extrapolation:
            raise ValueError(f"model_args max_length={self._max_length} exceeds the model's context of {context}")
        self.pretrained = pretrained

    # ------------------------------------------------------------------ what lm-eval asks of a TemplateLM
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Conditioning token for an empty context (and the rolling windows): bos, as lm-eval's ``hf`` model."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tokenizer_name(self) -> str:
        return str(self.pretrained)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)))

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        """``requests``: ((context, continuation) texts, context ids, continuation ids), as lm-eval builds them."""
        from tqdm import tqdm

        pairs = [(context, continuation) for _, context, continuation in requests]
        bar = tqdm(total=len(pairs), desc="baichuan13b log-likelihoods", disable=disable_tqdm, file=sys.stderr)
        try:
            results = score_continuations(self.model, self.tokenizer, pairs, self.batch_size_per_gpu,
                                          self.max_length, bar)
        finally:
            bar.close()
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in windows of ``max_length`` tokens each predicting new tokens only."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner = [], []
        for k, request in enumerate(requests):
            (text,) = request.args
            windows = get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(make_disjoint_window, windows):
                pairs.append((None, context, continuation))
                owner.append(k)
        scores = self._loglikelihood_tokens(pairs, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owner, scores):
            totals[k] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    @torch.inference_mode()
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continue each context (``until`` strings end it and are cut off), requests with the same settings
        batched together."""
        from tqdm import tqdm

        groups: dict[str, list[int]] = {}
        for k, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(k)
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="baichuan13b generation", disable=disable_tqdm, file=sys.stderr)
        for members in groups.values():
            settings = dict(requests[members[0]].args[1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = _int("max_gen_toks", settings.pop("max_gen_toks", 256))
            temperature = float(settings.pop("temperature", 0.0))
            do_sample = bool(settings.pop("do_sample", temperature > 0))
            overrides: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": do_sample,
                                         "repetition_penalty": 1.0, "stop_strings": until}
            if do_sample:
                overrides["temperature"] = temperature
            for name in ("top_k", "top_p", "seed"):
                if name in settings:
                    overrides[name] = settings.pop(name)
            if settings:
                raise ValueError(f"generation settings not supported by {MODEL_NAME}: {', '.join(sorted(settings))}")
            cfg = resolve_config(self.model, None, overrides)
            eos = set(cfg.eos_token_ids)
            room = max(1, self.max_length - max_new)
            for b in range(0, len(members), self.batch_size_per_gpu):
                chunk = members[b: b + self.batch_size_per_gpu]
                rows = [self.tok_encode(requests[k].args[0])[-room:] or [self.prefix_token_id] for k in chunk]
                ids, mask = pad_left(rows, pad_token_id(self.tokenizer))
                generated = generate(self.model, ids.to(self.device),
                                     attention_mask=None if mask is None else mask.to(self.device),
                                     generation_config=cfg, tokenizer=self.tokenizer)
                for row, k in enumerate(chunk):
                    new = generated[row, ids.shape[1]:].tolist()
                    cut = next((j for j, t in enumerate(new) if t in eos), len(new))
                    text = self.tokenizer.decode(new[:cut], skip_special_tokens=True)
                    for stop in until:  # the text ends before the first stop string, as lm-eval expects
                        text = text.split(stop, 1)[0]
                    out[k] = text
                    self.cache_hook.add_partial("generate_until", requests[k].args, text)
                bar.update(len(chunk))
        bar.close()
        return out


if MODEL_NAME not in model_registry:  # once, even when this file also runs as ``python -m``'s __main__
    model_registry.register(MODEL_NAME)(BaichuanLM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with the ``baichuan13b`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
