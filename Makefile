# mae-affect: every target runs inside .venv, built by `make setup` (a no-op when nothing changed).
# Defaults point at the synthetic mini-Aff-Wild2 under data/, so on a fresh clone
# `make extract && make train-va` needs no arguments. Override any variable: make train-va DATA=/path/to/affwild2

VENV     ?= .venv
PYTHON   ?= python3
# CUDA builds that also run on the CPU; torch and torchvision are pinned as a matching pair.
TORCH    ?= torch==2.14.1 torchvision==0.29.1
BIN      := $(VENV)/bin
CLI      := $(BIN)/mae-affect

# PRESET names the synthetic dataset and every stage's preset (the stage configs' PRESETS in pipeline/configs):
# demo (the CPU demo, about 15 minutes), demo-full (the longer demo whose encoder learns the expressions) or
# tiny (a smoke test). The stages' budgets live there only, so `make extract` after
# `make demo` resumes and reuses what the demo made. DATA=/path/to/affwild2 runs these budgets on a real
# copy (used as it is: synth skips a root that is not a synthetic set); the paper's budgets are the
# commands' defaults (README, "Using a real Aff-Wild2 copy").
PRESET   ?= demo
# demo-full (the longer demo) runs on the demo's synthetic set
BASE     := $(subst -full,,$(PRESET))
DATA     ?= data/synth-$(BASE)
# runs/PRESET for the synthetic set; another DATA gets its own, runs/PRESET-NAME (NAME: DATA's last
# folder), so that a real copy never resumes into the synthetic set's runs
RUNS     ?= runs/$(PRESET)$(if $(filter data/synth-$(BASE),$(DATA)),,-$(notdir $(patsubst %/,%,$(DATA))))
DEVICE   ?= auto
# Decode workers of every stage; none: chosen from the cores (pipeline.device.cpu_budget).
WORKERS  ?= none
HEAD_PRESET ?= $(PRESET)
# Extra settings for one stage, e.g. PRETRAIN_ARGS="--set epochs=3" (options given win over the preset).
PRETRAIN_ARGS ?=
PROBE_ARGS ?=
FINETUNE_ARGS ?=
HEAD_ARGS ?=
PRETRAIN ?= $(RUNS)/pretrain
PROBE    ?= $(RUNS)/probe
FINETUNE ?= $(RUNS)/finetune
CKPT     ?= $(FINETUNE)/best.pt
STORE    ?= $(RUNS)/features.zarr
HEADS    ?= $(RUNS)/heads
STAGE    := --workers $(WORKERS) --device $(DEVICE)

.PHONY: setup demo test test-fast lint synth pretrain probe finetune extract train-va train-expr train-au bench \
	gpu-check compare-stages clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,video]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

# A DATA that exists and is not a synthetic set (no synth.json) is a real copy: used as it is.
synth: setup
	@if [ -e "$(DATA)" ] && [ ! -e "$(DATA)/synth.json" ]; then echo "$(DATA): not a synthetic set, used as it is"; \
	else $(CLI) synth --out $(DATA) --preset $(BASE); fi

pretrain: synth
	$(CLI) pretrain --preset $(PRESET) --images $(DATA) --out $(PRETRAIN) $(STAGE) $(PRETRAIN_ARGS)

probe: pretrain
	$(CLI) finetune --preset $(PRESET)-probe --data $(DATA) --init $(PRETRAIN)/checkpoint-last.pt --out $(PROBE) \
		$(STAGE) $(PROBE_ARGS)

finetune: probe
	$(CLI) finetune --preset $(PRESET) --data $(DATA) --init $(PRETRAIN)/checkpoint-last.pt \
		--head-init $(PROBE)/best.pt --out $(FINETUNE) $(STAGE) $(FINETUNE_ARGS)

extract: finetune
	$(CLI) extract --data $(DATA) --ckpt $(CKPT) --store $(STORE) $(STAGE)

train-va train-expr train-au: train-%: setup
	test -e $(STORE) || $(MAKE) extract
	$(CLI) train $* --preset $(HEAD_PRESET) --store $(STORE) --data $(DATA) --out $(HEADS)/$* --device $(DEVICE) \
		$(HEAD_ARGS)

demo: setup
	$(CLI) demo --preset $(PRESET) --out $(RUNS) --data $(DATA) $(STAGE)

bench: setup
	$(BIN)/python -m bench

# Every stage once on CUDA (ViT-B/16 at 224 px on the synthetic bench set, torchrun over every visible GPU):
# which CUDA branches ran, each loop against its bare step, peak memory; sized for a few minutes on one
# modern GPU (not yet run on one: docs/results-speed.md).
# Without CUDA the same code runs scaled down on the CPU and says so.
gpu-check: setup
	$(BIN)/python -m bench.gpu_check

# What MAE pretraining and fine-tuning each add: (a) linear probe, (b) fine-tune, (c) from random, (d) LP-FT,
# (e) and (f) the probe and LP-FT from random; 3 seeds at PRESET's fine-tuning budget (at demo-full's, about
# 45 min a seed on 2 CPU cores: docs/results.md).
compare-stages: pretrain
	$(BIN)/python -m bench.compare_stages --preset $(PRESET) --data $(DATA) --init $(PRETRAIN)/checkpoint-last.pt \
		--out $(RUNS)/compare-stages --workers $(WORKERS) --settings abcdef

# The caches, the presets' synthetic sets and the presets' run folders with all they hold (compare-stages
# included); runs on another DATA (runs/PRESET-NAME) and any other folder under runs/ or data/ are kept.
clean:
	rm -rf .pytest_cache .ruff_cache $(addprefix runs/,demo demo-full tiny) $(addprefix data/synth-,demo tiny)
