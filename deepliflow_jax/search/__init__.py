"""The compression tools: the most accurate compressed DeepLiDARFlow under a budget.

Given a budget on the device it runs on (a latency in ms, a size on disk in MB, a
speed-up factor, or "as fast as" a named reference plan), find per *layer group*
(:data:`.plans.LAYER_GROUPS`: the RGB and the sparse-depth feature pyramids, the fusion
module, the fused features of both frames, each scene-flow estimator level, the
context network) a channel-pruning ratio and, for size budgets, a weight bit width
and an unstructured sparsity, such that the model meets the budget with the lowest
validation EPE. Method:

1. **Sensitivity** (:func:`.sensitivity.measure_sensitivity`): the validation EPE change when one
   group alone is channel-pruned at each ratio (L1 rank, counts rounded to
   multiples of 8, ``compress.structured.plan_pruning``; evaluated as the masked full
   model, which equals the smaller model exactly), its weights and biases
   fake-quantized to each bit width (per tensor, symmetric: the trainer's
   quantizer), or magnitude-pruned to each percentile (one threshold over the
   group). One compiled forward (channel masks are arguments) evaluates them all.
   Cached per checkpoint: a JSON keyed by the sha256 of the parameters and of the
   validation frames, written atomically after every option (an interrupted run
   resumes where it stopped).
2. **Cost** (:func:`.costs.measure_costs`): every block of the forward
   (:func:`deepliflow_jax.profile.blocks.block_calls`) compiled apart and timed with
   the one timer (:func:`~deepliflow_jax.profile.timer.time_interleaved`, all blocks
   and whole models in the same rounds); the saving of (group, ratio) is the sum,
   over the blocks whose shapes change when only that group is pruned, of dense
   minus pruned block time (XLA FLOPs beside). A plan's predicted latency is the
   whole dense forward's measured time minus, per block, the block's time times one
   minus the product of the fractions its groups leave (:func:`.costs.predicted_latency`;
   for one group, its saving).
   Size on disk (:class:`.size.SizeModel`): the bytes ``save_checkpoint`` stores per
   parameter (float32, or ``compress.export`` codes, sparse where that is smaller),
   computed exactly from the plan's shapes, times a compression factor per bit
   width measured by saving the dense model. Bits and sparsity do not change the
   float forward's time (fake-quantized and zeroed weights run the same program),
   so latency budgets search channel ratios only.
3. **Search** (:func:`.solver.solve`,
   :func:`.solver.search_candidates`): a multiple-choice
   knapsack: one option per group, minimising the predicted EPE change (the sum of
   the options' sensitivities) subject to the summed per-group savings reaching what
   the budget needs; solved exactly by dynamic programming over savings discretised
   to ``1/resolution`` of the need and rounded down. Every plan it returns is then
   checked with the exact (non-additive) latency or size model, and the need raised
   past that plan's summed saving if it misses. It is solved at the budget tightened
   by each margin (0, 5, 10 %) for a few distinct plans that hedge the model's error.
4. **Fine-tuning and measurement** (:func:`.run.run_search`): every candidate and every
   reference plan (uniform ratios, the trade-off tool's hand-written hybrids) is
   fine-tuned for the same steps with the one trainer (channel-masked: one compiled
   step for all), shrunk, saved with ``save_checkpoint`` (packed codes when it has
   bits or sparsity), loaded back and measured for real: EPE on the validation set
   through the forward ``predict_sceneflow`` uses, latency interleaved with every
   other model, size on disk. The chosen model is the candidate of lowest measured
   EPE whose *measured* cost meets the budget; it is saved where the caller asks.

The run times the costs (2) before the sensitivities (1): the budget is resolved
into its one figure there (:meth:`.budget.Budget.figure`: a speed-up or a reference's
time from the cost rounds; every later check, print and report uses it), and a budget
out of reach of the search space stops the run at once
(:func:`.solver.check_reachable`), naming the reachable range and the nearest feasible
budget. The result's ``verdict`` says in words when a reference plan is more accurate
than the chosen model, by how much, and whether it dominates it.

The validation frames select the plan and report its EPE (the synthetic world has
no separate test split), so the comparison with hand-written plans is optimistic
for the searched ones by the same token that those plans were tuned on it.

The structured trade-off (:func:`.tradeoff.run_tradeoff`, ``structured_tradeoff``)
measures uniform ratios and hand-written plans, float and int8, with the same
fine-tuning (:mod:`.finetune`), measurement (:mod:`.measure`) and reports
(:mod:`.report`).

Modules, one concern each (imports point down this list): :mod:`.plans` (layer
groups, plans), :mod:`.budget`, :mod:`.size` (the size model, sizes on disk),
:mod:`.sensitivity`, :mod:`.costs` (block timings, predicted latency),
:mod:`.solver` (the knapsack, candidates), :mod:`.config`, :mod:`.finetune`,
:mod:`.measure` (whole models: EPE, FLOPs, latency), :mod:`.data`, :mod:`.run` (the
search), :mod:`.tradeoff`, :mod:`.report`. The package sits above ``study`` (its
demo data is the study's synthetic world) and below ``api``.
"""

from deepliflow_jax.search.budget import Budget
from deepliflow_jax.search.config import SearchConfig
from deepliflow_jax.search.data import baseline_params, data_beside
from deepliflow_jax.search.plans import HAND_PLANS, LAYER_GROUPS, Choice, parse_plan
from deepliflow_jax.search.report import plot, to_markdown, tradeoff_markdown, tradeoff_plot
from deepliflow_jax.search.run import run_search
from deepliflow_jax.search.solver import InfeasibleBudgetError
from deepliflow_jax.search.tradeoff import TradeoffConfig, run_tradeoff

__all__ = ["HAND_PLANS", "LAYER_GROUPS", "Budget", "Choice", "InfeasibleBudgetError",
           "SearchConfig", "TradeoffConfig", "baseline_params", "data_beside", "parse_plan",
           "plot", "run_search", "run_tradeoff", "to_markdown", "tradeoff_markdown",
           "tradeoff_plot"]
