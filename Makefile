# The two commands of the README: `make example` and `make test` (each does its own set-up).
PYTHON ?= python3
JOBS ?= 2

.PHONY: setup example test data benchmark hff

setup:
	scripts/setup

data: setup
	@test -f test-data/generated/truth.fits || $(PYTHON) -m jointphot.cli simulate test-data/generated

example: data
	cd test-data/generated && $(PYTHON) -m jointphot.cli run job.json --tiles all --jobs $(JOBS) \
	    -o $(CURDIR)/example-output/catalog.fits

# one pytest worker per core, each running whole modules or test classes (their fixtures are made once)
test: data
	$(PYTHON) -m pytest -q --durations=15 -n $(JOBS) --dist loadscope tests

benchmark: data
	$(PYTHON) scripts/benchmark --density 120 --density 250 --jobs-scaling

# Real data (issue 12): the HFF test set, both tilings run, the report of each (a few minutes per run).
hff: setup
	@test -f test-data/generated/hff/lr.fits || $(PYTHON) scripts/hff-data test-data/generated/hff
	for tiling in whole 2x2; do \
	    (cd test-data/generated/hff && $(PYTHON) -m jointphot.cli run job_$$tiling.json --tiles all \
	        --jobs $(JOBS) -o cat_$$tiling.fits) && \
	    $(PYTHON) scripts/real-data-report test-data/generated/hff/job_$$tiling.json \
	        test-data/generated/hff/cat_$$tiling.fits || exit 1; \
	done
