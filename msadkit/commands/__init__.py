"""One module per ``msadkit`` sub-command, each with ``add_parser(sub)`` and ``run(args) -> int``.

The command line discovers the modules of this package, so a new command is a new file here.
Modules import heavy dependencies inside ``run`` to keep ``msadkit --help`` fast.
"""
