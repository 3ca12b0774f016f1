r"""Local learning coefficient (LLC) estimation with stochastic-gradient Langevin dynamics.

The estimator of Lau et al. (2023), "Quantifying degeneracy in singular models via the learning
coefficient", arXiv:2308.12108, as used at scale by Furman & Lau (2024), "Estimating the local
learning coefficient at scale", arXiv:2402.03698. Symbols and the names they have in code:

=====================  ===============  ==========================================================
symbol                 code             meaning
=====================  ===============  ==========================================================
:math:`w^*`            ``model``        the parameter whose LLC is measured (the model as given)
:math:`n`              ``n``            number of training samples
:math:`m`              ``batch_size``   minibatch size
:math:`L_n(w)`         ``loss_fn``      mean training loss over the n samples
:math:`n\beta`         ``nbeta``        inverse temperature times n; default :math:`n/\log n`
:math:`\gamma`         ``gamma``        strength of the localizing Gaussian around :math:`w^*`
:math:`\epsilon`       ``epsilon``      SGLD step size
=====================  ===============  ==========================================================

The localized, tempered posterior is

.. math::  p(w) \propto \exp\bigl(-n\beta\,L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2\bigr),

sampled with SGLD (Welling & Teh, 2011) on minibatch losses :math:`L_m`:

.. math::  \Delta w = -\tfrac{\epsilon}{2}\bigl(n\beta\,\nabla L_m(w) + \gamma (w - w^*)\bigr)
           + \mathcal N(0, \epsilon I),

or, with a diagonal preconditioner :math:`P` (``preconditioner``; Li et al. 2016, "Preconditioned
stochastic gradient Langevin dynamics for deep neural networks", AAAI, without their
:math:`\Gamma` correction term, which vanishes for a constant :math:`P`),

.. math::  \Delta w = -\tfrac{\epsilon}{2}P\bigl(n\beta\,\nabla L_m(w) + \gamma (w - w^*)\bigr)
           + \mathcal N(0, \epsilon P),

which samples the same posterior for any constant :math:`P > 0`. A preconditioner that matches a
reparametrisation :math:`w \mapsto Aw` (:math:`P = A^2`) makes the chain in the new coordinates the
image of the chain in the old ones, so :math:`\hat\lambda` inherits the invariance of the LLC.

and the LLC estimate is the WBIC-style expectation (Watanabe, 2013)

.. math::  \hat\lambda(w^*) = n\beta\,\bigl(\mathbb E_{p}[L_n(w)] - L_n(w^*)\bigr).

As in the paper's reference code, :math:`\mathbb E_p[L_n(w)]` is by default the mean of the
minibatch losses seen along the chains, and :math:`L_n(w^*)` is computed once on the full data.

Design. All chains are one batched computation: the parameters of C chains are a (C, d) tensor,
one forward pass batched over chains (``torch.func.vmap``, or one ``bmm`` per layer for chains of
``nn.Linear`` layers) gives every chain's loss, and one backward pass every chain's gradient. A
single chain is exactly a training step on the model's own parameters. Each chain owns a
``torch.Generator`` seeded from ``numpy.random.SeedSequence(seed)``, used for its minibatch indices
and its noise, so a chain's path does not depend on how many chains run beside it: the vectorized
and the chain-by-chain runs (``chain_batch_size``) agree, and the same seed gives the same result.
The hot loop never copies to the host except every ``check_every`` steps for divergence checks.
The package depends on torch and numpy only; ``tqdm`` is imported only when a progress bar is
asked for.

Modules, each importing only those above it:

=======================  ======================================================================
``checks``               argument checks (ValueError naming the argument and its range)
``diagnostics``          λ̂ from losses, by quarter, split-R̂, ESS (numpy only)
``update``               the SGLD step, the ``SGLD`` optimizer, the preconditioners P
``source``               the n samples behind one interface
``restrict``             which parameter tensors to sample (the restricted, weight-refined LLC)
``potential``            nβ, and the model as a function of a flat parameter vector, batched over chains
``start``                the checks at w* before any step, and L_n(w*)
``mala``                 the Metropolis–Hastings ratio: acceptance of SGLD's steps, full-batch MALA
``chains``               C chains advanced in stretches, with divergence checks
``stopping``             the stopping rule of ``num_steps="auto"``: constants, verdict, round loop
``geometry``             curvature, Hessian trace and gradient noise at w*
``calibration_phases``   the phases of the step-size calibration over one explicit state
``calibration``          ``calibrate_epsilon``
``result``               ``LLCResult`` and its assembly
``estimate``             ``estimate_llc``, ``mala_estimate_llc``
=======================  ======================================================================
"""

from sgld.calibration import calibrate_epsilon
from sgld.diagnostics import ess, llc_from_losses, rhat
from sgld.estimate import estimate_llc, mala_estimate_llc
from sgld.potential import default_nbeta
from sgld.result import LLCResult
from sgld.update import SGLD, RMSPropPreconditioner, sgld_update_

__all__ = [
    "LLCResult",
    "RMSPropPreconditioner",
    "SGLD",
    "calibrate_epsilon",
    "default_nbeta",
    "ess",
    "estimate_llc",
    "llc_from_losses",
    "mala_estimate_llc",
    "rhat",
    "sgld_update_",
]
