# Human-in-the-loop trainer. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8501
RUNS   ?= checkpoints
ARGS   ?=
NPROC  ?= 1

.DEFAULT_GOAL := help
.PHONY: help setup constraints browser train serve demo test soak bench bench-quick bench-penalties bench-feedback bench-review bench-shapes bench-harm clean

## help: list the targets
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

## setup: create .venv and install the project, its dependencies (the versions in constraints.txt) and the test browser
setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	@$(MAKE) --no-print-directory browser

## constraints: record the installed versions in constraints.txt (after a dependency change and a passing make test)
constraints:
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new && mv constraints.txt.new constraints.txt

## browser: install Debian's chromium for the end-to-end test (needs root or sudo; skipped if present)
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: /usr/bin/chromium"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null && echo "chromium installed"; \
	else echo "install chromium (the e2e test drives /usr/bin/chromium)"; fi

## train: a human-in-the-loop run answered in the dashboard (run `make serve` beside it); ARGS=... adds flags, NPROC=N trains on N processes (torchrun)
train:
	$(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --nproc_per_node $(NPROC),$(PY)) -m trainer --dataset decoy-digits --annotator human --proposals 10 --title demo-human --runs-dir $(RUNS) $(ARGS)

## serve: the dashboard on http://$(HOST):$(PORT) (HOST=0.0.0.0 to share on the network)
serve:
	$(VENV)/bin/hitl-serve --host $(HOST) --port $(PORT) --runs-dir $(RUNS)

## demo: a full run on bundled data with the simulated annotator, compared with a plain run
demo:
	$(PY) -m trainer.demo --runs-dir $(RUNS) $(ARGS)

## test: the whole test suite, the browser test included
test:
	$(PY) -m pytest -q

## soak: kill -9 tiny runs at random moments (N=10 runs), resume each twice at once (one may train) while a reader reads, count how many end exactly as uninterrupted (tests/test_soak.py, in make test, is its short form)
soak:
	$(PY) tests/soak.py --runs $(or $(N),10) $(ARGS)

## bench: learning outcome, cost and latency benchmarks (about 21 min on 2 cores)
bench:
	$(PY) -m bench $(ARGS)

## bench-quick: a smaller benchmark (about 3 min)
bench-quick:
	$(PY) -m bench --quick $(ARGS)

## bench-penalties: what each penalty variant teaches, 3 seeds (about 15 min), into the same results file
bench-penalties:
	$(PY) -m bench --only penalties $(ARGS)

## bench-feedback: penalty, counterexamples, both and auto compared, 3 seeds, two data sets (JOBS=2 runs at a time; about 3 hours on 2 cores), into <device>-feedback.json
bench-feedback:
	$(PY) -m bench --only feedback --jobs $(or $(JOBS),2) $(ARGS)

## bench-review: what a minute of review buys: a scripted reviewer in chromium, then plain and reviewed runs, 3 seeds, two sticker placements (about 25 min), into <device>-review.json
bench-review:
	$(PY) -m bench --only review --jobs $(or $(JOBS),2) $(ARGS)

## bench-shapes: plain, hitl and hitl with --feedback both on other shapes of shortcut (sticker anywhere, ruler, text, two artefacts, text on 80%), 3 seeds (about 75 min), into <device>-shapes.json
bench-shapes:
	$(PY) -m bench --only shapes --jobs $(or $(JOBS),2) $(ARGS)

## bench-harm: feedback where there is nothing to unlearn at 300, 600 and 1,000 images, and small confounded sets, 3 seeds (about 35 min), into <device>-harm.json
bench-harm:
	$(PY) -m bench --only harm --jobs $(or $(JOBS),2) $(ARGS)

## clean: remove generated data, runs and caches (keeps .venv)
clean:
	rm -rf checkpoints/*/ datasets/*/ .pytest_cache test-artifacts
