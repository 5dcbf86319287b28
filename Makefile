# mae-affect: every target runs inside .venv, built by `make setup` (a no-op when nothing changed).
# Defaults point at the synthetic mini-Aff-Wild2 under data/, so on a fresh clone
# `make extract && make train-va` needs no arguments. Override any variable: make train-va DATA=/path/to/affwild2

VENV     ?= .venv
PYTHON   ?= python3
# CUDA builds that also run on the CPU; PyPI's torchvision does not import beside the 2.13.0 CPU build.
TORCH    ?= torch==2.14.1 torchvision==0.29.1
BIN      := $(VENV)/bin
CLI      := $(BIN)/mae-affect

PRESET   ?= demo
DATA     ?= data/synth-$(PRESET)
RUNS     ?= runs/$(PRESET)
DEVICE   ?= auto
MODEL    ?= mae_vit_tiny_patch16
IMG_SIZE ?= 112
WORKERS  ?= 2
# The demo's budgets for a 2-core CPU (pipeline/demo.py, DemoConfig), so that `make extract` resumes and
# reuses what `make demo` made. On real Aff-Wild2 and a GPU, set them to the paper's (README).
PRETRAIN_ARGS ?= --epochs 8 --batch-size 64 --accum-iter 1 --lr 1e-3 --warmup-epochs 1 --crop-scale 0.8 1.0 \
	--decoder-dim 128 --decoder-depth 2 --decoder-heads 4
FINETUNE_ARGS ?= --epochs 10 --batch-size 64 --lr 5e-4 --frames-per-video 100 --warmup-epochs 0.5
# LP-FT: a linear probe on the frozen encoder first; its head starts the fine-tune (PROBE_ARGS override the lr).
PROBE_ARGS ?= $(FINETUNE_ARGS) --linear-probe --lr 5e-3
# The heads' "demo" preset suits the synthetic set on a CPU; use HEAD_PRESET=paper on real Aff-Wild2.
HEAD_PRESET ?= demo
PRETRAIN ?= $(RUNS)/pretrain
PROBE    ?= $(RUNS)/probe
FINETUNE ?= $(RUNS)/finetune
CKPT     ?= $(FINETUNE)/best.pt
STORE    ?= $(RUNS)/features.zarr
HEADS    ?= $(RUNS)/heads

.PHONY: setup demo test test-fast lint synth pretrain probe finetune extract train-va train-expr train-au bench \
	compare-stages clean

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

synth: setup
	$(CLI) synth --out $(DATA) --preset $(PRESET)

pretrain: synth
	$(CLI) pretrain --images $(DATA)/cropped_aligned --images $(DATA)/cropped_aligned_new_50_vids \
		--out $(PRETRAIN) --model $(MODEL) --img-size $(IMG_SIZE) $(PRETRAIN_ARGS) \
		--workers $(WORKERS) --device $(DEVICE)

probe: pretrain
	$(CLI) finetune --data $(DATA) --init $(PRETRAIN)/checkpoint-last.pt --out $(PROBE) $(PROBE_ARGS) \
		--workers $(WORKERS) --device $(DEVICE)

finetune: probe
	$(CLI) finetune --data $(DATA) --init $(PRETRAIN)/checkpoint-last.pt --head-init $(PROBE)/best.pt \
		--out $(FINETUNE) $(FINETUNE_ARGS) --workers $(WORKERS) --device $(DEVICE)

extract: finetune
	$(CLI) extract --data $(DATA) --ckpt $(CKPT) --store $(STORE) --workers $(WORKERS) --device $(DEVICE)

train-va train-expr train-au: train-%: setup
	test -e $(STORE) || $(MAKE) extract
	$(CLI) train $* --store $(STORE) --data $(DATA) --out $(HEADS)/$* --preset $(HEAD_PRESET) --device $(DEVICE)

demo: setup
	$(CLI) demo --out $(RUNS) --data $(DATA) --preset $(PRESET) --device $(DEVICE)

bench: setup
	$(BIN)/python -m bench

# What MAE pretraining and fine-tuning each add: (a) linear probe, (b) fine-tune, (c) from random, (d) LP-FT,
# (e) and (f) the probe and LP-FT from random; 3 seeds at the demo's budget (about 45 min a seed on 2 CPU cores).
compare-stages: pretrain
	$(BIN)/python -m bench.compare_stages --data $(DATA) --init $(PRETRAIN)/checkpoint-last.pt \
		--out $(RUNS)/compare-stages --workers $(WORKERS) --settings abcdef

clean:
	rm -rf runs data .pytest_cache .ruff_cache
