"""Every way a model folder's tokenizer is loaded: the one place that reads tokenizer files.

- `ModelTokenizer`: tokenizer and chat template for inference (tokenizers + jinja2, no
  transformers: the inference engines never import it).
- `read_tokenizer_file`: the bare `tokenizers.Tokenizer` of tokenizer.json (the native engine).
- `load_hf_tokenizer`: transformers' tokenizer with a pad token, for what pads batches the way
  training did (the training workers, and the classifier head that runs what they trained).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import jinja2
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

    tok = AutoTokenizer.from_pretrained(str(model_dir))
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
        self.chat_template = (
            template_file.read_text() if template_file.exists() else tok_cfg.get("chat_template") or CHATML
        )
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
        env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
        env.globals["raise_exception"] = _raise
        return env.from_string(self.chat_template)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._special.get("bos_token", ""),
            eos_token=self._special.get("eos_token", ""),
        )


def _raise(message: str):
    raise jinja2.TemplateError(message)
