# driftline: the two commands are `make run` and `make test` (see README.md).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# test files run in this many pytest-xdist workers, each file whole in one (its module fixtures,
# clusters and ports stay together), handed out in collection order (--no-loadscope-reorder;
# tests/conftest.py puts the longest files first): the fault-tolerance file, ~8 min of paced
# replays and restarts that need little CPU, holds one worker from the start while two keep
# both cores busy with the rest (1.93 of 2 cores on average, 729.5 s; with xdist's default
# reorder it ran alone at the end: 925 s; README, Timings). 0: serial
TEST_WORKERS ?= 3
# the JVMs the tests start (each job's gateway and mini-cluster, the standalone clusters) compile
# with C1 only: the suite's jobs are seconds of data behind ~20 s of start-up, where C2's
# compiling is mostly waste (a 4k-event job: 43.6 -> 27.6 CPU-s; the suite: ~2,000 -> 1,509
# CPU-s, 1135 -> 942 s; README, Timings). Jobs outside the tests keep the JVM's default
# (tiered up to C2): a long stream needs the optimized code. Empty: the default here too
TEST_JVM_OPTS ?= -XX:TieredStopAtLevel=1
# 1: the local jobs' JVM maps a class-data-sharing archive made from the first job's classes
# (runners/cds.py: ~12-16 % less CPU per small job). Off: three suite runs with it against three
# without showed no gain (cold archive 796.7 vs 791.8 s; warm 601.3 / 579.6 vs 599.0 / 567.7 s;
# README, Timings), and it leaves a ~120 MB archive and a background dump behind
TEST_JVM_CDS ?= 0

.PHONY: run test venv lock clean

venv:
	@tools/bootstrap.sh

## run: the full loop on embedded defaults: seeded generator -> Flink mini-cluster job -> scheduled TFX
##      retrains every 2h of event time -> base-model swaps -> summary
run: venv
	$(VENV)/bin/driftline run --out runs/local --retrain-every 2h --eval-hours 0.5

## test: the whole test suite; pytest's "no tests collected" (exit 5) counts as a failure
test: venv
	@rc=0; JDK_JAVA_OPTIONS="$${JDK_JAVA_OPTIONS:-} $(TEST_JVM_OPTS)" DRIFTLINE_JVM_CDS=$(TEST_JVM_CDS) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

## lock: regenerate constraints.txt from the venv with every extra installed (tools/lock.py)
lock: venv
	$(PY) tools/lock.py

clean:
	rm -rf runs .pytest_cache
