"""The run harness that the benchmarks (:mod:`deeplora.bench`) and the paper's experiments
(:mod:`deeplora.experiments`) share: machine facts, timing and peak memory
(:mod:`~deeplora.harness.machine`), and the few-shot study with its resumable run log
(:mod:`~deeplora.harness.fewshot`, :mod:`~deeplora.harness.fewshot_report`)."""
