# make bench: the benchmark rig (tests/bench/), included by the top-level
# Makefile.  Uses $(BUILD) and $(PYTHON) from there.
#
#   make bench            the full matrix (about 20 minutes here): rig mode
#                         for stock virtio-blk-pci and virtio-blk-pfbd on null
#                         and file backends, vhost-user-blk-pci served by
#                         qemu-storage-daemon on the file, host fio, guest
#                         fio; writes
#                         $(BUILD)/bench/results.json, $(BUILD)/bench/iops.png
#                         and docs/benchmarks.md
#   make bench QUICK=1    a subset in under 3 minutes (no docs/ update)
#   make bench-rig        only build $(BUILD)/bench/pfbd-rig
#   make bench-ab BEFORE=path/to/qemu-system-x86_64
#                         virtio-blk-pfbd with two QEMU binaries, side by side
#   make bench-deps       install what the report needs (matplotlib, fio)
#
# BENCH_ARGS passes more options to tests/bench/bench.py (see --help).

BUILD ?= build
PYTHON ?= /usr/bin/python3
BENCH_CC ?= cc
BENCH_CFLAGS ?= -O2 -Wall

BENCH_RIG := $(BUILD)/bench/pfbd-rig

.PHONY: bench bench-rig bench-deps

$(BENCH_RIG): tests/bench/pfbd-rig.c
	@mkdir -p $(dir $@)
	$(BENCH_CC) $(BENCH_CFLAGS) -o $@ $<

bench-rig: $(BENCH_RIG)

# pfbd-load: libpfbd's engines without QEMU (make bench-pureflash), linked
# with the static library of the build and what its engines need
BENCH_LOAD := $(BUILD)/bench/pfbd-load
PFBD_LIBS := $(foreach l,uring rbd rados zookeeper_mt,$(if $(wildcard \
	/usr/lib/$(shell gcc -print-multiarch)/lib$(l).so),-l$(l)))

$(BENCH_LOAD): tests/bench/pfbd-load.c $(QB)/subprojects/libpfbd/libpfbd.a
	@mkdir -p $(dir $@)
	$(BENCH_CC) $(BENCH_CFLAGS) -Isubprojects/libpfbd -o $@ $< \
		$(QB)/subprojects/libpfbd/libpfbd.a $(PFBD_LIBS) -lpthread

# make bench-ab BEFORE=QEMU [AFTER=QEMU]: virtio-blk-pfbd in the rig with
# two QEMU binaries side by side, runs interleaved (tests/bench/ab.py), for
# a change made for speed or one that might cost it
.PHONY: bench-ab
bench-ab: build $(BENCH_RIG)
	$(PYTHON) tests/bench/ab.py --before $(BEFORE) \
		$(if $(AFTER),--after $(AFTER)) --rig $(BENCH_RIG) $(BENCH_ARGS)

# matplotlib draws the plot (bench.py goes on without it); fio is the host
# limit and runs in the guest.  Both from Debian's archive.
bench-deps:
	@$(PYTHON) -c 'import matplotlib' 2>/dev/null && command -v fio >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive \
		  apt-get install -y --no-install-recommends python3-matplotlib fio; }

# qemu-storage-daemon: the vhost-user-blk peer (not part of make build)
.PHONY: bench-qsd
bench-qsd: build
	$(NINJA) -C $(QB) storage-daemon/qemu-storage-daemon

bench: build guest bench-deps bench-qsd $(BENCH_RIG)
	BENCH_COMMAND='make bench$(if $(QUICK), QUICK=$(QUICK))$(if $(BENCH_ARGS), BENCH_ARGS="$(BENCH_ARGS)")' \
	$(PYTHON) tests/bench/bench.py --build $(BUILD) \
		$(if $(filter-out 0,$(QUICK)),--quick) $(BENCH_ARGS)

# make bench-rbd: the rbd engine vs stock QEMU rbd on a throwaway Ceph
# cluster (tests/bench/bench_rbd.py); writes $(BUILD)/bench/rbd.json,
# $(BUILD)/bench/rbd.md and the rbd section of docs/benchmarks.md
.PHONY: bench-rbd
bench-rbd: build bench-deps $(BENCH_RIG)
	BENCH_COMMAND='make bench-rbd$(if $(BENCH_ARGS), BENCH_ARGS="$(BENCH_ARGS)")' \
	$(PYTHON) tests/bench/bench_rbd.py --build $(BUILD) $(BENCH_ARGS)

# make bench-pureflash: the pureflash engine (in QEMU, and alone in
# pfbd-load) against PureFlash's own client on a PureFlash cluster that
# PFBD_PUREFLASH_CONDUCTOR names (tests/bench/bench_pureflash.py,
# docs/pureflash.rst); writes $(BUILD)/bench/pureflash.json, .md and the
# pureflash section of docs/benchmarks.md.  BENCH_ARGS=--double checks
# the script against the conformance double.
.PHONY: bench-pureflash
bench-pureflash: build bench-deps $(BENCH_RIG) $(BENCH_LOAD)
	BENCH_COMMAND='make bench-pureflash$(if $(BENCH_ARGS), BENCH_ARGS="$(BENCH_ARGS)")' \
	$(PYTHON) tests/bench/bench_pureflash.py --build $(BUILD) $(BENCH_ARGS)

# make bench-reset: what a device reset costs the host (a guest resetting
# in a loop), tests/bench/reset-cost.sh; prints it (docs/benchmarks.md has
# a run).  Needs root and perf.
.PHONY: bench-reset
bench-reset: build
	@command -v perf >/dev/null || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y \
		--no-install-recommends linux-perf; }
	bash tests/bench/reset-cost.sh $(BUILD)/qemu-build $(RESET_CYCLES)
