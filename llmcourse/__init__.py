"""llmcourse: the GPT-style language model you build in *Build a Large Language Model from Scratch*.

One module per component, in chapter order; a lower chapter never imports a higher one.
"""

__version__ = "0.1.0"
