"""Our commands print exactly what the seed shows, and the expectations are the seed's own text."""

from __future__ import annotations

import pytest

from vhostscsi.integrations.cli import run

from .seed_text import (
    SEED_CCW_ARGS,
    SEED_HOSTDEV,
    SEED_HOSTDEV_CCW,
    SEED_HOSTDEV_PCI,
    SEED_PCI_ARGS,
    SEED_WWN,
    seed_document,
)


@pytest.mark.parametrize("text", [SEED_PCI_ARGS, SEED_CCW_ARGS, SEED_HOSTDEV, SEED_HOSTDEV_PCI,
                                  SEED_HOSTDEV_CCW])
def test_expectations_are_verbatim_in_seed(text: str) -> None:
    doc = seed_document()
    if doc is None:
        pytest.skip("seed document (shared/seed/vhost-scsi-target.txt) not beside the repository")
    assert text in doc


def test_pci_args_match_seed() -> None:
    out = run(["qemu-args", SEED_WWN, "--no-check", "--bus", "pci.0", "--addr", "0x5"])
    assert out == SEED_PCI_ARGS


def test_ccw_args_match_seed() -> None:
    out = run(["qemu-args", SEED_WWN, "--no-check", "--ccw", "--devno", "fe.0.1000"])
    assert out == SEED_CCW_ARGS


def test_hostdev_matches_seed() -> None:
    assert run(["libvirt-xml", SEED_WWN, "--no-check"]) == SEED_HOSTDEV


def test_hostdev_pci_matches_seed() -> None:
    out = run(["libvirt-xml", SEED_WWN, "--no-check", "--bus", "pci.0", "--addr", "0x5"])
    assert out == SEED_HOSTDEV_PCI


def test_hostdev_ccw_matches_seed() -> None:
    out = run(["libvirt-xml", SEED_WWN, "--no-check", "--ccw", "--devno", "fe.0.1000"])
    assert out == SEED_HOSTDEV_CCW


def test_upper_case_wwn_is_printed_canonical() -> None:
    out = run(["qemu-args", SEED_WWN.upper().replace("NAA", "naa"), "--no-check",
               "--bus", "pci.0", "--addr", "0x5"])
    assert out == SEED_PCI_ARGS
