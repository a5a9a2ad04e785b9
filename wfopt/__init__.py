"""wfopt: teach a language model to write agentic workflows."""

__version__ = "0.1.0"
