# The two commands of the README. Both install into .venv/ at the repo root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU build that lies on these machines' disk; an unpinned torch pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo finetune-demo test install install-dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/llmbatch run examples/summarize-debian.yaml

# LoRA fine-tune of the built-in model (about 25 min on 2 CPU cores), then the demo's job before
# and after it, and their ROUGE-L side by side.
finetune-demo: install
	$(VENV)/bin/llmbatch run examples/finetune-lora-summarize-debian.yaml
	$(VENV)/bin/llmbatch run examples/summarize-debian.yaml
	$(VENV)/bin/llmbatch run examples/summarize-debian-tuned.yaml
	$(VENV)/bin/llmbatch compare out/summarize-debian out/summarize-debian-tuned

test: install-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
