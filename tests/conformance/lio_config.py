"""The LIO capture's setup as our own saved configuration (saveconfig.json), for both engines."""

from __future__ import annotations

from pathlib import Path

from conformance.lio_setup import INITIATOR_WWN, LUNS, TARGET_WWN, TPG_TAG, initial_content
from conformance.replay import DATA, load_capture
from vhostscsi.config.attributes import WRITABLE
from vhostscsi.config.model import Config, Lun, StorageObject, Target, Tpg
from vhostscsi.config.store import save_config


def write_config(path: Path, work: Path, dev_dir: str | None = None) -> None:
    """The capture's setup as our saved configuration, attributes as LIO showed them.

    The disk images go to ``work``; ``dev_dir`` is where the configuration says they are, when
    they will be copied elsewhere (into a guest) before use."""
    capture = {lun["lun"]: lun for lun in load_capture(DATA)["luns"]}
    sos, luns = [], []
    for lun in LUNS:
        img = work / f"{lun.name}.img"
        img.write_bytes(initial_content(lun.name, lun.size))
        attrs = {k: v for k, v in capture[lun.lun]["attributes"].items() if k in WRITABLE and isinstance(v, int)}
        if lun.plugin != "fileio":
            attrs = {}  # only present for REPORT LUNS; none of its own cases run here
        dev = f"{dev_dir}/{img.name}" if dev_dir else str(img)
        so = StorageObject(plugin="fileio", name=lun.name, wwn=lun.serial, dev=dev, size=lun.size,
                           write_back=True, attributes=attrs)
        sos.append(so)
        luns.append(Lun(index=lun.lun, storage_object=so.path, write_protect=lun.write_protect))
    tpg = Tpg(tag=TPG_TAG, nexus_wwn=INITIATOR_WWN, luns=luns, attributes={"fabric_prot_type": 0})
    save_config(Config(storage_objects=sos, targets=[Target(wwn=TARGET_WWN, fabric="vhost", tpgs=[tpg])]), path)
