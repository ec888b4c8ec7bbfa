"""deeplora: deep overparameterized low-rank learning and adaptation.

Compressed deep matrix completion and Deep LoRA adapters, after Yaras, Wang, Balzano, Qu,
"Compressible Dynamics in Deep Overparameterized Low-Rank Learning & Adaptation", ICML 2024.
"""

__version__ = "0.1.0"
