"""The ``swarmbus`` command line. ``main.py`` parses; each command lives in its own module and
is imported only when it runs, so ``swarmbus send`` never imports the daemon's machinery."""
