# The two commands of the README: `make example` and `make test` (each does its own set-up).
PYTHON ?= python3
JOBS ?= 2

.PHONY: setup example test data benchmark

setup:
	scripts/setup

data: setup
	@test -f test-data/generated/truth.fits || $(PYTHON) -m jointphot.cli simulate test-data/generated

example: data
	cd test-data/generated && $(PYTHON) -m jointphot.cli run job.json --tiles all --jobs $(JOBS) \
	    -o $(CURDIR)/example-output/catalog.fits

test: data
	$(PYTHON) -m pytest -q tests

benchmark: data
	$(PYTHON) scripts/benchmark
