"""A model folder is a tenant's choice, so nothing in it may run as code.

Its chat template is rendered in Jinja's immutable sandbox (as transformers renders it): the
payloads that escape a plain Jinja environment raise a ChatTemplateError naming the folder and
the rule, and the marker file they would write never appears. Real templates render exactly
as before. Pickle weights are refused, not loaded, and a shard index cannot point outside.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import jinja2
import jinja2.utils
from jinja2.sandbox import SandboxedEnvironment
import pytest

from llm_core.models.loader import WeightsFormatError, safetensors_files
from llm_core.tokenizer import CHATML, ChatTemplateError, ModelTokenizer
from tests.support.tiny_model import _builtin_dir, _train_tokenizer

# Each would run `id > marker` (or list every class in the process) in a plain jinja2.Environment.
PAYLOADS = [
    "{{ cycler.__init__.__globals__.os.system('id > marker') }}",
    "{{ joiner.__init__.__globals__.os.popen('id > marker').read() }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
    "{{ c('id > marker', shell=True) }}{% endif %}{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('id > marker') }}",
    "{{ messages.append({'role': 'system', 'content': 'injected'}) }}",
]
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{ 7*7 }} <|im_end|>"}]


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    _train_tokenizer(out, vocab_size=300)
    (out / "chat_template.jinja").unlink()
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": 2}))
    return out


@pytest.fixture
def folder(tokenizer_files, tmp_path, monkeypatch) -> Path:
    """A fresh model folder; the working directory is its parent, where `marker` would land."""
    out = tmp_path / "model"
    shutil.copytree(tokenizer_files, out)
    monkeypatch.chdir(tmp_path)
    return out


def _with_template(folder: Path, template: str, where: str) -> ModelTokenizer:
    if where == "file":
        (folder / "chat_template.jinja").write_text(template)
    else:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
    return ModelTokenizer(folder)


@pytest.mark.parametrize("where", ["file", "tokenizer_config"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_template_payload_is_refused_and_runs_nothing(folder, payload, where):
    tok = _with_template(folder, payload, where)
    with pytest.raises(ChatTemplateError) as info:
        tok.apply_chat_template([{"role": "user", "content": "hello"}])
    message = str(info.value)
    assert message.startswith(f"chat template of {folder} (")
    assert "tried unsafe access" in message and "sandboxed" in message
    assert ("chat_template.jinja" if where == "file" else "tokenizer_config.json") in message
    assert "\n" not in message and info.value.model_dir == str(folder)
    assert not (folder.parent / "marker").exists() and not (folder / "marker").exists()


def test_the_payload_path_is_real():
    """Guards the test above without running the payload: Jinja's `cycler` global really leads to
    `os` through `__init__.__globals__`, so it is the sandbox that stops it."""
    assert "cycler.__init__.__globals__.os.system" in PAYLOADS[0]
    assert jinja2.utils.Cycler.__init__.__globals__["os"].system is not None


@pytest.mark.parametrize("template", ["{{ 'x' * 10**9 }}", "{{ 9 ** 9999999 }}", "{{ [0] * 10**8 }}"])
def test_templates_cannot_build_huge_values(folder, template):
    with pytest.raises(ChatTemplateError, match="too large"):
        _with_template(folder, template, "file").apply_chat_template(MESSAGES)


@pytest.mark.parametrize("template, rule", [
    ("{% for m in messages %}", "is not valid Jinja (line 1)"),
    ("{{ raise_exception('Conversation roles must alternate') }}", "failed: Conversation roles must alternate"),
    ("{{ messages[9]['content'] }}", "failed:"),
    ("{{ 1 // 0 }}", "failed: ZeroDivisionError"),
])
def test_broken_templates_name_the_folder(folder, template, rule):
    with pytest.raises(ChatTemplateError, match="chat template of .*model") as info:
        _with_template(folder, template, "file").apply_chat_template(MESSAGES)
    assert rule in str(info.value)


def _plain_render(template: str, tok: ModelTokenizer, generation: bool) -> str:
    # Jinja's plain sandbox as the reference: ours adds only the size limits, which must not
    # change what a real template renders (no unsandboxed Jinja anywhere, tests included).
    env = SandboxedEnvironment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(messages=MESSAGES, add_generation_prompt=generation,
                                            bos_token=tok._special.get("bos_token", ""),
                                            eos_token=tok._special.get("eos_token", ""))


@pytest.mark.parametrize("generation", [True, False])
@pytest.mark.parametrize("template", [SMOLLM2, CHATML, "{{ bos_token }}{% for m in messages %}"
                                      "{{ m.role | upper }}: {{ m.content | trim }}{{ eos_token }}\n{% endfor %}"])
def test_real_templates_render_as_before(folder, template, generation):
    tok = _with_template(folder, template, "file")
    assert tok.apply_chat_template(MESSAGES, generation) == _plain_render(template, tok, generation)


def test_builtin_model_template_renders_as_before():
    builtin = _builtin_dir()
    if builtin is None:
        pytest.skip("built-in model not in the model cache")
    tok = ModelTokenizer(builtin)
    assert tok.apply_chat_template(MESSAGES) == _plain_render(tok.chat_template, tok, True)


def test_folder_without_template_uses_chatml(folder):
    tok = ModelTokenizer(folder)
    assert tok.template_source == "built-in ChatML"
    assert tok.apply_chat_template(MESSAGES[1:]) == "<|im_start|>user\nHi {{ 7*7 }} <|im_end|><|im_end|>\n" \
                                                   "<|im_start|>assistant\n"


def test_chat_template_error_survives_pickling(folder):
    err = ChatTemplateError(str(folder), f"chat template of {folder} tried unsafe access")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.model_dir == str(folder)


def test_pickle_only_weights_are_refused(folder):
    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(WeightsFormatError) as info:
        safetensors_files(folder)
    message = str(info.value)
    assert f"model folder {folder} holds only pickle weights (pytorch_model.bin)" in message
    assert "safetensors or GGUF, never pickle" in message


def test_folder_without_weights_says_so(folder):
    with pytest.raises(WeightsFormatError, match="holds no weights"):
        safetensors_files(folder)


@pytest.mark.parametrize("shard", ["../other-tenant/model.safetensors", "/etc/passwd", "pytorch_model.bin"])
def test_shard_index_cannot_point_outside_the_folder(folder, shard):
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(WeightsFormatError, match="shards must be .safetensors files in the folder itself"):
        safetensors_files(folder)


def test_hf_engine_refuses_pickle_only_folder_before_transformers(folder):
    from llm_core.engine.hf import HFEngine  # imports torch: only this test pays for it

    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(WeightsFormatError, match="never pickle"):
        HFEngine(folder, device="cpu")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == name]


def _keyword(call: ast.Call, name: str):
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


# DeepSpeed checkpoints are pickles, and DeepSpeed unpickles them itself on resume: a checkpoint
# folder is trusted as the job's own output, not as tenant input. Known, listed, not yet closed.
KNOWN_UNPICKLING = {"workers/training/rescale.py"}


def test_no_code_path_loads_pickle_or_remote_code():
    """Every from_pretrained of ours says trust_remote_code=False; no new torch.load unpickles freely."""
    root = Path(__file__).resolve().parents[2]
    checked, unpickling = 0, set()
    for path in [p for d in ("llm_core", "workers") for p in (root / d).rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "from_pretrained"):
            checked += 1
            assert _keyword(call, "trust_remote_code") is False, f"{path}:{call.lineno}: trust_remote_code=False"
        for call in _calls(tree, "load"):
            if getattr(call.func.value, "id", None) == "torch" and _keyword(call, "weights_only") is not True:
                unpickling.add(str(path.relative_to(root)))
    assert checked >= 4
    assert unpickling <= KNOWN_UNPICKLING, f"torch.load without weights_only=True in {unpickling - KNOWN_UNPICKLING}"
    hf = ast.parse((root / "llm_core/engine/hf.py").read_text())
    assert all(_keyword(c, "use_safetensors") is True for c in _calls(hf, "from_pretrained"))
