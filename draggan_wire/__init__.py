"""The DragGAN wire: the protocol definition, the client and the relay bridge.

Standard library plus pyzmq only (pyzmq imported lazily), because GIMP's Python imports this
package: install.py stages this folder as it is into the plug-in (``draggan/draggan_wire/``; linked
to the repository by ``install.py --dev``), and the backend imports the same modules from the
repository. It imports nothing else of the project.

- ``protocol``      the one definition of messages, encoding and checks (standard library only)
- ``client``        connect, handshake, edit with progress, cancel, continue (pyzmq)
- ``relay_bridge``  a DEALER socket driven over stdin/stdout, for a GIMP whose Python has no pyzmq
"""

import os as _os
import sys as _sys

# When GIMP's own Python has no pyzmq, install.py unpacks a matching wheel into the plug-in's
# vendor/ folder, beside this package. Appended (not prepended) so that a pyzmq that GIMP's Python
# already has always wins. In the repository there is no such folder and this does nothing.
_VENDOR = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "vendor")
if _os.path.isdir(_VENDOR) and _VENDOR not in _sys.path:
    _sys.path.append(_VENDOR)

__all__ = ["protocol", "client", "relay_bridge"]
