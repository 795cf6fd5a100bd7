# The course's commands. Each creates/uses the virtual environment .venv from requirements.txt.
#   make book    build the course site (executes the chapter pages) into _build/html
#   make test    run the whole test suite (package, exercises, grading loop, book build)
#   make release regenerate exercises/ from solutions/ (refuses to overwrite edited notebooks)
#   make check   fail if exercises/ differs from what generation would produce

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests run in parallel on all cores; set JOBS=1 to run them one at a time.
JOBS   ?= auto

.PHONY: venv book test release check clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W --keep-going
	@echo
	@echo "Open the course: file://$(CURDIR)/_build/html/index.html"

# pytest's exit status 5 ("no tests collected") is a failure, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

release: $(STAMP)
	$(BIN)/python -m llmcourse course release

check: $(STAMP)
	$(BIN)/python -m llmcourse course check

clean:
	rm -rf _build .pytest_cache
