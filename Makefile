# pfbd-qemu: top-level entry points.  See README.md.
#
#   make deps    install the Debian packages (scripts/install-deps.sh)
#   make         configure if needed and build build/qemu-system-x86_64
#                (checks the packages are there; installs nothing)
#   make run     the main job (make deps first): boot the test guest on a
#                pfbd volume and compare fio against stock virtio-blk-pci
#   make check   every test (make deps first): unit, qtest, sanitizers,
#                functional guest tests, the Debian package
#   make fuzz    build the libFuzzer targets and fuzz the device
#                (FUZZ_TIME seconds per target, default 600)
#   make install, make uninstall
#                the emulator as pfbd-qemu-system-x86_64, pfbd-stat and
#                the docs, under $(DESTDIR)$(PREFIX) (default /usr/local)
#   make deb     the Debian package pfbd-qemu, in build/deb
#   make series  the series a maintainer applies (patches/export/plan):
#                build/series/patches, every new file in its patch
#   make check-series-bisect
#                build every prefix of that series (by hand: slow)

BUILD ?= build
QB := $(BUILD)/qemu-build
NINJA ?= ninja
PYTHON ?= /usr/bin/python3
PYTEST ?= $(PYTHON) -m pytest

# Files whose change needs ./configure again.  Our source files are
# symlinked into the tree, so ninja sees an edit by itself; configure runs
# again only when the list of them changes ($(OVERLAY_LIST)).
OVERLAY := $(shell bash scripts/overlay-files.sh)
OVERLAY_LIST := $(BUILD)/.overlay-files
CONFIG_INPUTS := configure patches/series $(wildcard patches/*.patch)

# ccache: share compilations between checkouts (CI builds a fresh clone
# in another folder): paths under the checkout are hashed relative to it,
# and the working directory is left out of the hash.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1

NINJA_TARGETS := qemu-system-x86_64 tests/unit/test-pfbd \
	tests/unit/test-pfbd-pureflash tests/qtest/virtio-blk-pfbd-test \
	tests/qtest/qos-test qemu-img

# The ASan + UBSan build of `make check-sanitizers`: the device's own
# qtest and the unit tests (upstream's qos-test stays in the plain build,
# which keeps this second build short)
ASAN_BUILD ?= $(BUILD)/asan
ASAN_NINJA_TARGETS := qemu-system-x86_64 tests/unit/test-pfbd \
	tests/unit/test-pfbd-pureflash tests/qtest/virtio-blk-pfbd-test
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	LSAN_OPTIONS=suppressions=$(abspath tests/lsan-suppressions.txt):print_suppressions=0

# The clang + libFuzzer + ASan + UBSan build of `make fuzz`
FUZZ_BUILD ?= $(BUILD)/fuzz
FUZZ_TIME ?= 600

PREFIX ?= /usr/local

.PHONY: all build deps config run check FORCE check-unit check-qtest \
	check-sanitizers check-functional fuzz guest clean distclean \
	install uninstall deb check-deb series check-series check-series-bisect

all: build

# make deps installs the Debian packages (and apt sources) the build and
# the tests need; make run, make check and make fuzz call it.  A plain
# make only checks that they are there.
deps:
	bash scripts/install-deps.sh
	@mkdir -p $(BUILD) && touch $(BUILD)/.deps-checked

$(BUILD)/.deps-checked: scripts/install-deps.sh
	@mkdir -p $(BUILD)
	bash scripts/install-deps.sh --check
	@touch $@

# Rewritten only when the list changes, so that its date tells
$(OVERLAY_LIST): FORCE
	@mkdir -p $(BUILD)
	@printf '%s\n' $(OVERLAY) >$@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv $@.new $@; fi

FORCE:

$(BUILD)/.configured: $(CONFIG_INPUTS) $(OVERLAY_LIST) | $(BUILD)/.deps-checked
	./configure --build-dir=$(BUILD) $(CONFIGURE_FLAGS)
	@touch $@

# (not "configure": that is the script, a prerequisite of .configured)
config: $(BUILD)/.configured

build: $(BUILD)/.configured
	$(NINJA) -C $(QB) $(NINJA_TARGETS)

guest: | $(BUILD)/.deps-checked
	bash tests/guest/build-guest.sh $(BUILD)/guest

run: deps
	$(MAKE) build guest
	$(PYTHON) tests/bench/guest-fio.py

# The rbd engine's cases need a Ceph cluster: with-ceph.sh starts one
WITH_CEPH = bash tests/ceph/with-ceph.sh

# The pureflash engine's cases need a PureFlash cluster: with-pfdouble.sh
# starts the project's conformance double (or uses the cluster that
# PFBD_PUREFLASH_CONDUCTOR names)
WITH_PFDOUBLE = bash tests/pureflash/with-pfdouble.sh

check-unit: build
	$(WITH_CEPH) $(QB)/tests/unit/test-pfbd --tap -k
	$(WITH_PFDOUBLE) $(QB)/tests/unit/test-pfbd-pureflash --tap -k
	$(PYTEST) -q tests/pureflash/test_pfdouble.py

# The device's qtests are meson tests of the suite qtest-pfbd (patches/0003):
# virtio-blk-pfbd-test and upstream's virtio-blk tests on its libqos node
MESON_TEST = $(1)/pyvenv/bin/meson test -C $(1) --no-rebuild --verbose \
	--print-errorlogs
# meson takes a test that ran nothing (TAP "1..0") for skipped, not failed
MESON_NO_SKIP = ! grep '"result": "SKIP"' $(1)/meson-logs/testlog.json || \
	{ echo "make: a test ran nothing (skipped): failed"; exit 1; }

check-qtest: build
	$(call MESON_TEST,$(QB)) --suite qtest-pfbd
	@$(call MESON_NO_SKIP,$(QB))

# A second build with ASan and UBSan; runs the unit tests and the qtests.
check-sanitizers: | $(BUILD)/.deps-checked
	./configure --build-dir=$(ASAN_BUILD) --enable-sanitizers \
		$(CONFIGURE_FLAGS)
	$(NINJA) -C $(ASAN_BUILD)/qemu-build $(ASAN_NINJA_TARGETS)
	$(ASAN_ENV) $(WITH_CEPH) $(ASAN_BUILD)/qemu-build/tests/unit/test-pfbd \
		--tap -k
	$(ASAN_ENV) $(WITH_PFDOUBLE) \
		$(ASAN_BUILD)/qemu-build/tests/unit/test-pfbd-pureflash --tap -k
	$(ASAN_ENV) $(call MESON_TEST,$(ASAN_BUILD)/qemu-build) \
		--timeout-multiplier 3 qtest-x86_64/virtio-blk-pfbd-test
	@$(call MESON_NO_SKIP,$(ASAN_BUILD)/qemu-build)

fuzz:
	bash scripts/install-deps.sh --fuzz
	./configure --build-dir=$(FUZZ_BUILD) --enable-fuzzing $(CONFIGURE_FLAGS)
	$(NINJA) -C $(FUZZ_BUILD)/qemu-build qemu-fuzz-x86_64
	bash tests/fuzz/run-fuzz.sh $(FUZZ_BUILD)/qemu-build $(FUZZ_TIME)

# (the rig and qemu-storage-daemon: tests/functional/test_bench_rig.py)
check-functional: build guest bench-rig bench-qsd
	PFBD_QEMU=$(abspath $(BUILD)/qemu-system-x86_64) \
		$(PYTEST) -v -rs tests/functional

install: build
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' bash scripts/install.sh install $(QB)

uninstall:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' bash scripts/install.sh uninstall $(QB)

# The Debian source package pfbd-qemu (QEMU's tarball as the orig, the
# exported series as debian/patches) and its binary package, built in a
# fresh root with only the Build-Depends and no network
# (scripts/build-deb.sh), into $(BUILD)/deb; lintian must find no error.
# Building it applies the series to pristine upstream and builds it.
DEB_VERSION = $(shell dpkg-parsechangelog -S Version | sed 's/^[0-9]*://')

deb: series
	bash scripts/build-deb.sh $(SERIES_DSC) $(SERIES)/patches $(BUILD)/deb
	lintian --fail-on error \
		$(BUILD)/deb/pfbd-qemu_$(DEB_VERSION).dsc \
		$(BUILD)/deb/pfbd-qemu_$(DEB_VERSION)_amd64.changes

# The package installed with apt-get into a fresh Debian root (mmdebstrap)
check-deb: deb
	bash tests/deb/test-deb.sh $(firstword $(wildcard $(BUILD)/deb/pfbd-qemu_*.deb))

# The exported series: patches/ and the overlay as one git format-patch
# series against the unpacked upstream tree (scripts/export-series.sh),
# made from the Debian source package that configure unpacks
SERIES := $(BUILD)/series
SERIES_DSC = $(lastword $(sort $(wildcard build/dl/qemu_10.0.*.dsc)))

series: $(BUILD)/.configured
	@test -n "$(SERIES_DSC)" || { echo "make series: no QEMU source package in build/dl"; exit 1; }
	bash scripts/export-series.sh $(SERIES_DSC) $(SERIES)

# It applies with git am to a freshly unpacked tree (with Debian's
# patches), and that tree builds with the options of make build (ccache
# makes this second build cheap).  make check builds the series in the
# Debian package instead (make deb), on QEMU's own tarball.
check-series: series
	./configure --build-dir=$(SERIES) --exported-series=$(SERIES)/patches \
		$(CONFIGURE_FLAGS)
	$(NINJA) -C $(SERIES)/qemu-build $(NINJA_TARGETS)

# Every prefix of it builds: each patch in turn, an incremental build
check-series-bisect: series
	bash scripts/series-bisect.sh $(SERIES)

check: deps
	$(MAKE) check-unit check-qtest check-sanitizers check-functional \
		check-deb

# make bench: the benchmark rig (tests/bench/)
-include tests/bench/bench.mk

# make image: the bootable Debian image (tests/image/, docs/images.rst)
-include tests/image/image.mk
check-image: build guest

clean:
	if [ -d $(QB) ]; then $(NINJA) -C $(QB) clean; fi

distclean:
	rm -rf $(BUILD)
