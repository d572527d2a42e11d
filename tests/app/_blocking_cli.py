"""``python _blocking_cli.py ARGS``: the command line, with the training epochs of one stage blocked (a test
helper for interrupts). ADDERCONVERT_BLOCK names the stage ("CNN" or "adder"); ADDERCONVERT_READY is a file
written when its first epoch starts, after which the process sleeps until it is signalled."""

import os
import signal
import sys
import time
from pathlib import Path

import adderconvert.train.loop as loop
from adderconvert.app.cli import main

_train_one_epoch = loop.train_one_epoch


def _blocked(*args, **kwargs):
    config = args[4]
    if config.desc == os.environ["ADDERCONVERT_BLOCK"]:
        Path(os.environ["ADDERCONVERT_READY"]).write_text("ready")
        time.sleep(300)
    return _train_one_epoch(*args, **kwargs)


loop.train_one_epoch = _blocked  # fit() looks it up in the module when it runs
# Under a shell's background job SIGINT arrives ignored, and Python then keeps it so; a terminal's Ctrl-C
# reaches the CLI with Python's own handler, which this restores.
signal.signal(signal.SIGINT, signal.default_int_handler)

if __name__ == "__main__":
    main(sys.argv[1:], prog_name="adderconvert")
