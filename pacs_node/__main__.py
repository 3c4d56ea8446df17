"""``python -m pacs_node``: the ``pacs-node`` command (how the node starts its receiver
processes, whatever the installation put on PATH)."""

from pacs_node.cli import main

main()
