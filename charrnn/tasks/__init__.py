"""Tasks as plug-ins: what differs between a language model, a classifier and each task to come (see
base.py for the contract and registry.py for the names)."""
