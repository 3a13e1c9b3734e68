"""Benchmarks of the trainer: what feedback buys (learning, efficiency), what it costs per step
(cost, cosine) and how long a person waits (latency).

``python -m bench`` runs them and writes ``bench/results/<name>.json``; ``python -m bench.report``
renders every results file as markdown tables. Everything goes through the trainer's own code paths
(``Trainer.fit``, ``Trainer.train_step``, ``Trainer.build_queue``, the mask-file protocol), so what
is measured is what a run does.
"""
