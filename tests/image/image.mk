# make image: the bootable Debian bookworm image (tests/image/), included by
# the top-level Makefile.  Uses $(BUILD) from there.
#
#   make image            build $(BUILD)/image/debian-bookworm.raw (as root;
#                         about 1.5-4 minutes the first time, nothing when
#                         its stamp is current; see docs/images.rst)
#   make image-rebuild    build it again even if the stamp is current
#   make check-image      boot it from virtio-blk-pfbd (SeaBIOS, bootindex=1),
#                         fio verify on a second volume, reboot in the guest
#                         (tests/functional/test_boot_image.py; also part of
#                         check-functional)
#
# build-image.sh itself decides whether anything is to do (stamp = hash of
# tests/image/build-image.sh, pfbd-autorun.sh, pfbd-autorun.service), so the
# target is phony.

BUILD ?= build
PYTHON ?= /usr/bin/python3
PYTEST ?= $(PYTHON) -m pytest
IMAGE_DIR := $(BUILD)/image

.PHONY: image image-rebuild check-image

image:
	bash tests/image/build-image.sh $(IMAGE_DIR)

image-rebuild:
	PFBD_IMAGE_REBUILD=1 bash tests/image/build-image.sh $(IMAGE_DIR)

check-image: image
	PFBD_QEMU=$(abspath $(BUILD)/qemu-system-x86_64) \
		PFBD_IMAGE_DIR=$(abspath $(IMAGE_DIR)) \
		$(PYTEST) -v -rs tests/functional/test_boot_image.py
