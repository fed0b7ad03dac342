"""Transport-independent SCSI target core (sans-I/O): CDBs in, LIO's answers out.

Public API (see docs/CONTRACTS.md): Device, TargetPort, ScsiResult, Status.
"""

from vhostscsi.scsi.device import Device
from vhostscsi.scsi.port import LunEntry, TargetPort
from vhostscsi.scsi.result import ScsiResult, Status

Lun = LunEntry

__all__ = ["Device", "Lun", "LunEntry", "ScsiResult", "Status", "TargetPort"]
