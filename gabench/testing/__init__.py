"""Contract test suites for plug-ins: subclass one in your own test module and pytest runs it.

Each suite is a pytest-style base class whose ``test_*`` methods check what the plug-in base
class promises. Subclass it under a name starting with ``Test`` and implement its one factory
method::

    from gabench.testing import AggregatorContract

    class TestMyWeighting(AggregatorContract):
        def make_aggregator(self):
            return MyWeighting()

=========================  =====================================  ==============================
suite                      method to implement                    checks
=========================  =====================================  ==============================
:class:`TaskFamilyContract`  ``make_family(self) -> TaskFamily``    batch shapes and dtypes, seeded
                                                                    determinism, disjoint splits,
                                                                    model, loss and accuracy
:class:`AlgorithmContract`   ``make_algorithm(self) -> Algorithm``  directions against a per-task
                                                                    autograd loop, determinism
:class:`AggregatorContract`  ``make_aggregator(self) -> Aggregator`` weights: shape, finiteness,
                                                                    degenerate input, permutation
                                                                    equivariance, scale
=========================  =====================================  ==============================

The suites use no fixtures beyond pytest itself. This subpackage needs pytest (the ``test``
extra); ``import gabench`` never imports it. gabench's own tests run every suite over every
registered family, algorithm and aggregator (``tests/test_contracts.py``).
"""

from gabench.testing._aggregator import AggregatorContract
from gabench.testing._algorithm import AlgorithmContract
from gabench.testing._family import TaskFamilyContract

__all__ = ["AggregatorContract", "AlgorithmContract", "TaskFamilyContract"]
