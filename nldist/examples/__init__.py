"""Example model factories for ``torch:<module.path>:<factory>`` specs (see nldist.nets)."""
