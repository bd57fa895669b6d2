# cgsnap developer entry points.  A fresh machine needs only:
#     make demo     # install everything, start the dev cloud, snapshot a demo instance
#     make test     # install everything, run every test tier
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# `make devcloud DEVCLOUD_SHAPE=production`: the production-shaped dev cloud
# (tools/devcloud/production.sh), beside the default one.
DEVCLOUD_SHAPE ?= default

.PHONY: man constraints help bootstrap devcloud devcloud-stop testguest demo test unit functional functional-production fault-matrix-production e2e fault-matrix chaos lint genconfig bench clean

help:
	@echo "make demo        set up everything and snapshot the demo instance"
	@echo "make test        set up everything and run every test tier (lint, unit, functional, e2e, fault-matrix, functional-production, fault-matrix-production, chaos)"
	@echo "make functional-production   functional subset on the production-shaped dev cloud"
	@echo "make fault-matrix-production  the fault matrix's storage cases on the production shape"
	@echo "make unit | functional | e2e | fault-matrix | bench | lint | genconfig | man | constraints | devcloud | devcloud-stop | clean"
	@echo "make chaos [CHAOS_CASES=60] [CHAOS_SEED=n] [CHAOS_ONLY=i,j] [CHAOS_KINDS=k,...] [CHAOS_JOBS=2]   seeded soak: faults around cgsnap (docs/safety.md)"

bootstrap: $(VENV)/.cgsnap-installed

$(VENV)/.cgsnap-installed: requirements.txt test-requirements.txt upper-constraints.txt pyproject.toml setup.cfg tools/bootstrap.sh
	tools/bootstrap.sh

devcloud: bootstrap
	DEVCLOUD_SHAPE=$(DEVCLOUD_SHAPE) tools/devcloud/devcloud.sh start

devcloud-stop:
	DEVCLOUD_SHAPE=$(DEVCLOUD_SHAPE) tools/devcloud/devcloud.sh stop

demo: devcloud
	$(PY) tools/demo.py

lint: bootstrap
	$(VENV)/bin/ruff check cgsnap tests tools bench

unit: bootstrap
	$(PYTEST) -q tests/unit

# tests/functional/production/ needs what only the production shape has (a region
# without an image service): `make functional-production` runs it.
functional: devcloud
	$(PYTEST) -q tests/functional --ignore=tests/functional/production

# The functional tier's representative subset on the production-shaped dev cloud
# (tools/devcloud/production.sh: cinder-api/-scheduler/-volume over RabbitMQ on
# MariaDB, member-only user, per-type quotas): the production-shape findings, a
# 9-member set, quota refusals and a quota exhausted mid-window, a revert that
# deletes real snapshots, odd names, a group snapshot and a revert after it,
# snapshots stuck `creating` (finding 4) and a region without Glance (finding 5).
PROD_CLOUDS := CGSNAP_TEST_CLOUDS_YAML=$(CURDIR)/.devcloud-production/clouds.yaml \
	CGSNAP_TEST_CLOUD=devcloud-prod CGSNAP_TEST_ADMIN_CLOUD=devcloud-prod-admin
# The list is a pytest @file (one argument a line, no comments), shared with tox.
FUNCTIONAL_PRODUCTION := @tests/functional/production.args

functional-production: bootstrap
	@$(MAKE) --no-print-directory devcloud DEVCLOUD_SHAPE=production
	$(PROD_CLOUDS) $(PYTEST) -q $(FUNCTIONAL_PRODUCTION)

# The fault matrix's storage cases (CGSNAP_FAULT_MATRIX=storage: every Cinder call
# of both cuts with every action, and a kill at each task of the window) on the
# production shape, where the cloud's shape matters.
fault-matrix-production: bootstrap
	@$(MAKE) --no-print-directory devcloud DEVCLOUD_SHAPE=production
	$(PROD_CLOUDS) CGSNAP_FAULT_MATRIX=storage $(PYTEST) -q -p no:warnings tests/faultmatrix

testguest: bootstrap
	tools/testguest/testguest.sh build

# The real-guest tier: builds the guest, starts a private libvirtd, runs the
# tests and always tears down (no qemu, libvirtd or mount is left behind).
e2e: devcloud testguest
	@rc=0; $(PYTEST) -q -s tests/e2e || rc=$$?; \
	tools/testguest/testguest.sh down >/dev/null 2>&1 || true; \
	if pgrep -f "^[^ ]*qemu-system-x86_64" >/dev/null || pgrep -x libvirtd >/dev/null; then \
	    echo "e2e: qemu or libvirtd left running" >&2; rc=1; fi; \
	exit $$rc

fault-matrix: devcloud
	$(PYTEST) -q -p no:warnings tests/faultmatrix

# The chaos soak (tests/chaos/run.py, docs/safety.md): seeded cases that make the
# guest agent, libvirtd, cgsnap's cgroup, Cinder, PostgreSQL and a second host
# misbehave, against the dev cloud and one real guest; the last line is the
# summary.  A tier that cannot run fails (exit 2), it never skips.
CHAOS_CASES ?= 60
# Two workers side by side (tests/chaos/run.py --jobs; kinds that disturb a
# shared component run alone): the 1,000-case soak of docs/safety.md ran so.
CHAOS_JOBS ?= 2
chaos: devcloud testguest
	@rc=0; $(PYTEST) -q -p no:cacheprovider tests/chaos/test_run.py && \
	$(PY) tests/chaos/run.py --cases $(CHAOS_CASES) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED)) \
	    $(if $(CHAOS_ONLY),--only $(CHAOS_ONLY)) $(if $(CHAOS_KINDS),--kinds $(CHAOS_KINDS)) \
	    $(if $(CHAOS_JOBS),--jobs $(CHAOS_JOBS)) || rc=$$?; \
	tools/testguest/testguest.sh down >/dev/null 2>&1 || true; \
	if pgrep -f "^[^ ]*qemu-system-x86_64" >/dev/null || pgrep -x libvirtd >/dev/null; then \
	    echo "chaos: qemu or libvirtd left running" >&2; rc=1; fi; \
	exit $$rc

# Freeze-window and fleet benchmarks (bench/RESULTS.md); needs the dev cloud.
bench: devcloud
	bench/run.sh

# cgsnap(1), generated from the CLI's parser (tests/unit/test_packaging.py checks
# that the committed page is current).
man: bootstrap
	$(PY) tools/manpage.py > doc/man/cgsnap.1

# The project venv's upper constraints, from a working .venv.
constraints: bootstrap
	@{ echo "# Upper constraints of the project venv: pip freeze of a working .venv (tools/bootstrap.sh"; \
	   echo "# and tox install with -c upper-constraints.txt).  Regenerate: make constraints"; \
	   $(VENV)/bin/pip freeze 2>/dev/null | grep -v -e '^-e' -e '@ file' -e '^cgsnap'; } > upper-constraints.txt

genconfig: bootstrap
	$(VENV)/bin/oslo-config-generator --config-file etc/cgsnap/cgsnap-config-generator.conf

# Every tier in turn; each prints how long it took, so a slow CI run shows where
# the time went.  The first failing tier stops the run.
TEST_TIERS := lint genconfig unit functional e2e fault-matrix functional-production \
	fault-matrix-production chaos
test: bootstrap
	@start=$$(date +%s); \
	for tier in $(TEST_TIERS); do \
	    t0=$$(date +%s); \
	    $(MAKE) --no-print-directory $$tier; rc=$$?; \
	    echo "make test: $$tier $$([ $$rc = 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - t0 ))s (total $$(( $$(date +%s) - start ))s)"; \
	    [ $$rc = 0 ] || exit $$rc; \
	done; \
	echo "make test: all tiers passed in $$(( $$(date +%s) - start ))s"

clean:
	rm -rf .state cgsnap.conf .pytest_cache
