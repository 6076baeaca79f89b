# Two entry points (README): `make demo` and `make test`. Both create/refresh .venv only when
# pyproject.toml changed (the stamp file carries its hash), so repeated runs skip the install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/vpns-deploy
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
DEMO := runs/demo

.PHONY: install demo test clean chromium

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# --overwrite: runs/demo is the demo's own; a run left there by an older version (other defaults) is
# replaced, while one made with the same settings is still skipped stage by stage.
demo: install
	@start=$$(date +%s); \
	$(CLI) run recipes/digits-demo.toml --overwrite && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; artifacts in $(DEMO)/vpns-s0.9"

# The HTML report test renders in headless Chromium: installed once here (root + apt-get only), never
# by a test while the suite runs; without it that test skips with the reason.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	echo "note: headless Chromium unavailable; the HTML rendering test will skip"

test: install chromium
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
