"""`python -m rgbd_portrait.train CONFIG.yaml [key=value ...]`, the same as `rgbd-portrait train`.

A module entry, so that `accelerate launch [options] -m rgbd_portrait.train ...` starts one per process.
"""

import sys

from rgbd_portrait.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
