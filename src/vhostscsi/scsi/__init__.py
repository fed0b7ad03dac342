"""Transport-independent SCSI target core (sans-I/O): CDBs in, LIO's answers out.

Public API (see docs/CONTRACTS.md): Device, TargetPort, ScsiResult, Status.

Where things live, and why they are split so:
  port.py     TargetPort.execute: LUN lookup, write protection, the 256-entry opcode table,
              and `gate` (unit attention, reservations) in target_core_transport.c's order
  device.py   Device: identity, capacity, caching mode, the COMPARE AND WRITE lock
  sbc.py      block commands (READ/WRITE are the data path: no copies, shared results)
  spc.py      INQUIRY, MODE SENSE/SELECT, REQUEST SENSE, REPORT LUNS, MAINTENANCE IN
  inquiry.py  standard INQUIRY and VPD pages (the disk's lasting identity)
  mode.py     mode pages and parameter headers
  pr.py       SPC-2 RESERVE/RELEASE and persistent reservations
  ua.py       unit attention queues
  rsoc.py     REPORT SUPPORTED OPERATION CODES (LIO >= 6.3, attribute emulate_rsoc)
  sense.py    LIO's sense answers; result.py the result type; buffers.py/common.py helpers
Behaviour is checked byte for byte against real LIO 6.1 by tests/conformance.
"""

from vhostscsi.scsi.device import Device
from vhostscsi.scsi.port import LunEntry, TargetPort
from vhostscsi.scsi.result import ScsiResult, Status

Lun = LunEntry

__all__ = ["Device", "Lun", "LunEntry", "ScsiResult", "Status", "TargetPort"]
