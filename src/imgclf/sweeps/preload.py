"""The fork server's first preload: keep TensorFlow's start-up noise off the console there too.

:func:`imgclf.sweeps.isolate.call_in_child` starts a fork server that imports the preload
modules once, in a fresh interpreter that has none of the parent's import hooks; importing this
module first installs :func:`imgclf.console.quiet_startup`'s (the fork server's only reason to
import it), so the ``tensorflow`` preload that follows is as quiet as in the parent.
"""

from imgclf.console import quiet_startup

quiet_startup()
