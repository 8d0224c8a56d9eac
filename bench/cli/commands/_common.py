"""What every command module shares: click's context settings (``-h`` as well as ``--help``)."""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
