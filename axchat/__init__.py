"""axchat: a small-language-model chat daemon and its frontends."""

__version__ = "0.1.0"
