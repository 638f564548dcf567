"""Every way a model folder's tokenizer is loaded: the one place that reads tokenizer files.

- `ModelTokenizer`: tokenizer and chat template for inference (tokenizers + jinja2, no
  transformers: the inference engines never import it).
- `ChatTemplateError`: a chat template that does not compile, fails, or tries to leave its sandbox.

A chat template comes from the model folder, which a tenant chooses: it is untrusted code. It is
rendered in Jinja's `ImmutableSandboxedEnvironment`, as transformers renders it, so that it can
format messages but not reach attributes starting with `_` (`cycler.__init__.__globals__`,
`''.__class__.__mro__`), call unsafe methods or change the objects it is given; a product or
power that would take gigabytes is refused too. Weights and tokenizers are never loaded with
remote code (`trust_remote_code=False`).
- `read_tokenizer_file`: the bare `tokenizers.Tokenizer` of tokenizer.json (the native engine).
- `load_hf_tokenizer`: transformers' tokenizer with a pad token, for what pads batches the way
  training did (the training workers, and the classifier head that runs what they trained).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

# Used only when a folder has no chat template: the ChatML layout most instruct models share.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


TOKENIZER_FILE = "tokenizer.json"


def read_tokenizer_file(model_dir: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(model_dir) / TOKENIZER_FILE))


def load_hf_tokenizer(model_dir: str | Path):
    """transformers' AutoTokenizer of the folder; a tokenizer without a pad token pads with EOS."""
    # Lazy: transformers takes seconds to import, and the inference engines never need it.
    from transformers import AutoTokenizer

    # Never run Python shipped in the folder (tokenizer classes named by `auto_map`).
    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class ModelTokenizer:
    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.tok = read_tokenizer_file(self.model_dir)
        self.config = json.loads((self.model_dir / "config.json").read_text())
        template_file = self.model_dir / "chat_template.jinja"
        cfg_file = self.model_dir / "tokenizer_config.json"
        tok_cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        if template_file.exists():
            self.chat_template, self.template_source = template_file.read_text(), template_file.name
        elif isinstance(tok_cfg.get("chat_template"), str):
            self.chat_template, self.template_source = tok_cfg["chat_template"], f"{cfg_file.name} chat_template"
        else:
            self.chat_template, self.template_source = CHATML, "built-in ChatML"
        self._special = {k: tok_cfg.get(k) for k in ("bos_token", "eos_token") if isinstance(tok_cfg.get(k), str)}

    @cached_property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.config.get("eos_token_id")
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        name = self._special.get("eos_token")
        if name and self.tok.token_to_id(name) is not None:
            ids.add(self.tok.token_to_id(name))
        return tuple(sorted(ids))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        # Chat templates already spell out special tokens; never add BOS/EOS a second time.
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    @cached_property
    def _template(self) -> jinja2.Template:
        env = _TemplateSandbox(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
        env.globals["raise_exception"] = _raise
        try:
            return env.from_string(self.chat_template)
        except jinja2.TemplateSyntaxError as exc:
            raise self._error(f"is not valid Jinja (line {exc.lineno}): {exc.message}") from None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        template = self._template  # compiled outside the try: a syntax error is reported as such
        try:
            return template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._special.get("bos_token", ""),
                eos_token=self._special.get("eos_token", ""),
            )
        except SecurityError as exc:
            raise self._error(f"tried unsafe access: {str(exc).rstrip('.')} (templates are sandboxed: no attributes "
                              "starting with '_', no unsafe calls, no changing objects)") from None
        except _TooLarge as exc:
            raise self._error(f"tried to build a value too large: {exc}") from None
        except jinja2.TemplateError as exc:  # raise_exception(...) of the template, or an undefined name
            raise self._error(f"failed: {exc.message}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:  # e.g. `'a' + 1` in the template
            raise self._error(f"failed: {type(exc).__name__}: {exc}") from None

    def _error(self, what: str) -> ChatTemplateError:
        return ChatTemplateError(str(self.model_dir), f"chat template of {self.model_dir} "
                                                      f"({self.template_source}) {what}")


class ChatTemplateError(ValueError):
    """A model folder's chat template was refused or failed; names the folder and the rule."""

    def __init__(self, model_dir: str, message: str):
        self.model_dir = model_dir
        super().__init__(message)

    def __reduce__(self):  # crosses Ray boundaries: rebuilt from the same arguments
        return type(self), (self.model_dir, str(self))


class _TooLarge(Exception):
    pass


# A template may repeat a string (`'-' * 80`), not build gigabytes with one operator.
_MAX_REPEAT, _MAX_EXPONENT = 100_000, 1_000


class _TemplateSandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox, with `*` and `**` bounded (the sandbox already bounds `range`)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
            raise _TooLarge(f"exponent {right} is over {_MAX_EXPONENT}")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > _MAX_REPEAT:
                    raise _TooLarge(f"a repeated sequence of {len(seq) * count} items is over {_MAX_REPEAT}")
        return super().call_binop(context, operator, left, right)


def _raise(message: str):
    raise jinja2.TemplateError(message)
