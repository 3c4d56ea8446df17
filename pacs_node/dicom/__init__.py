"""Load a series into a volume and geometry; build the derived series.

Importing the package adds the node's JPEG decoder plugin to pydicom
(:func:`pacs_node.dicom.codecs.register`), so every decode in the node, the workers and
the lab reads the same transfer syntaxes.
"""

from pacs_node.dicom.codecs import register

register()
