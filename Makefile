# The verbs people type. Each target creates what it needs, so any of them works on a fresh clone.
PYTHON ?= python3.11
# The Lambda runtime's Python, for sam build: the first python3.13 that actually runs (pyenv shims may not).
PY313  ?= $(shell for p in $$(command -v python3.13) $$(ls -d $$HOME/.pyenv/versions/3.13*/bin/python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 2>/dev/null); do \
	$$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV   := .venv
SAMVENV := .venv-sam
BIN    := $(VENV)/bin
SAM    := $(SAMVENV)/bin/sam
CHECKOVVENV := .venv-checkov
# Only checkov itself goes on the tests' PATH, not its virtualenv's python.
CHECKOV := $(CHECKOVVENV)/tools/checkov

.PHONY: local test test-fast bench build deploy lint schema clean

$(BIN)/.installed: requirements-dev.txt layers/stream/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

$(SAM):
	@test -n "$(PY313)" || { echo "python3.13 (the Lambda runtime) is needed for the SAM CLI and sam build"; exit 1; }
	test -x $(SAMVENV)/bin/python || $(PY313) -m venv $(SAMVENV)
	$(SAMVENV)/bin/pip install -q --upgrade pip
	$(SAMVENV)/bin/pip install -q aws-sam-cli

$(CHECKOV): requirements-checkov.txt
	test -x $(CHECKOVVENV)/bin/python || $(PYTHON) -m venv $(CHECKOVVENV)
	$(CHECKOVVENV)/bin/pip install -q --upgrade pip
	$(CHECKOVVENV)/bin/pip install -q -r requirements-checkov.txt
	mkdir -p $(CHECKOVVENV)/tools && ln -sf ../bin/checkov $@
	touch $@

## local: run the whole service on this machine (WebSocket gateway, SNS, mock LLM, chat page,
## and the AI SDK example at /ai-sdk/ when npm is there to build it)
local: $(BIN)/.installed
	@command -v npm >/dev/null && (cd examples/ai-sdk-chat && { test -d node_modules || npm ci --no-audit --no-fund; } && npm run build >/dev/null) \
	  || echo "examples/ai-sdk-chat not built (needs npm): /ai-sdk/ says how"
	$(BIN)/python -m devstack

## test: every test, from nothing (creates the virtualenvs, installs, runs pytest)
test: $(BIN)/.installed $(SAM) $(CHECKOV)
	PATH="$(abspath $(SAMVENV))/bin:$(abspath $(CHECKOVVENV))/tools:$(dir $(PY313)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

## test-fast: unit tests only
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest tests/unit -q

## bench: streaming benchmarks; prints a table and rewrites docs/benchmarks.md
bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint template.yaml
	$(BIN)/mypy
	for f in functions/*/app.py; do $(BIN)/mypy --check-untyped-defs $$f || exit 1; done
	PYTHONPATH=layers/stream $(BIN)/lint-imports

schema: $(BIN)/.installed
	PYTHONPATH=layers/stream $(BIN)/python -m llmstream.core.schema > docs/protocol.schema.json

## build / deploy: the AWS SAM application (python3.13 must be on PATH; no Docker needed)
build: $(SAM)
	PATH="$(dir $(PY313)):$$PATH" $(SAM) build

deploy: build
	$(SAM) deploy --guided

clean:
	rm -rf .aws-sam $(VENV) $(SAMVENV) $(CHECKOVVENV) .pytest_cache
