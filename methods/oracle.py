"""The oracle: ERM on data whose spurious signal is removed, the reference of each protocol."""

from __future__ import annotations

from invbench.methods.erm import ERM
from invbench.registry import METHODS


@METHODS.register("oracle")
class Oracle(ERM):
    """Oracle: ERM trained and selected on the dataset's oracle data (its spurious signal removed).

    Not a method one could deploy: it is told which signal is spurious. Each dataset says what
    its oracle data is (``invbench list datasets``; invbench.data.DatasetFamily.build_oracle):
    - the linear unit tests (Aubin et al. 2021, the "Oracle" column): training and validation
      samples drawn like the test split, the spurious block shuffled across rows;
    - Colored MNIST (Arjovsky et al. 2019, the "grayscale" row): colour made constant, so the
      channel sum (the IRM paper's colour-blind model, ``mlp_grayscale``, under its protocol
      with the code's tuned values and 100 steps) is the grey image;
    - the linear SEMs: the effects z shuffled across rows, so only the causes predict.
    The test data are the usual ones. Objective: ERM's, (1/E) sum_e R_e on the oracle data.
    """

    hparams = {}
    trains_on_oracle_data = True
