"""Contract test suites for plug-ins: subclass one in your own test module and pytest runs it.

Each suite is a pytest-style base class whose ``test_*`` methods check what the plug-in base
class promises. Subclass it under a name starting with ``Test`` and implement its one factory
method::

    from gabench.testing import AggregatorContract

    class TestMyWeighting(AggregatorContract):
        def make_aggregator(self):
            return MyWeighting()

- :class:`TaskFamilyContract`: implement ``make_family(self) -> TaskFamily``. Checks batch
  shapes and dtypes, seeded determinism, disjoint splits, the model, its loss and accuracy, and
  that the model works batched over tasks.
- :class:`AlgorithmContract`: implement ``make_algorithm(self) -> Algorithm``. Checks the step's
  shapes and constants, the inner loop against a per-task autograd loop, the batch's direction
  against its tasks stepped one at a time, evaluation and determinism.
- :class:`AggregatorContract`: implement ``make_aggregator(self) -> Aggregator``. Checks the
  weights' shape, dtype and device, finiteness on degenerate matrices, one task, permutation
  equivariance and scale invariance.

Each class docstring lists its checks in full. The suites use no fixtures beyond pytest itself.
This subpackage needs pytest (the ``test`` extra); ``import gabench`` never imports it.
gabench's own tests run every suite over every registered family, algorithm and aggregator
(``tests/test_contracts.py``).
"""

from gabench.testing._aggregator import AggregatorContract
from gabench.testing._algorithm import AlgorithmContract
from gabench.testing._family import TaskFamilyContract

__all__ = ["AggregatorContract", "AlgorithmContract", "TaskFamilyContract"]
