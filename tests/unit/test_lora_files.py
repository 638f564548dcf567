"""The adapter folder (llm_core.models.lora_files): written in PEFT's layout (PEFT itself loads it
onto the transformers model, with our merged model's logits), read back onto the native decoder,
and hostile or careless folders refused before any weight changes, naming the file and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_core.models import LlamaForCausalLM, ModelConfig
from llm_core.models.loader import to_native_names
from llm_core.models.lora import add_lora, adapter_weights, merge_and_unwrap
from llm_core.models.lora_files import (
    AdapterFormatError,
    apply_adapter_folder,
    read_adapter_config,
    write_adapter_folder,
)
from llm_core.models.lora_names import LORA_TARGETS, peft_key
from tests.unit.test_lora import IDS, logits, randomize_b, tiny_decoder
from workers.model_identity import identity_digest

IDENTITY = {"kind": "builtin", "name": "tiny", "source": "tiny==1 sha256:00"}
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]


def trained_adapter(shape: str = "llama") -> LlamaForCausalLM:
    model = tiny_decoder(shape)
    add_lora(model, rank=4, alpha=8.0, dropout=0.05, targets=TARGETS)
    randomize_b(model)
    return model


def write(model, dest: Path, **over) -> Path:
    args = dict(weights=adapter_weights(model), rank=4, alpha=8.0, dropout=0.05, targets=TARGETS,
                base_ref="builtin:tiny", base_identity=IDENTITY, base_config=model.config)
    write_adapter_folder(dest, **{**args, **over})
    return dest


@pytest.fixture
def folder(tmp_path) -> Path:
    return write(trained_adapter(), tmp_path / "adapter")


@pytest.mark.parametrize("shape", ["llama", "qwen2", "llama-tied"])
def test_round_trip_onto_a_fresh_base_equals_the_merged_model(tmp_path, shape):
    model = trained_adapter(shape)
    dest = write(model, tmp_path / "a")
    expected = logits(merge_and_unwrap(model), IDS)
    base = tiny_decoder(shape)
    config = apply_adapter_folder(base, dest)
    torch.testing.assert_close(logits(base, IDS), expected, rtol=0, atol=1e-5)
    assert config["r"] == 4 and config["lora_alpha"] == 8.0


def test_config_is_peft_s_with_the_base_named(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "bias", "target_modules")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8.0, "bias": "none",
        "target_modules": TARGETS}
    assert config["base_model_name_or_path"] == "builtin:tiny"
    ours = config["llmbatch"]
    assert ours["base_model"] == IDENTITY and ours["base_digest"] == identity_digest(IDENTITY)
    assert ours["base_shape"] == {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
                                  "vocab_size": 96}
    tensors = load_file(folder / "adapter_model.safetensors")
    assert set(tensors) == {peft_key(i, t, x) for i in (0, 1) for t in TARGETS for x in "AB"}
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.filterwarnings("ignore:Unexpected keyword arguments")  # PEFT ignores our `llmbatch` section
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_peft_loads_our_folder_onto_transformers_with_our_logits(tmp_path, model_type):
    peft = pytest.importorskip("peft")
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(model_type, vocab_size=96, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config).eval()
    cfg = ModelConfig.from_dict(hf_config.to_dict())
    native = LlamaForCausalLM(cfg)
    native.load_state_dict(to_native_names(hf.state_dict(), cfg))
    add_lora(native, rank=4, alpha=8.0, dropout=0.0, targets=list(LORA_TARGETS))
    randomize_b(native)
    dest = tmp_path / "adapter"
    write_adapter_folder(dest, adapter_weights(native), 4, 8.0, 0.0, LORA_TARGETS, "hf-tiny", None, cfg)
    expected = logits(merge_and_unwrap(native).eval(), IDS)
    wrapped = peft.PeftModel.from_pretrained(hf, str(dest)).eval()
    with torch.no_grad():
        theirs = wrapped(input_ids=IDS[None]).logits[0]
    torch.testing.assert_close(theirs, expected, rtol=0, atol=1e-4)


# --- hostile and careless folders ---------------------------------------------------------------


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


_DROP = object()


@pytest.mark.parametrize("changes, message", [
    (dict(peft_type="PREFIX_TUNING"), "peft_type"),
    (dict(task_type="SEQ_CLS"), "task_type"),
    (dict(r=0), "r is 0"),
    (dict(r=10**6), "from 1 to 1024"),
    (dict(r=True), "r is True"),
    (dict(r=4.0), "must be an integer"),
    (dict(lora_alpha=-1), "lora_alpha"),
    (dict(lora_alpha=1e30), "lora_alpha"),
    (dict(lora_alpha="8"), "lora_alpha"),
    (dict(lora_dropout=1.5), "lora_dropout"),
    (dict(target_modules="all-linear"), "must be a list"),
    (dict(target_modules=["q_proj", "lm_head"]), "lm_head"),
    (dict(target_modules=["q_proj", "q_proj"]), "twice"),
    (dict(bias="all"), "bias"),
    (dict(use_rslora=True), "use_rslora"),
    (dict(use_dora=True), "use_dora"),
    (dict(rank_pattern={"q_proj": 8}), "rank_pattern"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(layers_to_transform=[0]), "layers_to_transform"),
    (dict(llmbatch=[1]), "llmbatch must be an object"),
    (dict(llmbatch={"base_digest": "../../etc"}), "base_digest"),
    (dict(llmbatch={"base_model": IDENTITY, "base_digest": "0" * 32}), "does not match"),
    (dict(llmbatch={"base_shape": {"hidden_size": "32"}}), "base_shape.hidden_size"),
    (dict(llmbatch={"task": "rm -rf"}), "llmbatch.task"),
    (dict(llmbatch={"task": "classification"}), "classifier.safetensors is missing"),
    (dict(peft_type=_DROP), "peft_type"),
])
def test_bad_configs_are_refused_naming_the_field(folder, changes, message):
    edit_config(folder, **changes)
    with pytest.raises(AdapterFormatError, match="adapter_config.json|is missing") as info:
        read_adapter_config(folder)
    assert message in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"r": NaN}', "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (b"\xff\xfe".decode("latin-1"), "not valid JSON"),
])
def test_unreadable_configs_are_refused(folder, text, message):
    (folder / "adapter_config.json").write_text(text, encoding="latin-1")
    with pytest.raises(AdapterFormatError, match=message):
        read_adapter_config(folder)


def test_missing_files_symlinks_and_pickle_are_refused(tmp_path, folder):
    with pytest.raises(AdapterFormatError, match="not a folder"):
        read_adapter_config(tmp_path / "nowhere")
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").symlink_to(folder / "adapter_config.json")
    with pytest.raises(AdapterFormatError, match="symbolic link"):
        read_adapter_config(other)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors is missing .*pickle weights are never"):
        apply_adapter_folder(tiny_decoder(), folder)


def rewrite_tensors(folder: Path, change) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


KEY = peft_key(0, "q_proj", "A")


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(96, 32)}), "not a LoRA matrix name"),
    (lambda t: t.update({peft_key(5, "q_proj", "A"): torch.zeros(4, 32)}), "names layer 5; the base model has 2"),
    (lambda t: t.update({peft_key(0, "k_proj", "A"): torch.zeros(4, 32)}), "does not list"),
    (lambda t: t.update({KEY: torch.zeros(4, 33)}), "is [4, 33], the base model takes [4, 32]"),
    (lambda t: t.update({KEY: torch.zeros(8, 32)}), "is [8, 32]"),
    (lambda t: t.update({KEY: torch.full((4, 32), float("nan"))}), "NaN or infinite"),
    (lambda t: t.update({KEY: torch.full((4, 32), float("inf"))}), "NaN or infinite"),
    (lambda t: t.update({KEY: torch.zeros(4, 32, dtype=torch.int32)}), "not a float type"),
    (lambda t: t.pop(peft_key(1, "down_proj", "B")), "1 tensors missing"),
])
def test_bad_tensors_are_refused_naming_the_tensor_and_no_weight_changes(folder, change, message):
    rewrite_tensors(folder, change)
    model = tiny_decoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors") as info:
        apply_adapter_folder(model, folder)
    assert message in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_damaged_safetensors_is_refused(folder):
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterFormatError, match="not a readable safetensors file"):
        apply_adapter_folder(tiny_decoder(), folder)


def test_adapter_of_another_base_shape_is_refused(tmp_path):
    dest = write(trained_adapter("qwen2"), tmp_path / "q")
    with pytest.raises(AdapterFormatError, match="base_shape.model_type is 'qwen2', the model has 'llama'"):
        apply_adapter_folder(tiny_decoder("llama"), dest)
    # Without our section (an adapter trained with PEFT), the tensor shapes still decide.
    edit_config(dest, llmbatch=_DROP)
    bigger = LlamaForCausalLM(ModelConfig.from_dict(
        {"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 48,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}))
    with pytest.raises(AdapterFormatError, match=r"is \[32, 4\], the base model takes \[64, 4\]"):
        apply_adapter_folder(bigger, dest)


def test_a_peft_written_config_without_our_section_is_accepted(folder, tmp_path):
    """What PEFT writes: many more keys, all at their neutral values."""
    edit_config(folder, llmbatch=_DROP, use_rslora=False, use_dora=False, rank_pattern={}, alpha_pattern={},
                modules_to_save=None, layers_to_transform=None, fan_in_fan_out=False, revision=None,
                init_lora_weights=True, inference_mode=True, layer_replication=None)
    assert read_adapter_config(folder)["r"] == 4
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    apply_adapter_folder(tiny_decoder(), copy)
