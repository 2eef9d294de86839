"""``python -m hirm.world`` is an alias of ``python -m hirm.world.build``."""

from .build import main

main()
