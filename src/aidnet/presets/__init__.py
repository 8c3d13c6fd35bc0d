"""The shipped presets (one YAML file each) and the one a command uses when given none."""

#: the preset names, each ``<name>.yaml`` in this folder
PRESETS = ("tiny", "demo", "paper", "full")
#: the CPU try-out: what every command uses without ``--preset``
DEFAULT_PRESET = "demo"
