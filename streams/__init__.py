"""The Faust app, topics, tables and settings; the ``herald`` command line."""
