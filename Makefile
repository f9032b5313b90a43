# Two entry points for a fresh machine: `make repro` (main job) and `make test`.
# Both create .venv and install pinned dependencies only when pyproject.toml changed.
PY := .venv/bin/python
STAMP := .venv/.installed

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

.PHONY: setup repro test
setup: $(STAMP)

repro: $(STAMP)
	. .venv/bin/activate && dvc repro

test: $(STAMP)
	$(PY) -m pytest -q

