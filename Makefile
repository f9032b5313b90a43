# Two entry points for a fresh machine: `make repro` (main job) and `make test`.
# Both create .venv and install pinned dependencies only when pyproject.toml changed; `make test` adds the
# test extras (pytest, pytest-timeout), `make bench-setup` the benchmark extras (optuna).
PY := .venv/bin/python
STAMP := .venv/.installed

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

.venv/.installed-test: $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: setup repro test bench-setup
setup: $(STAMP)

repro: $(STAMP)
	. .venv/bin/activate && dvc repro

test: .venv/.installed-test
	$(PY) -m pytest -q

bench-setup: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'

