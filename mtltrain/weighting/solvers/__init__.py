"""The optimisation problems gradient strategies solve on the tasks' Gramian M = G·Gᵀ: the
min-norm point of the gradients' convex hull (MGDA, CAGrad), the projection onto their dual
cone (UPGrad, DualProj), the α-fair bargaining weights (Nash-MTL, FairGrad); and the projection
onto the simplex (SDMGrad, MoDo)."""

from mtltrain.weighting.solvers.bargaining import fair_weights
from mtltrain.weighting.solvers.dual_cone import project_to_dual_cone
from mtltrain.weighting.solvers.min_norm import EPS, min_norm_point
from mtltrain.weighting.solvers.simplex import project_to_simplex

__all__ = ["EPS", "fair_weights", "min_norm_point", "project_to_dual_cone", "project_to_simplex"]
