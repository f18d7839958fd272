"""``python -m autoplastic [options]``: ``morpho autoplastic [options]``."""

import sys

from morphonet.autoplastic.cli import add_autoplastic_parser
from morphonet.commands import standalone

if __name__ == "__main__":
    sys.exit(standalone(add_autoplastic_parser, ["autoplastic", *sys.argv[1:]]))
